//! Splitting projected rows into heads and rotating them (RoPE, rotate-half as Hugging
//! Face checkpoints store Q and K) in one op: (b * t, heads * d) → (b, heads, t, d).
//! Composed, this was a transpose copy and seven element-wise ops forward (narrow, negate,
//! concatenate, two products, a sum) with their backward passes, for q and k of every
//! layer. With half = d / 2 and r the rotated row (r_c = −x_{c+half} below half,
//! x_{c−half} above):  out_c = x_c cos_c + r_c sin_c, so
//!   dx_j = dout_j cos_j + dout_{j+half} sin_{j+half}  (j < half),
//!   dx_j = dout_j cos_j − dout_{j−half} sin_{j−half}  (j ≥ half).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::contiguous_f32;

/// The op; `cos` and `sin` are (positions, d) tables, position-major.
#[derive(Debug, Clone)]
pub struct RopeHeads {
    pub batch: usize,
    pub heads: usize,
    pub d: usize,
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
    /// The position of each of the b * t rows; `None`: row i of a sequence is at
    /// position i. Packed batches restart positions at each sample.
    pub positions: Option<Arc<Vec<u32>>>,
}

impl RopeHeads {
    /// (b * t, heads * d) rows → (b, heads, t, d), rotated.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }

    fn check(&self, dims: &[usize]) -> candle_core::Result<usize> {
        let &[rows, width] = dims else {
            candle_core::bail!("rope: expected (b * t, heads * d), got {dims:?}");
        };
        let (b, d) = (self.batch, self.d);
        if b == 0 || rows % b != 0 || width != self.heads * d || d % 2 != 0 {
            candle_core::bail!("rope: {dims:?} is not ({b} * t, {} * {d})", self.heads);
        }
        let t = rows / b;
        let needed = match &self.positions {
            None => t,
            Some(p) if p.len() == rows => p.iter().map(|&p| p as usize + 1).max().unwrap_or(0),
            Some(p) => candle_core::bail!("rope: {} positions for {rows} rows", p.len()),
        };
        if self.cos.len() < needed * d || self.sin.len() < needed * d {
            candle_core::bail!(
                "rope: {needed} positions, tables have {}",
                self.cos.len() / d
            );
        }
        Ok(t)
    }

    /// The position of row i of sequence bi.
    #[inline(always)]
    fn position(&self, bi: usize, i: usize, t: usize) -> usize {
        self.positions
            .as_ref()
            .map_or(i, |p| p[bi * t + i] as usize)
    }
}

impl CustomOp1 for RopeHeads {
    fn name(&self) -> &'static str {
        "rope-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let t = self.check(l.dims())?;
        let x = contiguous_f32(s, l, "rope", "input")?;
        let (h, d, half) = (self.heads, self.d, self.d / 2);
        let width = h * d;
        let mut out = vec![0.0f32; x.len()];
        // One task per (batch, head): its (t, d) block of the output.
        out.par_chunks_mut(t * d).enumerate().for_each(|(bh, o)| {
            let (bi, hi) = (bh / h, bh % h);
            for i in 0..t {
                let src = &x[(bi * t + i) * width + hi * d..][..d];
                let pos = self.position(bi, i, t);
                let (cos, sin) = (&self.cos[pos * d..][..d], &self.sin[pos * d..][..d]);
                let dst = &mut o[i * d..][..d];
                for c in 0..half {
                    dst[c] = src[c] * cos[c] - src[c + half] * sin[c];
                    dst[c + half] = src[c + half] * cos[c + half] + src[c] * sin[c + half];
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((self.batch, h, t, d))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let t = self.check(x.dims())?;
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (h, d, half) = (self.heads, self.d, self.d / 2);
        let width = h * d;
        let mut dx = vec![0.0f32; g.len()];
        // One task per row of x: it gathers that row's heads from the gradient blocks.
        dx.par_chunks_mut(width).enumerate().for_each(|(row, dxr)| {
            let (bi, i) = (row / t, row % t);
            let pos = self.position(bi, i, t);
            let (cos, sin) = (&self.cos[pos * d..][..d], &self.sin[pos * d..][..d]);
            for hi in 0..h {
                let go = &g[((bi * h + hi) * t + i) * d..][..d];
                let dst = &mut dxr[hi * d..][..d];
                for c in 0..half {
                    dst[c] = go[c] * cos[c] + go[c + half] * sin[c + half];
                    dst[c + half] = go[c + half] * cos[c + half] - go[c] * sin[c];
                }
            }
        });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Device, Var, D};

    fn composed(
        x: &Tensor,
        b: usize,
        t: usize,
        h: usize,
        d: usize,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Tensor {
        let x = x
            .reshape((b, t, h, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let x1 = x.narrow(D::Minus1, 0, d / 2).unwrap();
        let x2 = x.narrow(D::Minus1, d / 2, d / 2).unwrap();
        let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        (x.broadcast_mul(cos).unwrap() + rotated.broadcast_mul(sin).unwrap()).unwrap()
    }

    #[test]
    fn matches_the_composed_rotation_forward_and_backward() {
        let (b, t, h, d, positions) = (2, 5, 3, 8, 7);
        let cos_v: Vec<f32> = (0..positions * d)
            .map(|i| ((i as f32) * 0.37).cos())
            .collect();
        let sin_v: Vec<f32> = (0..positions * d)
            .map(|i| ((i as f32) * 0.37).sin())
            .collect();
        let op = RopeHeads {
            batch: b,
            heads: h,
            d,
            cos: Arc::new(cos_v.clone()),
            sin: Arc::new(sin_v.clone()),
            positions: None,
        };
        let cos = Tensor::from_vec(cos_v, (positions, d), &Device::Cpu)
            .unwrap()
            .narrow(0, 0, t)
            .unwrap();
        let sin = Tensor::from_vec(sin_v, (positions, d), &Device::Cpu)
            .unwrap()
            .narrow(0, 0, t)
            .unwrap();
        let x = Var::from_tensor(&random(&[b * t, h * d], 1)).unwrap();
        let up = random(&[b, h, t, d], 2);
        let ours = op.apply(&x).unwrap();
        let theirs = composed(&x, b, t, h, d, &cos, &sin);
        let diff = (&ours - &theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "forward {diff}");
        let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (a, c) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
        let diff = (a - c)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "gradient {diff}");
    }

    /// Explicit positions: each row rotated as the row at that position of an unpacked
    /// sequence is, in both passes; positions beyond the tables are errors.
    #[test]
    fn explicit_positions_rotate_as_those_rows_do() {
        let (h, d, table) = (2, 4, 6);
        let cos: Vec<f32> = (0..table * d).map(|i| (i as f32 * 0.3).cos()).collect();
        let sin: Vec<f32> = (0..table * d).map(|i| (i as f32 * 0.3).sin()).collect();
        let op = |batch, positions: Option<Vec<u32>>| RopeHeads {
            batch,
            heads: h,
            d,
            cos: Arc::new(cos.clone()),
            sin: Arc::new(sin.clone()),
            positions: positions.map(Arc::new),
        };
        // Rows at positions 0, 1, 2, 0, 1 (two packed samples) against the same rows
        // rotated one sample at a time.
        let x = Var::from_tensor(&random(&[5, h * d], 3)).unwrap();
        let up = random(&[1, h, 5, d], 4);
        let packed = op(1, Some(vec![0, 1, 2, 0, 1])).apply(&x).unwrap();
        let first = op(1, None).apply(&x.narrow(0, 0, 3).unwrap()).unwrap();
        let second = op(1, None).apply(&x.narrow(0, 3, 2).unwrap()).unwrap();
        let apart = Tensor::cat(&[&first, &second], 2).unwrap();
        assert_eq!(
            packed.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            apart.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let g1 = (packed * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (apart * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(
            g1.get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            g2.get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        assert!(op(1, Some(vec![0, 1, 2, 0])).apply(&x).is_err()); // 4 positions, 5 rows
        assert!(op(1, Some(vec![0, 1, 2, 0, 6])).apply(&x).is_err()); // beyond the table
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let op = RopeHeads {
            batch: 2,
            heads: 3,
            d: 4,
            cos: Arc::new(vec![1.0; 8]),
            sin: Arc::new(vec![0.0; 8]),
            positions: None,
        };
        assert!(op.apply(&random(&[5, 12], 1)).is_err()); // 5 rows for batch 2
        assert!(op.apply(&random(&[4, 10], 1)).is_err()); // width
        assert!(op.apply(&random(&[6, 12], 1)).is_err()); // 3 positions, tables have 2
        assert!(op.apply(&random(&[4, 12], 1)).is_ok());
    }
}
