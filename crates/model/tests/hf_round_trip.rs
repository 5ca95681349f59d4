//! GGUF -> Hugging Face directory -> GGUF with the default model: the HF checkpoint (its
//! q_proj/k_proj rows permuted back to the HF layout) must compute what the GGUF computes,
//! and converting it back to Q4_1 must give back nearly the same file.

use std::path::PathBuf;

use ferrollama_gguf::safetensors::StDtype;
use ferrollama_gguf::{GgmlType, GgufFile};
use ferrollama_model::hf::{config_from_hf, HfWeights};
use ferrollama_model::{Config, GgufWeights, Llama, WeightSource};

const PROMPT: [u32; 9] = [9843, 2056, 253, 655, 28, 665, 436, 253, 1165];

fn logits(w: &dyn WeightSource, cfg: Config) -> Vec<f32> {
    let model = Llama::load(w, cfg, 64).unwrap();
    let mut cache = model.new_cache(64);
    model.forward(&PROMPT, &mut cache, 1).unwrap().into_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrollama-hf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn gguf_to_hf_to_gguf_keeps_the_model() {
    let q4 = GgufFile::open(ferrollama_assets::default_model().unwrap()).unwrap();
    let dir = tmp("f32");
    ferrollama_model::export::gguf_to_hf(
        &q4,
        &dir.join("hf"),
        StDtype::F32,
        Some(1),
        Some(2),
        |_, _| {},
    )
    .unwrap();

    // The same weights in f32, through GGUF and through the HF directory.
    let f32_gguf = dir.join("f32.gguf");
    ferrollama_model::convert::requantize(&q4, &f32_gguf, GgmlType::F32, |_, _| {}).unwrap();
    let f32_file = GgufFile::open(&f32_gguf).unwrap();
    let via_gguf = logits(
        &GgufWeights::new(&f32_file),
        Config::from_gguf(&f32_file).unwrap(),
    );
    let cfg = config_from_hf(&dir.join("hf")).unwrap();
    assert_eq!(cfg, Config::from_gguf(&q4).unwrap());
    let via_hf = logits(
        &HfWeights::open(&dir.join("hf"), cfg).unwrap(),
        Config::from_gguf(&q4).unwrap(),
    );
    let d = max_diff(&via_gguf, &via_hf);
    println!("f32 GGUF vs HF directory: max |logit diff| {d:.2e}");
    assert!(d < 1e-3, "{d}");

    // Back to Q4_1: every tensor gets its original type back, and the logits barely move.
    let back = dir.join("back.gguf");
    ferrollama_model::export::hf_to_gguf(
        &dir.join("hf"),
        &back,
        GgmlType::Q4_1,
        Vec::new(),
        |_, _| {},
    )
    .unwrap();
    let back_file = GgufFile::open(&back).unwrap();
    let (mut same_bytes, mut total) = (0, 0);
    for t in &q4.header.tensors {
        let (bt, bytes) = back_file.tensor(&t.name).unwrap();
        assert_eq!(
            (bt.ggml_type, &bt.dims),
            (t.ggml_type, &t.dims),
            "{}",
            t.name
        );
        total += 1;
        same_bytes += usize::from(bytes == q4.tensor_data(t));
    }
    let orig = logits(&GgufWeights::new(&q4), Config::from_gguf(&q4).unwrap());
    let again = logits(
        &GgufWeights::new(&back_file),
        Config::from_gguf(&back_file).unwrap(),
    );
    let d = max_diff(&orig, &again);
    println!("Q4_1 -> HF f32 -> Q4_1: {same_bytes}/{total} tensors byte-identical, max |logit diff| {d:.3}");
    // Q4_1 and Q8_0 blocks dequantized to f32 re-quantize to the same bytes.
    assert_eq!(same_bytes, total);
    assert_eq!(d, 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
