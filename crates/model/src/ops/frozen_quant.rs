//! A frozen projection kept in its quantized form (QLoRA, Dettmers et al. 2023): the base
//! weights stay as the GGUF file stores them (Q4_0, Q4_1, Q8_0, K-quants, ...), or in NF4
//! when given in f32/f16 ([`crate::nf4`]), and are
//! dequantized for each product, forward and backward, one projection at a time, so the
//! model's resident weights are the file's size rather than four bytes a parameter. Being
//! frozen, the weight gets no gradient; the input's is dy · W with the same dequantized W,
//! so the backward pass is exactly the gradient of the forward function.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::linear::QuantMatrix;
use crate::nf4::Nf4Matrix;
use crate::ops::matmul::{f32_operand, matmul_strided};

/// A frozen weight's storage: the kernels' packing of a GGUF type, or NF4.
#[derive(Clone)]
pub enum FrozenMatrix {
    Packed(Arc<QuantMatrix>),
    Nf4(Arc<Nf4Matrix>),
}

impl FrozenMatrix {
    fn shape(&self) -> (usize, usize) {
        match self {
            Self::Packed(m) => m.shape(),
            Self::Nf4(m) => m.shape(),
        }
    }

    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match self {
            Self::Packed(m) => m.dequantize_row(r, out),
            Self::Nf4(m) => m.dequantize_row(r, out),
        }
    }
}

/// The op: y = x Wᵀ for a quantized W (n, k).
#[derive(Clone)]
pub struct FrozenQuant {
    pub matrix: FrozenMatrix,
    /// The stored row of each output row, when they differ (Q and K: GGUF keeps RoPE
    /// pairs adjacent, training rotates halves); `None`: the same order.
    pub rows: Option<Arc<Vec<u32>>>,
}

impl std::fmt::Debug for FrozenQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrozenQuant{:?}", self.matrix.shape())
    }
}

impl FrozenQuant {
    /// (output rows, input width).
    pub fn shape(&self) -> (usize, usize) {
        self.matrix.shape()
    }

    /// The weights as f32 (n, k), rows in output order.
    pub fn dequantize(&self) -> Vec<f32> {
        let (n, k) = self.shape();
        let mut out = vec![0.0f32; n * k];
        if k == 0 {
            return out;
        }
        out.par_chunks_mut(k).enumerate().for_each(|(r, row)| {
            let stored = self.rows.as_ref().map_or(r, |m| m[r] as usize);
            self.matrix.dequantize_row(stored, row);
        });
        out
    }

    /// x (m, k) · Wᵀ.
    pub fn linear(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op1(self.clone())
    }
}

impl CustomOp1 for FrozenQuant {
    fn name(&self) -> &'static str {
        "frozen-quantized-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, m, k, rs, cs) = f32_operand(s, l, "inputs")?;
        let (n, k2) = self.shape();
        if k != k2 {
            candle_core::bail!("frozen linear: inputs (m, {k}) against weights ({n}, {k2})");
        }
        let w = self.dequantize();
        // Wᵀ is W with its strides swapped.
        let y = matmul_strided(x, (rs, cs), &w, (1, k), m, k, n, 1.0)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let (m, k) = x.dims2()?;
        let n = self.shape().0;
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let w = self.dequantize();
        let dx = matmul_strided(&g, (n, 1), &w, (k, 1), m, n, k, 1.0)?;
        Ok(Some(Tensor::from_vec(dx, (m, k), x.device())?))
    }
}

/// For a projection whose rows hold `heads` rotary heads: the GGUF (pairs adjacent) row of
/// each rotate-half row, the map `permute_rope_rows` applies to bytes.
pub fn rope_row_map(rows: usize, heads: usize) -> Vec<u32> {
    let head_dim = rows / heads.max(1);
    let half = head_dim / 2;
    let mut map = vec![0u32; rows];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                map[h * head_dim + j * half + i] = (h * head_dim + 2 * i + j) as u32;
            }
        }
    }
    map
}
