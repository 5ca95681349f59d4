//! Matrix products for training, on the `gemm` crate's kernels with the work split by hand.
//!
//! candle's CPU matmul hands each product to `gemm` with its own threading, which scales
//! poorly on the training shapes: on 2 threads the 15m preset's output projection (2048
//! rows against 32000 x 288) took 556/424/463 ms for the forward, input-gradient and
//! weight-gradient products, against 330/380/420 ms when each thread runs `gemm` alone on
//! its own block of output rows or columns (`examples/head_gemm.rs` prints both). The
//! split is along the longer side of the output, so every thread writes its own part and
//! reads shared inputs; no sums cross threads, so the result does not depend on the split.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `a · b` for 2-D f32 tensors of any strides, with backward passes made of the same op.
#[derive(Debug, Clone, Copy, Default)]
pub struct MatMul;

/// `x (n, in) · w (out, in)ᵀ`: a linear layer without bias.
pub fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op2(&w.t()?, MatMul)
}

/// A raw pointer that threads write disjoint parts through.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: each thread writes only its own rows or columns of the destination.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Through a method, so closures capture the whole (Send) wrapper, not its field.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Rows or columns per thread, a multiple of 16 (the kernels' tile), or all at once when
/// the product is too small to be worth a second thread.
fn chunk(len: usize, threads: usize, flops: usize) -> usize {
    if threads <= 1 || flops < 1 << 20 {
        return len.max(1);
    }
    len.div_ceil(threads).next_multiple_of(16).max(16)
}

/// Whether every element (i, j), i < rows, j < cols, at i * rs + j * cs lies inside `len`.
fn fits(len: usize, rows: usize, cols: usize, (rs, cs): (usize, usize)) -> bool {
    let last = (rows - 1)
        .checked_mul(rs)
        .zip((cols - 1).checked_mul(cs))
        .and_then(|(a, b)| a.checked_add(b));
    last.is_some_and(|l| l < len)
}

/// `scale` (m, k) · (k, n) from strided slices (strides in elements, rows then columns)
/// into a new row-major (m, n) buffer. Strides that would reach past either slice are an
/// error, checked before any element is read.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    m: usize,
    k: usize,
    n: usize,
    scale: f32,
) -> candle_core::Result<Vec<f32>> {
    if m == 0 || n == 0 || k == 0 {
        return Ok(vec![0.0; m * n]);
    }
    if !fits(a.len(), m, k, (a_rs, a_cs)) || !fits(b.len(), k, n, (b_rs, b_cs)) {
        candle_core::bail!(
            "matmul: strides ({a_rs}, {a_cs}) x ({b_rs}, {b_cs}) of ({m}, {k}) x ({k}, {n}) reach past {} and {} elements",
            a.len(),
            b.len()
        );
    }
    let mut dst = vec![0.0f32; m * n];
    let out = Shared(dst.as_mut_ptr());
    let threads = rayon::current_num_threads();
    let by_rows = m >= n;
    let len = if by_rows { m } else { n };
    let step = chunk(len, threads, m * n * k);
    let run = |start: usize| {
        let end = (start + step).min(len);
        // SAFETY: the offsets stay inside `a`, `b` and `dst` (start < len along the split
        // dimension, and `fits` checked the strides against both slices above), and the
        // threads' output blocks are disjoint.
        unsafe {
            let (rows, cols, dst, a, b) = if by_rows {
                (
                    end - start,
                    n,
                    out.ptr().add(start * n),
                    a.as_ptr().add(start * a_rs),
                    b.as_ptr(),
                )
            } else {
                (
                    m,
                    end - start,
                    out.ptr().add(start),
                    a.as_ptr(),
                    b.as_ptr().add(start * b_cs),
                )
            };
            gemm::gemm(
                rows,
                cols,
                k,
                dst,
                1,
                n as isize,
                false,
                a,
                a_cs as isize,
                a_rs as isize,
                b,
                b_cs as isize,
                b_rs as isize,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    };
    if step >= len {
        run(0);
    } else {
        (0..len)
            .step_by(step)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(run);
    }
    Ok(dst)
}

/// The f32 data of a CPU tensor with its shape and strides, (data, rows, columns, row
/// stride, column stride), for a closure to read without copying it.
pub(crate) fn with_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32], usize, usize, usize, usize) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{what} must be on the CPU");
    };
    let (v, r, c, rs, cs) = f32_operand(cpu, layout, what)?;
    f(v, r, c, rs, cs)
}

/// An f32 2-D operand: its data from the first element, rows, columns, row and column
/// strides.
pub(crate) fn f32_operand<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<(&'a [f32], usize, usize, usize, usize)> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("matmul: {what} must be f32");
    };
    let (&[r, c], &[rs, cs]) = (l.dims(), l.stride()) else {
        candle_core::bail!("matmul: {what} must be 2-D, got {:?}", l.dims());
    };
    let start = l.start_offset();
    // The furthest element read, so the slice bounds every access.
    let last = start + r.saturating_sub(1) * rs + c.saturating_sub(1) * cs;
    if r > 0 && c > 0 && last >= v.len() {
        candle_core::bail!("matmul: {what} layout reaches past its storage");
    }
    Ok((&v[start..], r, c, rs, cs))
}

impl CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        "split-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, m, k, a_rs, a_cs) = f32_operand(s1, l1, "lhs")?;
        let (b, k2, n, b_rs, b_cs) = f32_operand(s2, l2, "rhs")?;
        if k != k2 {
            candle_core::bail!("matmul: ({m}, {k}) times ({k2}, {n})");
        }
        let dst = matmul_strided(a, (a_rs, a_cs), b, (b_rs, b_cs), m, k, n, 1.0)?;
        Ok((CpuStorage::F32(dst), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // c = a b: da = dc bᵀ, db = aᵀ dc; transposes are stride swaps, never copies. An
        // operand that is a constant (a frozen weight) gets no gradient: that product is
        // a third of a training step's work, and LoRA has no use for it.
        let da = a
            .track_op()
            .then(|| grad.apply_op2_no_bwd(&b.t()?, &MatMul))
            .transpose()?;
        let db = b
            .track_op()
            .then(|| a.t()?.apply_op2_no_bwd(grad, &MatMul))
            .transpose()?;
        Ok((da, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Device, Var};

    /// Forward and both gradients against candle's own matmul, on shapes that split by
    /// rows, by columns, unevenly, and not at all.
    #[test]
    fn linear_and_its_gradients_match_candle() {
        for &(n, i, o) in &[
            (3, 5, 7),
            (64, 96, 80),
            (37, 13, 1000),
            (700, 33, 29),
            (1, 64, 64),
        ] {
            let x = Var::from_tensor(&random(&[n, i], 1)).unwrap();
            let w = Var::from_tensor(&random(&[o, i], 2)).unwrap();
            let up = random(&[n, o], 3);
            let ours = linear(&x, &w).unwrap();
            let theirs = x.matmul(&w.t().unwrap()).unwrap();
            assert!(max_rel(&ours, &theirs) < 1e-6, "forward {n}x{i}x{o}");
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &w] {
                let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert_eq!(a.dims(), b.dims());
                assert!(max_rel(a, b) < 1e-6, "gradient {n}x{i}x{o}");
            }
        }
    }

    /// A constant operand (a frozen weight) gets no gradient; the other's is unchanged.
    #[test]
    fn constants_get_no_gradient() {
        let x = Var::from_tensor(&random(&[6, 5], 1)).unwrap();
        let w = random(&[4, 5], 2);
        let g = linear(&x, &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(&w).is_none());
        let wv = Var::from_tensor(&w).unwrap();
        let g2 = linear(&x, &wv)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(max_rel(g.get(&x).unwrap(), g2.get(&x).unwrap()), 0.0);
    }

    #[test]
    fn a_split_product_equals_the_unsplit_one_bit_for_bit() {
        let (m, k, n) = (300, 70, 500);
        let a = random(&[m, k], 4)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = random(&[k, n], 5)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let split = matmul_strided(&a, (k, 1), &b, (n, 1), m, k, n, 1.0).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let whole = pool.install(|| matmul_strided(&a, (k, 1), &b, (n, 1), m, k, n, 1.0).unwrap());
        assert_eq!(split, whole);
    }

    #[test]
    fn strides_past_the_slices_are_an_error() {
        let a = vec![1.0f32; 12];
        let b = vec![1.0f32; 6];
        assert!(matmul_strided(&a, (3, 1), &b, (2, 1), 4, 3, 2, 1.0).is_ok());
        // One row too many for `a`, a column stride too long for `b`, an overflowing stride.
        assert!(matmul_strided(&a, (3, 1), &b, (2, 1), 5, 3, 2, 1.0).is_err());
        assert!(matmul_strided(&a, (3, 1), &b, (2, 2), 4, 3, 2, 1.0).is_err());
        assert!(matmul_strided(&a, (usize::MAX, 1), &b, (2, 1), 4, 3, 2, 1.0).is_err());
    }

    #[test]
    fn mismatched_and_empty_shapes() {
        let a = random(&[4, 3], 1);
        let b = random(&[4, 2], 2);
        assert!(a.apply_op2(&b, MatMul).is_err());
        let e = Tensor::zeros((4, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
        let f = Tensor::zeros((0, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let z = e.apply_op2(&f, MatMul).unwrap();
        assert_eq!(z.dims(), &[4, 5]);
        assert_eq!(z.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
