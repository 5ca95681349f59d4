//! bf16 weights run as bf16 (they were converted to f16, which cannot hold values beyond
//! 65504 or below 2^-24): a projection keeps them packed as bf16, and its products equal a
//! plain sum of the bf16 weights times the bf16-rounded activations, for weights f16 would
//! have turned into infinity or zero.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Module, Tensor};
use ferrollama_kernels::packed_bf16::round_to_bf16;
use ferrollama_model::linear::{Linear, QuantMatrix};

fn bf16_matrix(values: &[f32], n: usize, k: usize) -> QTensor {
    let t = Tensor::from_slice(values, (n, k), &Device::Cpu).unwrap();
    QTensor::quantize(&t, GgmlDType::BF16).unwrap()
}

#[test]
fn bf16_weights_beyond_f16s_range_run_as_bf16() {
    let (n, k, m) = (20, 33, 5);
    let mut w: Vec<f32> = (0..n * k)
        .map(|i| ((i % 37) as f32 - 18.0) * 0.125)
        .collect();
    w[77] = 1.0e5;
    w[301] = 7.0e6;
    // Row 12 holds one weight, far below f16's smallest subnormal: its outputs must be
    // that weight times the input, not zero.
    w[12 * k..13 * k].fill(0.0);
    w[12 * k + 5] = -3.0e-30;
    let linear = Linear::from_qtensor(bf16_matrix(&w, n, k)).unwrap();
    assert!(
        matches!(linear.quant().map(|q| &**q), Some(QuantMatrix::Bf16(_))),
        "bf16 weights were not packed as bf16"
    );
    let wb: Vec<f64> = w
        .iter()
        .map(|&v| f64::from(half::bf16::from_f32(v).to_f32()))
        .collect();
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 23) as f32 - 11.0) / 3.0)
        .collect();
    let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
    let y: Vec<Vec<f32>> = linear.forward(&xt).unwrap().to_vec2().unwrap();
    for t in 0..m {
        for o in 0..n {
            let terms: Vec<f64> = (0..k)
                .map(|i| {
                    let xi = half::bf16::from_bits(round_to_bf16(x[t * k + i])).to_f32();
                    wb[o * k + i] * f64::from(xi)
                })
                .collect();
            let exact: f64 = terms.iter().sum();
            let scale: f64 = terms.iter().map(|v| v.abs()).sum();
            let got = f64::from(y[t][o]);
            assert!(
                got.is_finite() && (got - exact).abs() <= 1e-6 * scale,
                "[{t},{o}] {got} vs {exact}"
            );
        }
        assert!(
            y[t][12] != 0.0 || x[t * k + 5] == 0.0,
            "the tiny weight was lost"
        );
    }
}
