//! The default model against llama.cpp's reference outputs (tests/data/smollm2, made by
//! llama.cpp from the llama-cpp-python 0.3.36 sdist; see its README): first-step logits and
//! greedy continuations, on the Q4_1 file and on an f16 file converted from it (the
//! reference f16 file was made with `llama-quantize --allow-requantize Q4_1 F16`).

use std::path::PathBuf;
use std::sync::Mutex;

use ferrollama_gguf::{GgmlType, GgufFile};
use ferrollama_model::{Config, GgufWeights, Llama};

const PROMPT0: [u32; 5] = [504, 3575, 282, 4649, 314];

fn data(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "{}/../../tests/data/smollm2/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn q4_1_path() -> PathBuf {
    ferrollama_assets::default_model().unwrap()
}

/// The Q4_1 file converted to `ty` once into the cache, as the references' f16 and q8_0
/// files were made from it with llama-quantize.
fn converted(ty: GgmlType) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    let out =
        ferrollama_assets::models_dir().join(format!("SmolLM2-135M-Instruct.{ty}-from-q4_1.gguf"));
    ferrollama_model::convert::requantize_once(&q4_1_path(), &out, ty).unwrap();
    out
}

fn f16_path() -> PathBuf {
    converted(GgmlType::F16)
}

fn load(path: &PathBuf) -> Llama {
    let file = GgufFile::open(path).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    Llama::load(&GgufWeights::new(&file), cfg, 512).unwrap()
}

fn step0_logits(model: &Llama) -> Vec<f32> {
    let mut cache = model.new_cache(512);
    model.forward(&PROMPT0, &mut cache, 1).unwrap().into_vec()
}

/// (max, mean) absolute difference against a raw f32 dump.
fn compare_logits(got: &[f32], reference: &str) -> (f32, f32) {
    let bytes = std::fs::read(data(reference)).unwrap();
    let want: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(got.len(), want.len());
    let diffs: Vec<f32> = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
    let max = diffs.iter().cloned().fold(0.0, f32::max);
    (max, diffs.iter().sum::<f32>() / diffs.len() as f32)
}

/// Greedy-decodes 16 tokens after each reference prompt and compares with llama.cpp's ids.
/// A difference is accepted only where llama.cpp's own top two logits were within `tie` (a
/// near tie that another implementation may break the other way); after it the texts
/// legitimately diverge, so comparison stops there.
fn check_greedy(model: &Llama, reference: &str, tie: f64) {
    let lines = std::fs::read_to_string(data(reference)).unwrap();
    for line in lines.lines() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["gen_ids"].clone()).unwrap();
        let topk = case["topk_logits_per_step"].as_array().unwrap();
        let mut cache = model.new_cache(512);
        let mut input = prompt.clone();
        let mut got = Vec::new();
        for step in 0..16 {
            let logits: Vec<f32> = model.forward(&input, &mut cache, 1).unwrap().into_vec();
            let next = argmax(&logits);
            got.push(next);
            if next != want[step] {
                let top = &topk[step];
                let gap = top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap();
                println!("{reference} {:?}: first differs at step {step} (ours {next}, llama.cpp {}; its top-2 gap {gap:.3})", case["prompt"], want[step]);
                assert!(gap < tie, "{reference} {:?}: ids part at step {step} where llama.cpp's top two logits differ by {gap:.3}\nours   {got:?}\ntheirs {:?}", case["prompt"], &want[..16]);
                break;
            }
            input = vec![next];
        }
        if got[..] == want[..got.len()] {
            println!(
                "{reference} {:?}: all {} greedy ids equal llama.cpp's",
                case["prompt"],
                got.len()
            );
        }
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn q4_1_first_step_logits_match_llama_cpp() {
    let (max, mean) = compare_logits(
        &step0_logits(&load(&q4_1_path())),
        "logits_q4_1_prompt0_step0.f32",
    );
    println!("q4_1 step-0 logits vs llama.cpp: max |diff| {max:.4}, mean |diff| {mean:.4}");
    // Both engines quantize activations to 8 bits before every Q4_1 product, so a rounding
    // difference anywhere upstream flips some 8-bit values and the error compounds over 30
    // layers: arithmetically equivalent variants of our pipeline (f16 or f32 K/V, q8 ties
    // to even or away, ggml's or candle's f16 rounding of the Q8_1 sum) measured means from
    // 0.10 to 0.39 against llama.cpp, and candle 0.11.1 gets 0.10. A real bug (a wrong
    // scale, a swapped nibble) gives differences of whole units.
    assert!(mean < 0.5 && max < 2.0, "max {max} mean {mean}");
}

#[test]
fn f16_first_step_logits_match_llama_cpp() {
    let (max, mean) = compare_logits(
        &step0_logits(&load(&f16_path())),
        "logits_f16_prompt0_step0.f32",
    );
    println!("f16 step-0 logits vs llama.cpp: max |diff| {max:.4}, mean |diff| {mean:.4}");
    assert!(max < 0.05, "max {max} mean {mean}");
}

#[test]
fn q4_1_greedy_matches_llama_cpp() {
    // Q4_1 logits of arithmetically equivalent pipelines differ from llama.cpp's by 0.10 to
    // 0.39 on average (see the step-0 test above: 8-bit activations amplify any rounding
    // difference), so a near tie here is anything within twice the largest of those means.
    // Measured: the vectorised attention (exp within 2 ulp, fused multiply-adds) turned
    // "The capital of France is" at step 5, where llama.cpp's top two were 0.260 apart.
    // llama.cpp itself differs this much between machines: the same version built on an
    // AVX2 EPYC (2026-12-02) gave step-0 Q4_1 logits 0.19 from these references on average
    // (max 0.77; f16: 0.004) and parted from the second prompt's ids at step 12 (a gap
    // of 0.047); ours were 0.20 (max 0.89) from that build's.
    check_greedy(&load(&q4_1_path()), "greedy_q4_1.jsonl", 0.8);
}

#[test]
fn f16_greedy_matches_llama_cpp() {
    check_greedy(&load(&f16_path()), "greedy_f16.jsonl", 0.25);
}

#[test]
fn q8_0_greedy_matches_llama_cpp() {
    check_greedy(&load(&converted(GgmlType::Q8_0)), "greedy_q8_0.jsonl", 0.25);
}
