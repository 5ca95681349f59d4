//! The SwiGLU feed-forward layer (Shazeer 2020): down(silu(gate(x)) * up(x)).

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

use crate::error::Result;
use crate::weights::WeightSource;

/// Feed-forward weights of one block.
pub struct Mlp {
    gate_proj: QMatMul,
    up_proj: QMatMul,
    down_proj: QMatMul,
}

impl Mlp {
    /// Loads `{prefix}.gate_proj` and friends.
    pub fn load(w: &dyn WeightSource, prefix: &str) -> Result<Self> {
        Ok(Self {
            gate_proj: linear(w, &format!("{prefix}.gate_proj.weight"))?,
            up_proj: linear(w, &format!("{prefix}.up_proj.weight"))?,
            down_proj: linear(w, &format!("{prefix}.down_proj.weight"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = self.gate_proj.forward(x)?.silu()?;
        let up = self.up_proj.forward(x)?;
        self.down_proj.forward(&(gate * up)?)
    }
}

/// A projection, quantized weights kept quantized; f16/bf16 weights are kept in f16 and
/// multiplied with f16 activations, as llama.cpp does.
pub fn linear(w: &dyn WeightSource, name: &str) -> Result<QMatMul> {
    use candle_core::quantized::GgmlDType;
    let q = w.get(name)?;
    Ok(match q.dtype() {
        GgmlDType::F16 | GgmlDType::BF16 => QMatMul::TensorF16(q.dequantize_f16(&q.device())?),
        _ => QMatMul::from_qtensor(q)?,
    })
}
