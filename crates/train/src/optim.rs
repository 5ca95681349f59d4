//! AdamW (Loshchilov & Hutter 2019) as PyTorch's `torch.optim.AdamW` computes it, and
//! gradient clipping by global norm as `torch.nn.utils.clip_grad_norm_` does. State and
//! gradients are plain f32 buffers in the model's fixed parameter order, so a step is the
//! same on every run and the state saves and restores exactly.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use ferrollama_model::TrainableLlama;

/// AdamW's hyper-parameters; the defaults are Llama 2's (Touvron et al. 2023, 2.2).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices (projections and the embedding) but
    /// not to the RMSNorm gains: shrinking a gain toward 0 only rescales a layer's input,
    /// which the next matrix undoes, so decaying it regularises nothing (the rule of
    /// nanoGPT and llama2.c; the Llama 2 paper does not say).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-5,
            weight_decay: 0.1,
        }
    }
}

/// The optimizer's moments and step count.
pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimizer steps taken so far.
    pub steps: u64,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    decay: Vec<bool>,
}

impl AdamW {
    /// Zero moments for every parameter of `model`.
    pub fn new(config: AdamWConfig, model: &TrainableLlama) -> Self {
        let sizes: Vec<usize> = model.params().map(|(_, v)| v.elem_count()).collect();
        Self {
            config,
            steps: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            decay: model.params().map(|(_, v)| v.rank() >= 2).collect(),
        }
    }

    /// One update of every parameter of `model` with gradients `grads` (in parameter
    /// order) at learning rate `lr`.
    pub fn step(&mut self, model: &TrainableLlama, grads: &[Vec<f32>], lr: f64) -> Result<()> {
        self.steps += 1;
        let c = &self.config;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = (lr / bc1) as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let shrink = (1.0 - lr * c.weight_decay) as f32;
        let bc2_sqrt = bc2_sqrt as f32;
        for (i, (_, var)) in model.params().enumerate() {
            let shape = var.shape().clone();
            let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let g = &grads[i];
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            let decay = self.decay[i];
            // Element by element, so the split between threads changes nothing.
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .for_each(|((p, g), (m, v))| {
                    for j in 0..p.len() {
                        if decay {
                            p[j] *= shrink;
                        }
                        m[j] += (g[j] - m[j]) * (1.0 - b1);
                        v[j] = v[j] * b2 + (1.0 - b2) * g[j] * g[j];
                        let denom = v[j].sqrt() / bc2_sqrt + eps;
                        p[j] -= step_size * m[j] / denom;
                    }
                });
            var.set(&Tensor::from_vec(p, shape, &Device::Cpu)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`) for a checkpoint.
    pub fn state_tensors(&self, model: &TrainableLlama) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (i, (name, var)) in model.params().enumerate() {
            let shape = var.shape().clone();
            out.insert(
                format!("m.{name}"),
                Tensor::from_slice(&self.m[i], shape.clone(), &Device::Cpu)?,
            );
            out.insert(
                format!("v.{name}"),
                Tensor::from_slice(&self.v[i], shape, &Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// Restores the moments saved by [`AdamW::state_tensors`] after `steps` steps.
    pub fn load_state(
        &mut self,
        model: &TrainableLlama,
        state: &BTreeMap<String, Tensor>,
        steps: u64,
    ) -> Result<()> {
        for (i, (name, var)) in model.params().enumerate() {
            for (prefix, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let t = state
                    .get(&key)
                    .ok_or_else(|| Error::Resume(format!("optimizer state lacks `{key}`")))?;
                if t.shape() != var.shape() {
                    return Err(Error::Resume(format!(
                        "optimizer state `{key}` has shape {:?}, the parameter {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                *dst = t.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: coefficient max_norm / (norm + 1e-6), capped at 1) and returns the
/// norm before clipping. Summed in f64 in parameter order, so it is reproducible.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    // Sums of fixed chunks, added in order: the same bits whatever the thread count.
    let norm = grads
        .iter()
        .map(|g| {
            let parts: Vec<f64> = g
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .collect();
            parts.iter().sum::<f64>()
        })
        .sum::<f64>()
        .sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let c = coef as f32;
        for g in grads.iter_mut() {
            g.par_iter_mut().for_each(|x| *x *= c);
        }
    }
    norm
}

/// Elements per parallel task in the optimizer and clipping loops.
const CHUNK: usize = 1 << 14;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_scales_to_the_max_norm_and_leaves_small_gradients_alone() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        let n = clip_grad_norm(&mut g, 1.0);
        assert_eq!(n, 5.0);
        assert!((g[0][0] - 0.6).abs() < 1e-6 && (g[1][0] - 0.8).abs() < 1e-6);
        let mut small = vec![vec![0.3f32, 0.4]];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![vec![0.3f32, 0.4]]);
    }
}
