//! [`super::attend_heads`] with 8-lane vectors (AVX2, FMA, F16C).
//!
//! The heads that share a KV head go through its keys and values together, a block of rows
//! at a time, so a row comes from L2 once per block rather than once per head: at a 512-token
//! prompt one KV head's keys and values are 256 KiB, past L1, and per head the loop read
//! 64 bytes per cycle where L2 gives about 32. Each head's operations and their order are
//! those it has alone, so its bits do not depend on how many heads ran with it.

use std::arch::x86_64::*;

/// Keys whose value rows one pass of the weighted sum takes for every head (8 KiB of values
/// at head_dim 64: they stay in L1 while each head reads them).
const VALUE_BLOCK: usize = 32;

/// e^x for x <= 0, 8 lanes: x = n ln 2 + r with |r| <= ln 2 / 2, e^r by Cephes'
/// degree-5 polynomial, 2^n put into the exponent bits. Within 2 ulp of `f32::exp`;
/// below -87.3 (where e^x leaves the normal range) it gives about 1e-38, not 0, which
/// no softmax sum notices.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp_nonpositive(x: __m256) -> __m256 {
    // max_ps returns its second operand when either is NaN: a NaN score stays NaN, as
    // in the portable path, instead of becoming a tiny weight.
    let x = _mm256_max_ps(_mm256_set1_ps(-87.3), x);
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // ln 2 in two parts, so n * ln2_hi is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e_r = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let two_n = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_mul_ps(e_r, two_n)
}

/// The sum of 8 lanes as ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)): the tree
/// [`hsum8`] applies to each of its vectors, so a key's score has the same bits whether
/// it was summed alone or with seven others.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let h = _mm256_hadd_ps(v, v);
    let h = _mm256_hadd_ps(h, h);
    _mm_cvtss_f32(_mm_add_ss(
        _mm256_castps256_ps128(h),
        _mm256_extractf128_ps(h, 1),
    ))
}

/// [`hsum`] of eight vectors at once, lane j holding `v[j]`'s sum: six horizontal adds
/// and one add instead of eight separate reductions.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn hsum8(v: &[__m256; 8]) -> __m256 {
    let h01 = _mm256_hadd_ps(v[0], v[1]);
    let h23 = _mm256_hadd_ps(v[2], v[3]);
    let h45 = _mm256_hadd_ps(v[4], v[5]);
    let h67 = _mm256_hadd_ps(v[6], v[7]);
    // Lanes 0-3: keys 0-3's (x0 + x1) + (x2 + x3); lanes 4-7: their (x4 + x5) + (x6 + x7).
    let lo4 = _mm256_hadd_ps(h01, h23);
    let hi4 = _mm256_hadd_ps(h45, h67);
    _mm256_add_ps(
        _mm256_permute2f128_ps(lo4, hi4, 0x20),
        _mm256_permute2f128_ps(lo4, hi4, 0x31),
    )
}

/// Accumulators of `N` keys (rows `k`, `k + hd`, ...), each chunk by chunk into its own
/// 8 lanes, to be reduced by [`hsum`] or [`hsum8`].
///
/// # Safety
/// AVX2 and FMA; `q` holds `hd` values and `k` N rows of `hd`, `hd` a multiple of 8.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn key_lanes<const N: usize>(
    q: *const f32,
    k: *const f32,
    hd: usize,
) -> [__m256; N] {
    // SAFETY: the caller upholds this function's contract.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); N];
        for c in (0..hd).step_by(8) {
            let qc = _mm256_loadu_ps(q.add(c));
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k.add(j * hd + c)), *acc);
            }
        }
        acc
    }
}

/// Adds the sum over keys t of `p[t] * v[t][c..c + 8 W]` to `out[c..c + 8 W]`, or stores it
/// there when `fresh`, in W 8-lane accumulators (W fixed, so the loop over them unrolls:
/// with W known only at run time every key went through a ladder of compares). A lane's
/// additions run in key order whatever the blocks, since an f32 stored and reloaded is exact.
///
/// # Safety
/// AVX2 and FMA; `v` holds `p.len()` rows of `hd` values, `c + 8 W <= hd`, `out` holds
/// `hd` values.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_sum<const W: usize>(
    p: &[f32],
    v: *const f32,
    hd: usize,
    c: usize,
    out: *mut f32,
    fresh: bool,
) {
    // SAFETY: the caller upholds this function's contract.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); W];
        if !fresh {
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_loadu_ps(out.add(c + 8 * j));
            }
        }
        let mut row = v.add(c);
        for &p in p {
            let p = _mm256_set1_ps(p);
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(p, _mm256_loadu_ps(row.add(8 * j)), *acc);
            }
            row = row.add(hd);
        }
        for (j, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(c + 8 * j), *acc);
        }
    }
}

/// [`weighted_sum`] with W = `width` (1 to 8).
///
/// # Safety
/// As [`weighted_sum`]'s, with `c + 8 width <= hd`.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn weighted_sum_of_width(
    width: usize,
    p: &[f32],
    v: *const f32,
    hd: usize,
    c: usize,
    out: *mut f32,
    fresh: bool,
) {
    // SAFETY: the caller upholds this function's contract.
    unsafe {
        match width {
            8 => weighted_sum::<8>(p, v, hd, c, out, fresh),
            7 => weighted_sum::<7>(p, v, hd, c, out, fresh),
            6 => weighted_sum::<6>(p, v, hd, c, out, fresh),
            5 => weighted_sum::<5>(p, v, hd, c, out, fresh),
            4 => weighted_sum::<4>(p, v, hd, c, out, fresh),
            3 => weighted_sum::<3>(p, v, hd, c, out, fresh),
            2 => weighted_sum::<2>(p, v, hd, c, out, fresh),
            _ => weighted_sum::<1>(p, v, hd, c, out, fresh),
        }
    }
}

/// Scores (already scaled) to probabilities in place: exponentials 8 at a time, summed in
/// 8 lanes, rounded to f16 when `f16_probs`.
///
/// # Safety
/// AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax(scores: &mut [f32], f16_probs: bool) {
    // SAFETY: every access below stays inside `scores` (t + 8 <= chunks <= len).
    unsafe {
        let len = scores.len();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sums = _mm256_setzero_ps();
        let chunks = len / 8 * 8;
        let vmax = _mm256_set1_ps(max);
        for t in (0..chunks).step_by(8) {
            let e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(scores.as_ptr().add(t)), vmax));
            _mm256_storeu_ps(scores.as_mut_ptr().add(t), e);
            sums = _mm256_add_ps(sums, e);
        }
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..len - chunks].copy_from_slice(&scores[chunks..]);
        let e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), vmax));
        _mm256_storeu_ps(tail.as_mut_ptr(), e);
        // Lanes past len held -inf, clamped to -87.3: zero them before they join the sum.
        for x in &mut tail[len - chunks..] {
            *x = 0.0;
        }
        scores[chunks..].copy_from_slice(&tail[..len - chunks]);
        let sum = hsum(_mm256_add_ps(sums, _mm256_loadu_ps(tail.as_ptr())));
        let vsum = _mm256_set1_ps(sum);
        for t in (0..chunks).step_by(8) {
            let p = _mm256_div_ps(_mm256_loadu_ps(scores.as_ptr().add(t)), vsum);
            let p = if f16_probs {
                _mm256_cvtph_ps(_mm256_cvtps_ph(p, _MM_FROUND_TO_NEAREST_INT))
            } else {
                p
            };
            _mm256_storeu_ps(scores.as_mut_ptr().add(t), p);
        }
        for s in &mut scores[chunks..] {
            *s = if f16_probs {
                half::f16::from_f32(*s / sum).to_f32()
            } else {
                *s / sum
            };
        }
    }
}

/// [`super::attend_heads`]: `qs` holds R query heads of `hd` values (R = `qs.len() / hd`),
/// `k` and `v` `len` rows of `hd` (len = `scores.len() / R`), `out` R heads of `hd`.
///
/// # Safety
/// AVX2, FMA and F16C; `hd` a multiple of 8; the lengths above hold.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn attend_heads(
    qs: &[f32],
    k: &[f32],
    v: &[f32],
    hd: usize,
    scale: f32,
    f16_probs: bool,
    scores: &mut [f32],
    out: &mut [f32],
) {
    // SAFETY: the caller upholds this function's contract; every offset below is inside
    // the slices it describes.
    unsafe {
        let heads = qs.len() / hd;
        let len = scores.len() / heads.max(1);
        if len == 0 {
            out.fill(0.0);
            return;
        }
        debug_assert!(hd.is_multiple_of(8) && k.len() >= len * hd && v.len() >= len * hd);
        debug_assert!(out.len() == heads * hd);
        let (kp, vscale) = (k.as_ptr(), _mm256_set1_ps(scale));
        // Eight keys at a time (eight independent accumulator chains), for every head while
        // the eight rows are in L1.
        let mut t = 0;
        while t + 8 <= len {
            for h in 0..heads {
                let q = qs.as_ptr().add(h * hd);
                let s = hsum8(&key_lanes::<8>(q, kp.add(t * hd), hd));
                let dst = scores.as_mut_ptr().add(h * len + t);
                _mm256_storeu_ps(dst, _mm256_mul_ps(s, vscale));
            }
            t += 8;
        }
        for t in t..len {
            for h in 0..heads {
                let q = qs.as_ptr().add(h * hd);
                scores[h * len + t] = hsum(key_lanes::<1>(q, kp.add(t * hd), hd)[0]) * scale;
            }
        }
        for p in scores.chunks_exact_mut(len) {
            softmax(p, f16_probs);
        }
        // Weighted sum of values: up to 64 of a head's values in registers at a time, the
        // keys a block at a time, every head per block.
        let (vp, op) = (v.as_ptr(), out.as_mut_ptr());
        for c in (0..hd).step_by(64) {
            let width = (hd - c).min(64) / 8;
            for b in (0..len).step_by(VALUE_BLOCK) {
                let keys = b..(b + VALUE_BLOCK).min(len);
                for h in 0..heads {
                    let p = &scores[h * len + keys.start..h * len + keys.end];
                    let v_block = vp.add(keys.start * hd);
                    weighted_sum_of_width(width, p, v_block, hd, c, op.add(h * hd), b == 0);
                }
            }
        }
    }
}
