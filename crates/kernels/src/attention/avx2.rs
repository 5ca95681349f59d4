//! [`super::attend_heads`] with 8-lane vectors (AVX2, FMA, F16C).
//!
//! The heads that share a KV head go through its keys and values together, up to three at a
//! time with their accumulators side by side in registers, so each key or value vector
//! loaded serves every head: per head, a loop read a vector for each multiply-add, and
//! loads, not multiply-adds, bounded it. Each head's operations and their order are those it
//! has alone, so its bits do not depend on how many heads ran with it.

use std::arch::x86_64::*;

/// Most heads whose accumulators share the registers: 3 x 4 accumulators, 3 query or
/// probability vectors and the key or value vector fill AVX2's 16.
const HEADS_AT_ONCE: usize = 3;

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

/// [`hsum`] of four vectors at once, lane j holding `v[j]`'s sum.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn hsum4(v: &[__m256; 4]) -> __m128 {
    let h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    // Lanes 0-3: keys 0-3's (x0 + x1) + (x2 + x3); lanes 4-7: their (x4 + x5) + (x6 + x7).
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))
}

/// Scaled scores of `R` heads (`qs`: R x `hd`) over `len` keys into `scores` (R x `len`):
/// four keys at a time, each key vector loaded once for the R heads; one head alone takes
/// eight keys at a time (four accumulators would wait on the multiply-add latency).
///
/// # Safety
/// AVX2 and FMA; `qs` holds R x hd values, `k` len rows of hd, `scores` R x len; hd a
/// multiple of 8.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_scores<const R: usize>(
    qs: *const f32,
    k: *const f32,
    hd: usize,
    len: usize,
    scale: f32,
    scores: *mut f32,
) {
    // SAFETY: the caller upholds this function's contract.
    unsafe {
        let vscale = _mm256_set1_ps(scale);
        let mut t = 0;
        if R == 1 {
            while t + 8 <= len {
                let s = hsum8(&key_lanes::<8>(qs, k.add(t * hd), hd));
                _mm256_storeu_ps(scores.add(t), _mm256_mul_ps(s, vscale));
                t += 8;
            }
        } else {
            while t + 4 <= len {
                let mut acc = [[_mm256_setzero_ps(); 4]; R];
                for c in (0..hd).step_by(8) {
                    let q: [__m256; R] =
                        std::array::from_fn(|i| _mm256_loadu_ps(qs.add(i * hd + c)));
                    for j in 0..4 {
                        let kv = _mm256_loadu_ps(k.add((t + j) * hd + c));
                        for i in 0..R {
                            acc[i][j] = _mm256_fmadd_ps(q[i], kv, acc[i][j]);
                        }
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    let s = _mm_mul_ps(hsum4(acc), _mm256_castps256_ps128(vscale));
                    _mm_storeu_ps(scores.add(i * len + t), s);
                }
                t += 4;
            }
        }
        for t in t..len {
            for i in 0..R {
                let s = hsum(key_lanes::<1>(qs.add(i * hd), k.add(t * hd), hd)[0]);
                *scores.add(i * len + t) = s * scale;
            }
        }
    }
}

/// `out` (R x `hd`) = for each head i, the sum over keys t of `p[i][t] * v[t]`, for values
/// `c..c + 8 W` of each row: R x W accumulators, each value vector loaded once for the R
/// heads. A lane's multiply-adds run in key order whatever R and W.
///
/// # Safety
/// AVX2 and FMA; `p` holds R x len probabilities, `v` len rows of hd values, `out` R x hd;
/// c + 8 W <= hd.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_values<const R: usize, const W: usize>(
    p: *const f32,
    v: *const f32,
    hd: usize,
    len: usize,
    c: usize,
    out: *mut f32,
) {
    // SAFETY: the caller upholds this function's contract.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); W]; R];
        for t in 0..len {
            // Formed per key (not stepped past the last row, which `add` does not allow).
            let row = v.add(t * hd + c);
            let pt: [__m256; R] = std::array::from_fn(|i| _mm256_set1_ps(*p.add(i * len + t)));
            for w in 0..W {
                let vv = _mm256_loadu_ps(row.add(8 * w));
                for i in 0..R {
                    acc[i][w] = _mm256_fmadd_ps(pt[i], vv, acc[i][w]);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (w, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(i * hd + c + 8 * w), *acc);
            }
        }
    }
}

/// [`head_values`] over all of a head's values: chunks of 8 W_MAX values (64 for one head,
/// 32 for several), then the rest.
///
/// # Safety
/// As [`head_values`]'s.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn all_head_values<const R: usize>(
    p: *const f32,
    v: *const f32,
    hd: usize,
    len: usize,
    out: *mut f32,
) {
    // SAFETY: the caller upholds this function's contract; each chunk ends inside hd.
    unsafe {
        let widest = if R == 1 { 8 } else { 4 };
        let mut c = 0;
        while c < hd {
            let width = ((hd - c) / 8).min(widest);
            match width {
                8 => head_values::<R, 8>(p, v, hd, len, c, out),
                4 => head_values::<R, 4>(p, v, hd, len, c, out),
                3 => head_values::<R, 3>(p, v, hd, len, c, out),
                2 => head_values::<R, 2>(p, v, hd, len, c, out),
                1 => head_values::<R, 1>(p, v, hd, len, c, out),
                // 5 to 7 (one head, hd not a multiple of 64): four, then the rest.
                _ => {
                    head_values::<R, 4>(p, v, hd, len, c, out);
                    c += 32;
                    continue;
                }
            }
            c += 8 * width;
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
        let (qp, kp, vp) = (qs.as_ptr(), k.as_ptr(), v.as_ptr());
        let (sp, op) = (scores.as_mut_ptr(), out.as_mut_ptr());
        let mut h = 0;
        while h < heads {
            let r = (heads - h).min(HEADS_AT_ONCE);
            let (q, s) = (qp.add(h * hd), sp.add(h * len));
            match r {
                3 => head_scores::<3>(q, kp, hd, len, scale, s),
                2 => head_scores::<2>(q, kp, hd, len, scale, s),
                _ => head_scores::<1>(q, kp, hd, len, scale, s),
            }
            h += r;
        }
        for p in scores.chunks_exact_mut(len) {
            softmax(p, f16_probs);
        }
        let mut h = 0;
        while h < heads {
            let r = (heads - h).min(HEADS_AT_ONCE);
            let (p, o) = (scores.as_ptr().add(h * len), op.add(h * hd));
            match r {
                3 => all_head_values::<3>(p, vp, hd, len, o),
                2 => all_head_values::<2>(p, vp, hd, len, o),
                _ => all_head_values::<1>(p, vp, hd, len, o),
            }
            h += r;
        }
    }
}
