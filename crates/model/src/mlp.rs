//! The SwiGLU feed-forward layer (Shazeer 2020): down(silu(gate(x)) * up(x)).

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Shape, Tensor};
use rayon::prelude::*;

use crate::adapters::{BlockDeltas, Delta, RowSelection};
use crate::config::Config;
use crate::error::Result;
use crate::layout::{layer_name, Part};
use crate::linear::{Linear, Stacked};
use crate::ops::silu_gate::silu_gate_in_place;
use crate::weights::WeightSource;

/// Feed-forward weights of one block.
pub struct Mlp {
    /// The gate and up projections, stacked.
    pub(crate) gate_up: Stacked,
    pub(crate) down_proj: Linear,
    /// LoRA updates added to the gate, up and down projections (unmerged adapters).
    pub lora: Vec<(Part, Delta)>,
    /// Adapters that sequences select one by one (`SeqBatch::adapter`), by id.
    pub adapters: Vec<BlockDeltas>,
}

impl Mlp {
    /// Loads the feed-forward weights of block `layer`.
    pub fn load(w: &dyn WeightSource, layer: usize, cfg: &Config) -> Result<Self> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let names = [Part::Gate, Part::Up].map(|p| layer_name(layer, p));
        Ok(Self {
            gate_up: Stacked::load(w, &names, &[f, f], h)?,
            down_proj: Linear::load(w, &layer_name(layer, Part::Down), (h, f))?,
            lora: Vec::new(),
            adapters: Vec::new(),
        })
    }
}

impl Mlp {
    /// The layer on rows `x` (1, rows, hidden), with the adapters every row gets and
    /// those `chosen` gives to some rows.
    pub fn forward(&self, x: &Tensor, chosen: &RowSelection) -> candle_core::Result<Tensor> {
        if self.lora.is_empty() && chosen.is_empty() {
            if let Some(both) = self.gate_up.forward_stacked(x)? {
                return self.down_proj.forward(&both.apply_op1_no_bwd(&SwiGlu)?);
            }
        }
        let [mut gate, mut up]: [Tensor; 2] = self
            .gate_up
            .forward(x)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("gate/up projection lost a part".into()))?;
        for (part, d) in &self.lora {
            match part {
                Part::Gate => gate = d.add_to(gate, x, None)?,
                Part::Up => up = d.add_to(up, x, None)?,
                _ => {}
            }
        }
        let gate = chosen.add(gate, x, &self.adapters, Part::Gate)?;
        let up = chosen.add(up, x, &self.adapters, Part::Up)?;
        // Through the stacked path's op, so a row's bits do not depend on whether an adapter
        // sent it here (candle's silu uses libm's expf; ours a polynomial within 2 ulp).
        let h = Tensor::cat(&[&gate, &up], candle_core::D::Minus1)?.apply_op1_no_bwd(&SwiGlu)?;
        let mut y = self.down_proj.forward(&h)?;
        for (_, d) in self.lora.iter().filter(|(p, _)| *p == Part::Down) {
            y = d.add_to(y, &h, None)?;
        }
        chosen.add(y, &h, &self.adapters, Part::Down)
    }
}

/// silu(gate) * up from the stacked gate/up output (.., 2f) -> (.., f), in one pass and
/// without splitting it into two tensors first, by [`silu_gate_in_place`] as the decode path
/// computes it (the unstacked path concatenates its gate and up to come here too).
struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("swiglu expects f32")
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("swiglu expects a contiguous input".into()))?;
        let mut dims = layout.shape().dims().to_vec();
        let Some(last) = dims.last_mut().filter(|w| **w % 2 == 0 && **w > 0) else {
            candle_core::bail!("swiglu expects an even last dimension")
        };
        let f = *last / 2;
        *last = f;
        let y = &all[start..end];
        let mut out = vec![0f32; y.len() / 2];
        let row = |(o, y): (&mut [f32], &[f32])| {
            o.copy_from_slice(&y[..f]);
            silu_gate_in_place(o, &y[f..]);
        };
        if out.len() > f {
            out.par_chunks_mut(f).zip(y.par_chunks(2 * f)).for_each(row);
        } else {
            out.chunks_mut(f).zip(y.chunks(2 * f)).for_each(row);
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::SwiGlu;

    #[test]
    fn stacked_swiglu_is_silu_times_up_by_the_shared_function() {
        // Rows wider than one 8-lane vector, and odd, so both the vector and the scalar
        // tail of `silu_gate_in_place` run.
        let f = 21;
        let y: Vec<f32> = (0..3 * 2 * f)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
            .collect();
        let t = Tensor::from_vec(y.clone(), (1, 3, 2 * f), &Device::Cpu).unwrap();
        let got: Vec<f32> = t
            .apply_op1_no_bwd(&SwiGlu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut want = Vec::new();
        for row in y.chunks_exact(2 * f) {
            let mut g = row[..f].to_vec();
            crate::ops::silu_gate::silu_gate_in_place(&mut g, &row[f..]);
            want.extend(g);
        }
        assert_eq!(got, want);
        // And within a few ulp of candle's silu (libm's expf).
        let (gate, up) = (t.narrow(2, 0, f).unwrap(), t.narrow(2, f, f).unwrap());
        let candle: Vec<f32> = (gate.silu().unwrap() * up)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in got.iter().zip(&candle) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert!(Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu)
            .unwrap()
            .apply_op1_no_bwd(&SwiGlu)
            .is_err());
    }
}
