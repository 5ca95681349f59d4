//! The output projection and the mean softmax cross-entropy as one op.
//!
//! With Llama 2's 32000-token vocabulary the logits of a micro-batch are large (2048 tokens
//! x 32000 = 262 MB in the 15m benchmark), and composing the projection with a separate
//! cross-entropy op passed over them five times: written by the product, read for the
//! loss, copied out and rewritten as a gradient in the backward pass, read by the two
//! gradient products. Measured on that shape, 2 threads: forward 585 ms and backward
//! 1220 ms, of which the three products were about 1070 ms. Here the forward pass turns
//! each row of logits into `softmax - onehot(target)` in place while it computes the loss,
//! and the backward pass only multiplies that matrix, scaled by the incoming gradient,
//! with the weights and with the inputs.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::fused::softmax_in_place;
use crate::ops::matmul::{f32_operand, matmul_strided, with_f32};

/// Mean over rows of `-log softmax(x wᵀ)[target]` for x (n, hidden), w (vocab, hidden).
pub fn head_loss(x: &Tensor, w: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    x.apply_op2(w, HeadLoss::new(targets.to_vec()))
}

/// The op; it keeps `softmax - onehot` from its forward pass until its backward pass.
#[derive(Debug)]
pub struct HeadLoss {
    targets: Vec<u32>,
    residual: Mutex<Option<Vec<f32>>>,
}

impl HeadLoss {
    pub fn new(targets: Vec<u32>) -> Self {
        Self {
            targets,
            residual: Mutex::new(None),
        }
    }
}

impl CustomOp2 for HeadLoss {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, n, h, x_rs, x_cs) = f32_operand(s1, l1, "inputs")?;
        let (w, vocab, h2, w_rs, w_cs) = f32_operand(s2, l2, "weights")?;
        if h != h2 {
            candle_core::bail!("head loss: inputs (n, {h}) against weights (vocab, {h2})");
        }
        let y = &self.targets;
        if y.len() != n || y.iter().any(|&t| t as usize >= vocab) {
            candle_core::bail!(
                "head loss: {} targets for {n} rows, or one >= {vocab}",
                y.len()
            );
        }
        // wᵀ is w with its strides swapped.
        let mut d = matmul_strided(x, (x_rs, x_cs), w, (w_cs, w_rs), n, h, vocab, 1.0)?;
        let losses: Vec<f32> = if vocab == 0 {
            vec![0.0; n]
        } else {
            d.par_chunks_mut(vocab)
                .zip(y.par_iter())
                .map(|(row, &t)| {
                    let target_logit = row[t as usize];
                    let lse = softmax_in_place(row);
                    row[t as usize] -= 1.0;
                    lse - target_logit
                })
                .collect()
        };
        // Summed in row order, in f64, so the loss does not depend on the thread count.
        let total: f64 = losses.iter().map(|&l| l as f64).sum();
        let mean = total / n.max(1) as f64;
        *self.residual.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, h) = x.dims2()?;
        let vocab = w.dims2()?.0;
        let scale = grad.to_scalar::<f32>()? / n.max(1) as f32;
        let d = self
            .residual
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                candle_core::Error::Msg(
                    "head loss: backward without its forward pass, or twice".into(),
                )
            })?;
        // dx = scale · d w, dw = scale · dᵀ x.
        let dx = with_f32(w, "weights", |w, _, _, rs, cs| {
            matmul_strided(&d, (vocab, 1), w, (rs, cs), n, vocab, h, scale)
        })?;
        // A frozen head (LoRA) needs no gradient: skip the largest product of the step.
        let dw = w
            .track_op()
            .then(|| {
                let dw = with_f32(x, "inputs", |x, _, _, rs, cs| {
                    matmul_strided(&d, (1, vocab), x, (rs, cs), vocab, n, h, scale)
                })?;
                Tensor::from_vec(dw, (vocab, h), w.device())
            })
            .transpose()?;
        Ok((Some(Tensor::from_vec(dx, (n, h), x.device())?), dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Device, Var};

    /// Loss and both gradients against the projection and cross-entropy as separate ops
    /// (each checked on its own against candle's composed expressions), with an upstream
    /// gradient other than 1.
    #[test]
    fn matches_projection_then_cross_entropy() {
        for &(n, h, vocab) in &[(5, 8, 11), (64, 32, 1000), (130, 48, 517)] {
            let x = Var::from_tensor(&(random(&[n, h], 1) * 2.0).unwrap()).unwrap();
            let w = Var::from_tensor(&(random(&[vocab, h], 2) * 0.5).unwrap()).unwrap();
            let y: Vec<u32> = (0..n as u32)
                .map(|i| (i * 7919 + 3) % vocab as u32)
                .collect();
            let yt = Tensor::from_slice(&y, n, &Device::Cpu).unwrap();
            let ours = head_loss(&x, &w, &y).unwrap();
            let logits = crate::ops::matmul::linear(&x, &w).unwrap();
            let theirs = crate::trainable::cross_entropy(&logits, &yt).unwrap();
            let (a, b) = (
                ours.to_scalar::<f32>().unwrap(),
                theirs.to_scalar::<f32>().unwrap(),
            );
            assert!(
                (a - b).abs() <= 1e-6 * b.abs(),
                "{n}x{h}x{vocab}: {a} vs {b}"
            );
            let g1 = (ours * 3.0).unwrap().backward().unwrap();
            let g2 = (theirs * 3.0).unwrap().backward().unwrap();
            for v in [&x, &w] {
                let (p, q) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(max_rel(p, q) < 1e-5, "{n}x{h}x{vocab}: {}", max_rel(p, q));
            }
        }
    }

    #[test]
    fn bad_targets_and_shapes_are_errors() {
        let x = (random(&[4, 8], 1) * 1.0).unwrap();
        let w = (random(&[10, 8], 2) * 1.0).unwrap();
        assert!(head_loss(&x, &w, &[0, 1, 2]).is_err());
        assert!(head_loss(&x, &w, &[0, 1, 2, 10]).is_err());
        assert!(head_loss(&x, &(random(&[10, 7], 3) * 1.0).unwrap(), &[0, 1, 2, 3]).is_err());
        assert!(head_loss(&x, &w, &[0, 1, 2, 9]).is_ok());
    }
}
