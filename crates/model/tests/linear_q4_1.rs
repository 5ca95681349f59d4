//! Our Q4_1 projection (8-bit activations, as ggml) against a dense f32 product with the
//! dequantized weights, on real weights of the default model: catches plumbing mistakes
//! (shapes, batch rows, transposition) that the kernel's own tests cannot see.

use candle_core::{Device, Module, Tensor};
use ferrollama_gguf::GgufFile;
use ferrollama_model::linear::Linear;
use ferrollama_model::{GgufWeights, WeightSource};

#[test]
fn q4_1_projection_matches_dense_product() {
    let file = GgufFile::open(ferrollama_assets::default_model().unwrap()).unwrap();
    let w = GgufWeights::new(&file);
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.3.mlp.down_proj.weight",
    ] {
        let q = w.get(name).unwrap();
        let (n, k) = q.shape().dims2().unwrap();
        // A fixed, varied input of 3 rows: (1, 3, k).
        let x: Vec<f32> = (0..3 * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 5) as f32))
            .collect();
        let x = Tensor::from_vec(x, (1, 3, k), &Device::Cpu).unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        let want: Vec<f32> = x
            .matmul(&dense.t().unwrap().unsqueeze(0).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got_t = Linear::from_qtensor(q).unwrap().forward(&x).unwrap();
        assert_eq!(got_t.dims(), &[1, 3, n]);
        let got: Vec<f32> = got_t.flatten_all().unwrap().to_vec1().unwrap();
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
        println!("{name}: max |diff| {max} against a largest output of {scale}");
        assert!(max <= 0.02 * scale, "{name}: {max} vs scale {scale}");
    }
}
