//! RMSNorm as one op with its backward pass written out.
//!
//! Composed from candle ops, each norm was seven tensors forward and about a dozen backward
//! (candle's unary ops run on one thread), and a model has 2 per layer plus the last one.
//! For y = x · r · w with r = 1 / sqrt(mean(x²) + eps) per row:
//!   dx = r · (w ⊙ dy) − x · r³ / h · Σ (w ⊙ dy ⊙ x),   dw = Σ_rows dy ⊙ x · r.
//! The weight gradient is summed per block of `ROWS_PER_BLOCK` rows, then over the blocks
//! in order, so it does not depend on the thread count.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::contiguous_f32;

/// Rows per partial weight-gradient sum.
const ROWS_PER_BLOCK: usize = 64;

/// RMSNorm over the last dimension of x (n, h) with gains w (h).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

#[derive(Debug, Clone, Copy)]
pub struct RmsNorm {
    pub eps: f64,
}

/// 1 / sqrt(mean(row²) + eps), the mean taken in f64.
fn inv_rms(row: &[f32], eps: f64) -> f32 {
    let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
    (1.0 / (ss / row.len().max(1) as f64 + eps).sqrt()) as f32
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "rms norm", "input")?;
        let w = contiguous_f32(s2, l2, "rms norm", "gains")?;
        let h = w.len();
        if h == 0 || l1.dims().last() != Some(&h) {
            candle_core::bail!("rms norm: input {:?} against {h} gains", l1.dims());
        }
        let mut y = vec![0.0f32; x.len()];
        y.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .for_each(|(yr, xr)| {
                let r = inv_rms(xr, self.eps);
                for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                    *o = v * r * g;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let ws = w.flatten_all()?.to_vec1::<f32>()?;
        let dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut dx = vec![0.0f32; xs.len()];
        let block = ROWS_PER_BLOCK * h;
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(block)
            .zip(xs.par_chunks(block).zip(dy.par_chunks(block)))
            .map(|(dxb, (xb, dyb))| {
                let mut dw = vec![0.0f32; h];
                for ((dxr, xr), dyr) in dxb.chunks_mut(h).zip(xb.chunks(h)).zip(dyb.chunks(h)) {
                    let r = inv_rms(xr, self.eps);
                    let dot: f32 = xr
                        .iter()
                        .zip(dyr)
                        .zip(&ws)
                        .map(|((&a, &d), &g)| a * d * g)
                        .sum();
                    let c = r * r * r * dot / h as f32;
                    for j in 0..h {
                        dxr[j] = r * ws[j] * dyr[j] - xr[j] * c;
                        dw[j] += dyr[j] * xr[j] * r;
                    }
                }
                dw
            })
            .collect();
        let mut dw = vec![0.0f32; h];
        for p in &partial {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Var, D};

    fn composed(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
        let inv = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps)
            .unwrap()
            .sqrt()
            .unwrap()
            .recip()
            .unwrap();
        x.broadcast_mul(&inv).unwrap().broadcast_mul(w).unwrap()
    }

    #[test]
    fn matches_the_composed_norm_forward_and_backward() {
        for &(n, h) in &[(1, 4), (7, 33), (200, 288)] {
            let x = Var::from_tensor(&random(&[n, h], 1)).unwrap();
            let w = Var::from_tensor(&(random(&[h], 2) + 1.0).unwrap()).unwrap();
            let up = random(&[n, h], 3);
            let ours = rms_norm(&x, &w, 1e-5).unwrap();
            let theirs = composed(&x, &w, 1e-5);
            assert!(max_rel(&ours, &theirs) < 1e-6, "forward {n}x{h}");
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &w] {
                let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(max_rel(a, b) < 1e-5, "gradient {n}x{h}: {}", max_rel(a, b));
            }
        }
    }

    #[test]
    fn gains_of_the_wrong_length_are_an_error() {
        let x = random(&[3, 8], 1);
        assert!(rms_norm(&x, &random(&[7], 2), 1e-5).is_err());
    }
}
