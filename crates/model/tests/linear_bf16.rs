//! bf16 weights run converted to f16: exact for values in f16's range, and a weight that f16
//! cannot hold (beyond 65504) is refused with the tensor's name, not turned into infinity.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use ferrollama_model::linear::Linear;
use ferrollama_model::Error;

fn bf16_matrix(values: &[f32], n: usize, k: usize) -> QTensor {
    let t = Tensor::from_slice(values, (n, k), &Device::Cpu).unwrap();
    QTensor::quantize(&t, GgmlDType::BF16).unwrap()
}

#[test]
fn bf16_in_range_runs_and_beyond_it_is_refused() {
    let (n, k) = (16, 32);
    let ok: Vec<f32> = (0..n * k)
        .map(|i| ((i % 37) as f32 - 18.0) * 0.125)
        .collect();
    assert!(Linear::from_qtensor(bf16_matrix(&ok, n, k)).is_ok());
    let mut big = ok.clone();
    big[77] = 1.0e5;
    match Linear::from_qtensor(bf16_matrix(&big, n, k)) {
        Err(Error::TensorData { msg, .. }) => assert!(msg.contains("65504"), "{msg}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a bf16 weight of 1e5 was accepted"),
    }
}
