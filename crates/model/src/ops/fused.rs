//! Fused operations with hand-written backward passes, where candle's composed ones were
//! the bottleneck: causal attention (scores, mask, softmax and the weighted sum in one
//! pass per head, recomputing the probabilities in the backward pass instead of keeping
//! the (t, t) matrices, as FlashAttention does) and softmax cross-entropy (one pass per
//! row instead of six over the (tokens, vocabulary) logits). On the 260k preset the
//! composed attention spent most of a step in element-wise passes over (b, heads, t, t)
//! tensors. Each op is tested against the composed candle expression it replaces.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::contiguous_f32;

/// Heads at least this wide go through `attention_gemm` (matrix products); narrower ones
/// (the 260k preset's 8) through the row loops below, which were faster for them.
const GEMM_HEAD_DIM: usize = 32;

/// Causal self-attention softmax(q kᵀ * scale + mask) v with grouped-query heads:
/// q (b, heads, t, d), k and v (b, heads / n_rep, t, d); query head h reads KV head
/// h / n_rep.
#[derive(Debug, Clone, Copy)]
pub struct CausalAttention {
    pub scale: f32,
}

struct Dims {
    b: usize,
    h: usize,
    hkv: usize,
    t: usize,
    d: usize,
}

fn attention_dims(q: &[usize], k: &[usize], v: &[usize]) -> candle_core::Result<Dims> {
    let (&[b, h, t, d], &[bk, hkv, tk, dk]) = (q, k) else {
        candle_core::bail!("attention: q and k must be 4-D, got {q:?} and {k:?}");
    };
    if k != v || b != bk || t != tk || d != dk || hkv == 0 || h % hkv != 0 {
        candle_core::bail!("attention: shapes q {q:?}, k {k:?}, v {v:?} do not fit");
    }
    Ok(Dims { b, h, hkv, t, d })
}

/// exp(x) for every element, by Cephes' method (x = n ln 2 + r, a degree-6 polynomial in
/// r, 2^n from the exponent bits), written so the compiler vectorises it: libm's scalar
/// `expf` was 13 % of a training step. Within 2 ulp of `f32::exp` on [-87, 88]; inputs
/// below -87.3 give about 1e-38 instead of a subnormal (softmax terms that small do not
/// count).
#[inline(always)]
pub fn exp_in_place(xs: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    for v in xs.iter_mut() {
        let x = v.clamp(-87.3, 88.3);
        let n = (x * LOG2E + ROUND) - ROUND;
        let r = x - n * LN2_HI - n * LN2_LO;
        let mut y = 1.987_569_1e-4_f32;
        y = y * r + 1.398_2e-3;
        y = y * r + 8.333_452e-3;
        y = y * r + 4.166_579_6e-2;
        y = y * r + 1.666_666_5e-1;
        y = y * r + 0.5;
        y = y * r * r + r + 1.0;
        let pow2 = f32::from_bits(((n as i32 + 127) as u32) << 23);
        *v = y * pow2;
    }
}

/// Lanes of the reductions below: four AVX registers of independent partial results, so
/// the additions do not wait on one another (a single running sum is bound by the
/// latency of one addition per element). Fixed, so results do not vary between runs.
const LANES: usize = 32;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for x in chunks {
        for l in 0..LANES {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for x in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(x[l]);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// (t, d) rows -> (d, t) columns, so that a query's scores against all keys are long
/// element-wise loops (vectorised) instead of t short dot products, each a chain of
/// dependent additions.
fn transpose(x: &[f32], t: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; t * d];
    for j in 0..t {
        for c in 0..d {
            out[c * t + j] = x[j * d + c];
        }
    }
    out
}

/// Writes into `p[..=i]` the probabilities of query row `qi` over keys 0..=i, given the
/// keys transposed (`kt`, (d, t)).
#[inline(always)]
fn row_probs(qi: &[f32], kt: &[f32], t: usize, i: usize, scale: f32, p: &mut [f32]) {
    let p = &mut p[..=i];
    p.fill(0.0);
    for (c, &qc) in qi.iter().enumerate() {
        let qc = qc * scale;
        for (pj, &k) in p.iter_mut().zip(&kt[c * t..c * t + i + 1]) {
            *pj += qc * k;
        }
    }
    let m = max(p);
    for pj in p.iter_mut() {
        *pj -= m;
    }
    exp_in_place(p);
    let inv = 1.0 / sum(p);
    for pj in p.iter_mut() {
        *pj *= inv;
    }
}

/// Attention of one query head: o (t, d) from q (t, d), keys and values transposed (d, t).
#[inline(always)]
fn head_forward(q: &[f32], kt: &[f32], vt: &[f32], o: &mut [f32], t: usize, d: usize, scale: f32) {
    let mut p = vec![0.0f32; t];
    for i in 0..t {
        row_probs(&q[i * d..(i + 1) * d], kt, t, i, scale, &mut p);
        for (c, x) in o[i * d..(i + 1) * d].iter_mut().enumerate() {
            *x = dot(&p[..=i], &vt[c * t..c * t + i + 1]);
        }
    }
}

/// Gradients of one KV head's group of `n_rep` query heads. Inputs: q and dO (n_rep, t,
/// d), keys and values transposed (d, t). Outputs: dq (n_rep, t, d), and dk,
/// dv transposed (d, t), summed over the group.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn group_backward(
    q: &[f32],
    go: &[f32],
    kt: &[f32],
    vt: &[f32],
    dq: &mut [f32],
    dkt: &mut [f32],
    dvt: &mut [f32],
    (n_rep, t, d): (usize, usize, usize),
    scale: f32,
) {
    let (mut p, mut ds) = (vec![0.0f32; t], vec![0.0f32; t]);
    for r in 0..n_rep {
        for i in 0..t {
            let row = (r * t + i) * d;
            let (qi, gi) = (&q[row..row + d], &go[row..row + d]);
            row_probs(qi, kt, t, i, scale, &mut p);
            // dp_j = dO_i . v_j, into ds.
            let dp = &mut ds[..=i];
            dp.fill(0.0);
            for (c, &g) in gi.iter().enumerate() {
                for (x, &v) in dp.iter_mut().zip(&vt[c * t..c * t + i + 1]) {
                    *x += g * v;
                }
            }
            // D_i = sum_j p_j dp_j; ds_j = p_j (dp_j - D_i) * scale.
            let total = dot(&p[..=i], dp);
            for (x, &pj) in dp.iter_mut().zip(&p[..=i]) {
                *x = pj * (*x - total) * scale;
            }
            for (c, x) in dq[row..row + d].iter_mut().enumerate() {
                *x = dot(&ds[..=i], &kt[c * t..c * t + i + 1]);
            }
            for c in 0..d {
                let (qc, gc) = (qi[c], gi[c]);
                let dk = &mut dkt[c * t..c * t + i + 1];
                for (x, &s) in dk.iter_mut().zip(&ds[..=i]) {
                    *x += qc * s;
                }
                let dv = &mut dvt[c * t..c * t + i + 1];
                for (x, &pj) in dv.iter_mut().zip(&p[..=i]) {
                    *x += gc * pj;
                }
            }
        }
    }
}

/// The bodies above compiled for AVX2 + FMA where the CPU has them (the compiler does not
/// contract a * b + c into FMA on its own, so both builds compute the same bits).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn head_forward(
        q: &[f32],
        kt: &[f32],
        vt: &[f32],
        o: &mut [f32],
        t: usize,
        d: usize,
        scale: f32,
    ) {
        super::head_forward(q, kt, vt, o, t, d, scale)
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn group_backward(
        q: &[f32],
        go: &[f32],
        kt: &[f32],
        vt: &[f32],
        dq: &mut [f32],
        dkt: &mut [f32],
        dvt: &mut [f32],
        dims: (usize, usize, usize),
        scale: f32,
    ) {
        super::group_backward(q, go, kt, vt, dq, dkt, dvt, dims, scale)
    }
}

/// [`head_forward`] in its fastest build for this CPU.
fn head_forward_best(
    q: &[f32],
    kt: &[f32],
    vt: &[f32],
    o: &mut [f32],
    t: usize,
    d: usize,
    scale: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::head_forward(q, kt, vt, o, t, d, scale) };
    }
    head_forward(q, kt, vt, o, t, d, scale)
}

/// [`group_backward`] in its fastest build for this CPU.
#[allow(clippy::too_many_arguments)]
fn group_backward_best(
    q: &[f32],
    go: &[f32],
    kt: &[f32],
    vt: &[f32],
    dq: &mut [f32],
    dkt: &mut [f32],
    dvt: &mut [f32],
    dims: (usize, usize, usize),
    scale: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::group_backward(q, go, kt, vt, dq, dkt, dvt, dims, scale) };
    }
    group_backward(q, go, kt, vt, dq, dkt, dvt, dims, scale)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dims { h, hkv, t, d, .. } = attention_dims(l1.dims(), l2.dims(), l3.dims())?;
        let (q, k, v) = (
            contiguous_f32(s1, l1, "attention", "q")?,
            contiguous_f32(s2, l2, "attention", "k")?,
            contiguous_f32(s3, l3, "attention", "v")?,
        );
        let n_rep = h / hkv;
        let scale = self.scale;
        if d >= GEMM_HEAD_DIM {
            let mut out = vec![0.0f32; q.len()];
            out.par_chunks_mut(t * d).enumerate().for_each(|(bh, o)| {
                let (bi, hi) = (bh / h, bh % h);
                let g = (bi * hkv + hi / n_rep) * t * d;
                let q = &q[bh * t * d..(bh + 1) * t * d];
                let (k, v) = (&k[g..g + t * d], &v[g..g + t * d]);
                crate::ops::attention_gemm::head_forward(q, k, v, o, t, d, scale);
            });
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        let kts: Vec<Vec<f32>> = k.par_chunks(t * d).map(|k| transpose(k, t, d)).collect();
        let vts: Vec<Vec<f32>> = v.par_chunks(t * d).map(|v| transpose(v, t, d)).collect();
        let mut out = vec![0.0f32; q.len()];
        out.par_chunks_mut(t * d).enumerate().for_each(|(bh, o)| {
            let (bi, hi) = (bh / h, bh % h);
            let g = bi * hkv + hi / n_rep;
            let (kt, vt) = (&kts[g], &vts[g]);
            let q = &q[bh * t * d..(bh + 1) * t * d];
            head_forward_best(q, kt, vt, o, t, d, scale)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Dims { b, h, hkv, t, d } = attention_dims(q.dims(), k.dims(), v.dims())?;
        let flat = |x: &Tensor| x.contiguous()?.flatten_all()?.to_vec1::<f32>();
        let (qd, kd, vd, gd) = (flat(q)?, flat(k)?, flat(v)?, flat(grad)?);
        let n_rep = h / hkv;
        let mut dq = vec![0.0f32; qd.len()];
        let (mut dk, mut dv) = (vec![0.0f32; kd.len()], vec![0.0f32; vd.len()]);
        let scale = self.scale;
        // One task per (batch, KV head): it owns that head's dk and dv and the dq rows of
        // the query heads that share it, so no two tasks write the same memory.
        dq.par_chunks_mut(n_rep * t * d)
            .zip(dk.par_chunks_mut(t * d))
            .zip(dv.par_chunks_mut(t * d))
            .enumerate()
            .for_each(|(g, ((dq, dk), dv))| {
                let kv = g * t * d..(g + 1) * t * d;
                let qs = g * n_rep * t * d..(g + 1) * n_rep * t * d;
                if d >= GEMM_HEAD_DIM {
                    let (k, v) = (&kd[kv.clone()], &vd[kv]);
                    let (q, go) = (&qd[qs.clone()], &gd[qs]);
                    let dims = (n_rep, t, d);
                    crate::ops::attention_gemm::group_backward(
                        q, go, k, v, dq, dk, dv, dims, scale,
                    );
                    return;
                }
                let (kt, vt) = (transpose(&kd[kv.clone()], t, d), transpose(&vd[kv], t, d));
                let (mut dkt, mut dvt) = (vec![0.0f32; t * d], vec![0.0f32; t * d]);
                let (q, go) = (&qd[qs.clone()], &gd[qs]);
                let (kt, vt) = (&kt[..], &vt[..]);
                let dims = (n_rep, t, d);
                group_backward_best(q, go, kt, vt, dq, &mut dkt, &mut dvt, dims, scale);
                dk.copy_from_slice(&transpose(&dkt, d, t));
                dv.copy_from_slice(&transpose(&dvt, d, t));
            });
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, h, t, d), dev)?),
            Some(Tensor::from_vec(dk, (b, hkv, t, d), dev)?),
            Some(Tensor::from_vec(dv, (b, hkv, t, d), dev)?),
        ))
    }
}

/// Mean softmax cross-entropy of logits (n, vocab) against u32 targets (n): a scalar.
/// The forward pass keeps each row's log-sum-exp for the backward pass.
#[derive(Debug, Default)]
pub struct CrossEntropy {
    lse: std::sync::Mutex<Vec<f32>>,
}

/// max(row) + ln(sum(exp(row - max))); `scratch` holds the terms.
#[inline(always)]
fn log_sum_exp_body(row: &[f32], scratch: &mut Vec<f32>) -> f32 {
    let m = max(row);
    scratch.clear();
    scratch.extend(row.iter().map(|&x| x - m));
    exp_in_place(scratch);
    m + sum(scratch).ln()
}

/// d = exp(row - lse) * g: the softmax scaled by the incoming gradient.
#[inline(always)]
fn softmax_scaled_body(row: &[f32], lse: f32, g: f32, d: &mut [f32]) {
    for (di, &x) in d.iter_mut().zip(row) {
        *di = x - lse;
    }
    exp_in_place(d);
    for di in d.iter_mut() {
        *di *= g;
    }
}

/// Replaces `row` with its softmax and returns its log-sum-exp.
#[inline(always)]
fn softmax_in_place_body(row: &mut [f32]) -> f32 {
    let m = max(row);
    for x in row.iter_mut() {
        *x -= m;
    }
    exp_in_place(row);
    let s = sum(row);
    let inv = 1.0 / s;
    for x in row.iter_mut() {
        *x *= inv;
    }
    m + s.ln()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_in_place_avx2(row: &mut [f32]) -> f32 {
    softmax_in_place_body(row)
}

/// Replaces `row` with its softmax and returns its log-sum-exp.
pub(crate) fn softmax_in_place(row: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { softmax_in_place_avx2(row) };
    }
    softmax_in_place_body(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn log_sum_exp_avx2(row: &[f32], scratch: &mut Vec<f32>) -> f32 {
    log_sum_exp_body(row, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_scaled_avx2(row: &[f32], lse: f32, g: f32, d: &mut [f32]) {
    softmax_scaled_body(row, lse, g, d)
}

fn log_sum_exp(row: &[f32], scratch: &mut Vec<f32>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { log_sum_exp_avx2(row, scratch) };
    }
    log_sum_exp_body(row, scratch)
}

fn softmax_scaled(row: &[f32], lse: f32, g: f32, d: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { softmax_scaled_avx2(row, lse, g, d) };
    }
    softmax_scaled_body(row, lse, g, d)
}

fn targets_of(s: &CpuStorage, l: &Layout) -> candle_core::Result<Vec<u32>> {
    let CpuStorage::U32(v) = s else {
        candle_core::bail!("cross-entropy: targets must be u32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(v[a..b].to_vec()),
        None => candle_core::bail!("cross-entropy: targets must be contiguous"),
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let &[n, vocab] = l1.dims() else {
            candle_core::bail!(
                "cross-entropy: logits must be (n, vocab), got {:?}",
                l1.dims()
            );
        };
        let x = contiguous_f32(s1, l1, "attention", "logits")?;
        let y = targets_of(s2, l2)?;
        if y.len() != n || y.iter().any(|&t| t as usize >= vocab) {
            candle_core::bail!(
                "cross-entropy: {} targets for {n} rows, or one >= {vocab}",
                y.len()
            );
        }
        let lse: Vec<f32> = x
            .par_chunks(vocab)
            .map_init(Vec::new, |scratch, row| log_sum_exp(row, scratch))
            .collect();
        // Summed in row order, in f64, so the loss does not depend on the thread count.
        let total: f64 = lse
            .iter()
            .zip(x.chunks(vocab).zip(&y))
            .map(|(&l, (row, &t))| (l - row[t as usize]) as f64)
            .sum();
        let mean = total / n.max(1) as f64;
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = lse;
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, vocab) = logits.dims2()?;
        let g = grad.to_scalar::<f32>()? / n.max(1) as f32;
        let x = logits.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let y = targets.to_vec1::<u32>()?;
        let lse = self.lse.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if lse.len() != n {
            candle_core::bail!("cross-entropy: backward without its forward pass");
        }
        let mut dx = vec![0.0f32; x.len()];
        dx.par_chunks_mut(vocab)
            .zip(x.par_chunks(vocab))
            .zip(y.par_iter().zip(&lse))
            .for_each(|((d, row), (&t, &l))| {
                softmax_scaled(row, l, g, d);
                d[t as usize] -= g;
            });
        Ok((
            Some(Tensor::from_vec(dx, (n, vocab), logits.device())?),
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Device, Var, D};

    /// The composed candle expression the fused op replaces.
    fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let (b, h, t, d) = q.dims4().unwrap();
        let hkv = k.dim(1).unwrap();
        let rep = |x: &Tensor| {
            Tensor::cat(&vec![x; h / hkv], 2)
                .unwrap()
                .reshape((b, h, t, d))
                .unwrap()
        };
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
        let s = (q.matmul(&rep(k).t().unwrap()).unwrap() * scale)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let m = s.max_keepdim(D::Minus1).unwrap().detach();
        let e = s.broadcast_sub(&m).unwrap().exp().unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        p.matmul(&rep(v)).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn fused_attention_matches_the_composed_one_forward_and_backward() {
        // Odd sizes, GQA with 3 query heads per KV head.
        for &(b, h, hkv, t, d) in &[
            (2, 6, 2, 7, 5),
            (1, 4, 4, 13, 8),
            (3, 2, 1, 1, 3),
            (1, 2, 2, 70, 48),
            (2, 6, 2, 150, 32),
        ] {
            let q = Var::from_tensor(&random(&[b, h, t, d], 1)).unwrap();
            let k = Var::from_tensor(&random(&[b, hkv, t, d], 2)).unwrap();
            let v = Var::from_tensor(&random(&[b, hkv, t, d], 3)).unwrap();
            let w = random(&[b, h, t, d], 4);
            let scale = 1.0 / (d as f64).sqrt();
            let fused = q
                .apply_op3(
                    k.as_tensor(),
                    v.as_tensor(),
                    CausalAttention {
                        scale: scale as f32,
                    },
                )
                .unwrap();
            let reference = attention_reference(&q, &k, &v, scale);
            assert!(max_diff(&fused, &reference) < 1e-5);
            let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (reference * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for x in [&q, &k, &v] {
                let diff = max_diff(gf.get(x).unwrap(), gr.get(x).unwrap());
                assert!(
                    diff < 2e-6,
                    "shape ({b}, {h}, {hkv}, {t}, {d}): grad diff {diff}"
                );
            }
        }
    }

    #[test]
    fn vectorised_exp_is_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let mut v = [x];
            exp_in_place(&mut v);
            let exact = (x as f64).exp();
            let ulp = (exact as f32).abs() * f32::EPSILON;
            worst = worst.max((v[0] as f64 - exact).abs() / ulp as f64);
            x += 0.001_37;
        }
        assert!(worst <= 2.0, "{worst} ulp");
        let mut edge = [0.0f32, -100.0, 1.0];
        exp_in_place(&mut edge);
        assert_eq!(edge[0], 1.0);
        assert!(edge[1] < 1e-37 && (edge[2] - std::f32::consts::E).abs() < 1e-6);
    }

    #[test]
    fn fused_cross_entropy_matches_the_composed_one() {
        let logits = Var::from_tensor(&(random(&[9, 31], 5) * 8.0).unwrap()).unwrap();
        let targets = Tensor::from_vec(
            (0..9u32).map(|i| (i * 7) % 31).collect::<Vec<_>>(),
            9,
            &Device::Cpu,
        )
        .unwrap();
        let fused = logits.apply_op2(&targets, CrossEntropy::default()).unwrap();
        let m = logits.max_keepdim(D::Minus1).unwrap().detach();
        let sh = logits.broadcast_sub(&m).unwrap();
        let lz = sh
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap();
        let picked = sh.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap();
        let reference = (lz - picked).unwrap().mean_all().unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5);
        let gf = (fused * 3.0).unwrap().backward().unwrap();
        let gr = (reference * 3.0).unwrap().backward().unwrap();
        assert!(max_diff(gf.get(&logits).unwrap(), gr.get(&logits).unwrap()) < 1e-6);
        // A target outside the vocabulary is an error, not a panic.
        let bad = Tensor::from_vec(vec![31u32; 9], 9, &Device::Cpu).unwrap();
        assert!(logits.apply_op2(&bad, CrossEntropy::default()).is_err());
    }
}
