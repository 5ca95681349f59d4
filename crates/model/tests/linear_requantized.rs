//! Our Q5_0, Q5_1 and Q2_K to Q6_K projections (repacked, 8-bit activations as ggml's) against
//! candle's own product on the same quantized tensor, and against a dense f32 product with
//! the dequantized weights: an independent reading of ggml's block layouts (candle's), on
//! real weights of the default model re-quantized by candle.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use ferrollama_gguf::GgufFile;
use ferrollama_model::linear::Linear;
use ferrollama_model::{GgufWeights, WeightSource};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn requantized_projections_match_candle_and_the_dense_product() {
    let file = GgufFile::open(ferrollama_assets::default_model().unwrap()).unwrap();
    let w = GgufWeights::new(&file);
    // down_proj is (576, 1536): rows of whole 256-value blocks.
    let dense = w
        .get("model.layers.2.mlp.down_proj.weight")
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap();
    let (n, k) = dense.dims2().unwrap();
    for dtype in [
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let q = QTensor::quantize(&dense, dtype).unwrap();
        let deq = q.dequantize(&Device::Cpu).unwrap();
        let ours = Linear::from_qtensor(QTensor::quantize(&dense, dtype).unwrap()).unwrap();
        assert!(matches!(ours, Linear::Quant(_)), "{dtype:?} not repacked");
        let theirs = QMatMul::from_qtensor(q).unwrap();
        for m in [1, 5] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 5) as f32))
                .collect();
            let x = Tensor::from_vec(x, (1, m, k), &Device::Cpu).unwrap();
            let got_t = ours.forward(&x).unwrap();
            assert_eq!(got_t.dims(), &[1, m, n]);
            let got = values(&got_t);
            let candle = values(&theirs.forward(&x).unwrap());
            let exact = values(&x.matmul(&deq.t().unwrap().unsqueeze(0).unwrap()).unwrap());
            let scale = exact.iter().map(|v| v.abs()).fold(0f32, f32::max);
            let (vs_candle, vs_exact) = (max_abs_diff(&got, &candle), max_abs_diff(&got, &exact));
            println!("{dtype:?} m={m}: vs candle {vs_candle}, vs dense {vs_exact}, scale {scale}");
            // Same arithmetic as candle up to summation order (and ties in rounding the
            // activations), except that candle rounds Q5_1's activation sums s = d * sum
            // through f16 as f16(sum) * f16(d), where ggml (and we) round d * sum once;
            // the 8-bit activations alone keep us within 2 % of dense.
            let tol = if dtype == GgmlDType::Q5_1 { 5e-4 } else { 1e-4 };
            assert!(
                vs_candle <= tol * scale,
                "{dtype:?} m={m}: {vs_candle} vs {scale}"
            );
            assert!(
                vs_exact <= 0.02 * scale,
                "{dtype:?} m={m}: {vs_exact} vs {scale}"
            );
        }
    }
}
