//! First-step logits of the default model against llama.cpp's dump
//! (tests/data/smollm2/logits_q4_1_prompt0_step0.f32, prompt "The capital of France is").

use ferrollama_gguf::GgufFile;
use ferrollama_model::{Config, GgufWeights, Llama};

fn reference_logits(name: &str) -> Vec<f32> {
    let path = format!("{}/../../tests/data/smollm2/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap();
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn q4_1_first_step_logits_match_llama_cpp() {
    let path = ferrollama_assets::default_model().unwrap();
    let file = GgufFile::open(&path).unwrap();
    let cfg = Config::from_gguf(&file.header).unwrap();
    let model = Llama::load(&GgufWeights::new(&file), cfg, 512).unwrap();
    let mut cache = model.new_cache(512);
    let logits: Vec<f32> = model.forward(&[504, 3575, 282, 4649, 314], &mut cache, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let reference = reference_logits("logits_q4_1_prompt0_step0.f32");
    assert_eq!(logits.len(), reference.len());
    let diffs: Vec<f32> = logits.iter().zip(&reference).map(|(a, b)| (a - b).abs()).collect();
    let max = diffs.iter().cloned().fold(0.0, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    println!("q4_1 step-0 logits vs llama.cpp: max |diff| {max:.4}, mean |diff| {mean:.4}");
    assert!(mean < 0.2 && max < 1.0, "max {max} mean {mean}");
}
