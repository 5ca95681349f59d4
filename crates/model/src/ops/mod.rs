//! Fused operations of the training path, each with its backward pass written out and
//! tested against the composed candle expressions: causal GQA attention that never keeps
//! the score matrices, the output projection fused with the cross-entropy, RMSNorm,
//! SwiGLU's gating, RoPE over split heads, and matrix products split between threads.

pub mod attention_gemm;
pub mod frozen_quant;
pub mod fused;
pub mod head_loss;
pub mod lora_linear;
pub mod matmul;
pub mod norm;
pub mod rope_heads;
pub mod silu_gate;
pub mod swiglu;

use candle_core::{CpuStorage, Layout};

/// The contiguous f32 data of argument `what` of the custom op `op`, or an error saying
/// which op wanted what.
pub(crate) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: {what} must be f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

/// What the ops' tests share: deterministic inputs and a relative difference.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor};

    /// Values in [-1, 1] from a fixed hash of their index and `seed`.
    pub fn random(shape: &[usize], seed: u32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n as u32)
            .map(|i| {
                let x = i
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                ((x >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// max |a - b| / max |b|.
    pub fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let s = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-30)
    }
}
