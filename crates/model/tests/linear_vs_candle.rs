//! Our Q4_1 projection against candle's QMatMul on a real weight of the default model.

use candle_core::quantized::QMatMul;
use candle_core::{Device, Module, Tensor};
use ferrollama_gguf::GgufFile;
use ferrollama_model::linear::Linear;
use ferrollama_model::{GgufWeights, WeightSource};

#[test]
fn q4_1_projection_matches_candle() {
    let file = GgufFile::open(ferrollama_assets::default_model().unwrap()).unwrap();
    let w = GgufWeights::new(&file);
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight"] {
        let q = w.get(name).unwrap();
        let k = q.shape().dims2().unwrap().1;
        let x = Tensor::randn(0f32, 1.0, (1, 3, k), &Device::Cpu).unwrap();
        let ours: Vec<f32> = Linear::from_qtensor(w.get(name).unwrap()).unwrap().forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let theirs: Vec<f32> = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let max = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = theirs.iter().map(|v| v.abs()).fold(0f32, f32::max);
        println!("{name}: max |diff| {max} (largest output {scale})");
        assert!(max <= 1e-3 * scale.max(1.0), "{name}: {max}");
    }
}
