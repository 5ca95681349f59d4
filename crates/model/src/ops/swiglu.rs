//! SwiGLU's gating, silu(gate) ⊙ up, as one op. candle composes silu's backward pass from
//! several element-wise ops, some on one thread; here both passes are one parallel loop.
//! With s = σ(g): d gate = dy ⊙ up ⊙ s (1 + g (1 − s)), d up = dy ⊙ g s.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::contiguous_f32;

/// Elements per parallel task.
const CHUNK: usize = 1 << 13;

/// silu(gate) ⊙ up for tensors of one shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

#[derive(Debug, Clone, Copy)]
pub struct SwiGlu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ", l1.dims(), l2.dims());
        }
        let (g, u) = (
            contiguous_f32(s1, l1, "swiglu", "input")?,
            contiguous_f32(s2, l2, "swiglu", "input")?,
        );
        let mut y = vec![0.0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| {
                for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                    *y = g * sigmoid(g) * u;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = gate.flatten_all()?.to_vec1::<f32>()?;
        let u = up.flatten_all()?.to_vec1::<f32>()?;
        let dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut dg = vec![0.0f32; g.len()];
        let mut du = vec![0.0f32; g.len()];
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(
                g.par_chunks(CHUNK)
                    .zip(u.par_chunks(CHUNK))
                    .zip(dy.par_chunks(CHUNK)),
            )
            .for_each(|((dg, du), ((g, u), dy))| {
                for j in 0..g.len() {
                    let s = sigmoid(g[j]);
                    du[j] = dy[j] * g[j] * s;
                    dg[j] = dy[j] * u[j] * s * (1.0 + g[j] * (1.0 - s));
                }
            });
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?),
            Some(Tensor::from_vec(du, up.shape(), up.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::max_rel;
    use candle_core::{Device, Var};

    fn random(n: usize, seed: u32, amp: f32) -> Tensor {
        let v: Vec<f32> = (0..n as u32)
            .map(|i| {
                let x = i
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                amp * (((x >> 8) % 2001) as f32 / 1000.0 - 1.0)
            })
            .collect();
        Tensor::from_vec(v, (n / 10, 10), &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_silu_times_up_forward_and_backward() {
        for n in [10, 30_000] {
            let g = Var::from_tensor(&random(n, 1, 6.0)).unwrap();
            let u = Var::from_tensor(&random(n, 2, 1.0)).unwrap();
            let up = random(n, 3, 1.0);
            let ours = swiglu(&g, &u).unwrap();
            let theirs = (g.silu().unwrap() * u.as_tensor()).unwrap();
            assert!(max_rel(&ours, &theirs) < 1e-6);
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&g, &u] {
                let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(max_rel(a, b) < 1e-5, "{}", max_rel(a, b));
            }
        }
    }

    #[test]
    fn shapes_must_agree() {
        assert!(swiglu(&random(20, 1, 1.0), &random(30, 2, 1.0)).is_err());
    }
}
