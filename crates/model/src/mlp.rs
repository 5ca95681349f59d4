//! The SwiGLU feed-forward layer (Shazeer 2020): down(silu(gate(x)) * up(x)).

use candle_core::{Module, Tensor};

use crate::config::Config;
use crate::error::Result;
use crate::linear::Linear;
use crate::weights::WeightSource;

/// Feed-forward weights of one block.
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// Loads `{prefix}.gate_proj` and friends.
    pub fn load(w: &dyn WeightSource, prefix: &str, cfg: &Config) -> Result<Self> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load(w, &format!("{prefix}.gate_proj.weight"), (f, h))?,
            up_proj: Linear::load(w, &format!("{prefix}.up_proj.weight"), (f, h))?,
            down_proj: Linear::load(w, &format!("{prefix}.down_proj.weight"), (h, f))?,
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
