//! Attention of one new query token over a sequence's KV cache, fused into one pass per
//! head: scores, softmax and the weighted sum of values, with no intermediate tensors.
//! Generation runs this once per layer per sequence per token; done with a dozen small
//! tensor operations it cost more than the matrix products of a batched decode step.
//!
//! Numerics follow llama.cpp's: the caller passes the query rounded to f16 (as K and V are
//! stored), and the softmax probabilities are rounded to f16 before they weight the values.
//! [`Probabilities::F32`] keeps them in f32 instead, for a cache kept in f32, where the
//! inference path must compute what the training path computes.

use half::f16;
use rayon::prelude::*;

/// Shapes of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_head: usize,
    /// Key/value heads; each serves `n_head / n_kv_head` consecutive query heads.
    pub n_kv_head: usize,
    pub head_dim: usize,
}

/// `q` (n_head * head_dim) attends over positions `0..len` of `k` and `v`, laid out
/// (n_kv_head, cap, head_dim) as the KV cache stores them. Returns (n_head * head_dim).
pub fn decode_attention(
    h: Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    len: usize,
    cap: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; h.n_head * h.head_dim];
    decode_attention_into(h, q, k, v, len, cap, &mut out);
    out
}

/// How the softmax probabilities weight the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Probabilities {
    /// Rounded to f16 first, as llama.cpp does.
    #[default]
    F16,
    /// As computed, in f32.
    F32,
}

/// [`decode_attention`] into `out` (n_head * head_dim values).
pub fn decode_attention_into(
    h: Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    len: usize,
    cap: usize,
    out: &mut [f32],
) {
    decode_attention_with(h, Probabilities::F16, q, k, v, len, cap, out)
}

/// [`decode_attention_into`] with the probabilities in `probs`' precision.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention_with(
    h: Heads,
    probs: Probabilities,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    len: usize,
    cap: usize,
    out: &mut [f32],
) {
    let hd = h.head_dim;
    let head = |head: usize, out_h: &mut [f32], scores: &mut Vec<f32>| {
        let q_h = &q[head * hd..(head + 1) * hd];
        attend_one_head(h, probs, q_h, k, v, head, len, cap, scores, out_h);
    };
    // Heads are independent: over a long cache (a decode step late in a conversation) they
    // are shared among threads; a head's result is the same either way.
    if len * h.n_head >= PARALLEL_HEADS_FROM {
        out.par_chunks_exact_mut(hd)
            .enumerate()
            .for_each_init(Vec::new, |scores, (i, out_h)| head(i, out_h, scores));
    } else {
        let mut scores = Vec::with_capacity(len);
        for (i, out_h) in out.chunks_exact_mut(hd).enumerate() {
            head(i, out_h, &mut scores);
        }
    }
}

/// Head `head` of [`decode_attention_with`] alone: its query `q_h` (head_dim values) over
/// the first `len` positions of its KV head, into `out_h` (head_dim values), with `scores`
/// as scratch (resized to `len`; reserve it once and this allocates nothing). The bits of
/// that head's part of the whole call.
#[allow(clippy::too_many_arguments)]
pub fn attend_one_head(
    h: Heads,
    probs: Probabilities,
    q_h: &[f32],
    k: &[f32],
    v: &[f32],
    head: usize,
    len: usize,
    cap: usize,
    scores: &mut Vec<f32>,
    out_h: &mut [f32],
) {
    let n_rep = (h.n_head / h.n_kv_head.max(1)).max(1);
    attend_group(h, probs, q_h, k, v, head / n_rep, len, cap, scores, out_h);
}

/// Query heads of KV head `group` together: `q_g` holds some of the heads that share it
/// (head_dim values each, any number), `out_g` receives as many. Each head's bits are those
/// of [`attend_one_head`]; together they read the keys and values from memory once per block
/// of rows instead of once per head. `scores` is resized to heads x `len`.
#[allow(clippy::too_many_arguments)]
pub fn attend_group(
    h: Heads,
    probs: Probabilities,
    q_g: &[f32],
    k: &[f32],
    v: &[f32],
    group: usize,
    len: usize,
    cap: usize,
    scores: &mut Vec<f32>,
    out_g: &mut [f32],
) {
    let f16_probs = probs == Probabilities::F16;
    let hd = h.head_dim;
    let scale = 1.0 / (hd as f32).sqrt();
    // The vector kernel writes heads x hd values and reads len rows: shapes are the caller's
    // contract, checked here so a wrong one panics instead of writing past a buffer.
    assert!(
        hd > 0 && q_g.len().is_multiple_of(hd) && out_g.len() == q_g.len(),
        "attention: {} query and {} output values for head_dim {hd}",
        q_g.len(),
        out_g.len()
    );
    let heads = q_g.len() / hd;
    if len == 0 {
        out_g.fill(0.0);
        return;
    }
    scores.resize(heads * len, 0.0);
    assert!(
        len <= cap,
        "attention over {len} positions of a cache of {cap}"
    );
    let rows = group * cap * hd..(group * cap + len) * hd;
    let (k, v) = (&k[rows.clone()], &v[rows]);
    #[cfg(target_arch = "x86_64")]
    {
        if hd.is_multiple_of(8) && crate::avx2_available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above); k and v
            // hold len rows of hd values, hd a multiple of 8; scores holds heads x len.
            unsafe { avx2::attend_heads(q_g, k, v, hd, scale, f16_probs, scores, out_g) };
            return;
        }
    }
    for ((q, out), scores) in q_g
        .chunks_exact(hd)
        .zip(out_g.chunks_exact_mut(hd))
        .zip(scores.chunks_exact_mut(len.max(1)))
    {
        attend_head(q, k, v, scale, f16_probs, &mut scores[..len], out);
    }
}

/// Keys times heads from which one query row's heads run in parallel.
const PARALLEL_HEADS_FROM: usize = 4096;

/// One head, portable: `k` and `v` hold scores.len() rows of q.len() values.
fn attend_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    f16_probs: bool,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    for (s, k_t) in scores.iter_mut().zip(k.chunks_exact(hd)) {
        *s = dot(q, k_t) * scale;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (&e, v_t) in scores.iter().zip(v.chunks_exact(hd)) {
        let p = if f16_probs {
            f16::from_f32(e / sum).to_f32()
        } else {
            e / sum
        };
        for (o, &x) in out.iter_mut().zip(v_t) {
            *o += p * x;
        }
    }
}

/// A dot product with eight independent partial sums, which the compiler turns into
/// vector instructions (a single running sum would force one add at a time).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Plain reference: the textbook formula per head, in f64 (tests).
pub fn decode_attention_reference(
    h: Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    len: usize,
    cap: usize,
) -> Vec<f32> {
    let hd = h.head_dim;
    let n_rep = h.n_head / h.n_kv_head;
    let mut out = Vec::with_capacity(h.n_head * hd);
    for head in 0..h.n_head {
        let g = head / n_rep;
        let at = |m: &[f32], t: usize, d: usize| f64::from(m[(g * cap + t) * hd + d]);
        let s: Vec<f64> = (0..len)
            .map(|t| {
                (0..hd)
                    .map(|d| f64::from(q[head * hd + d]) * at(k, t, d))
                    .sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        for d in 0..hd {
            let o: f64 = (0..len).map(|t| (s[t] - m).exp() / z * at(v, t, d)).sum();
            out.push(o as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    #[test]
    fn matches_reference_on_odd_shapes_and_scales() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for &(n_head, n_kv_head, head_dim, len, cap, scale) in &[
            (1, 1, 8, 1, 1, 1.0),
            (9, 3, 64, 37, 50, 1.0),
            (4, 1, 12, 5, 9, 4.0),
            (8, 8, 7, 100, 100, 0.01),
            (6, 2, 64, 3, 10, 30.0),
            (9, 3, 64, 300, 301, 2.0),
            (2, 2, 16, 17, 17, 1.0),
            (9, 3, 64, 1000, 1000, 1.0),
        ] {
            let h = Heads {
                n_head,
                n_kv_head,
                head_dim,
            };
            let q = random(&mut rng, n_head * head_dim, scale);
            let k = random(&mut rng, n_kv_head * cap * head_dim, scale);
            let v = random(&mut rng, n_kv_head * cap * head_dim, 1.0);
            let got = decode_attention(h, &q, &k, &v, len, cap);
            let want = decode_attention_reference(h, &q, &k, &v, len, cap);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                // Probabilities are rounded to f16 (relative 2^-11) as llama.cpp does.
                assert!(
                    (a - b).abs() <= 2e-3 * (1.0 + b.abs()),
                    "{n_head}/{len} #{i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn f32_probabilities_match_the_reference_to_f32_precision() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        for &(n_head, n_kv_head, head_dim, len, cap) in
            &[(9, 3, 64, 37, 50), (4, 1, 12, 5, 9), (2, 2, 16, 300, 300)]
        {
            let h = Heads {
                n_head,
                n_kv_head,
                head_dim,
            };
            let q = random(&mut rng, n_head * head_dim, 2.0);
            let k = random(&mut rng, n_kv_head * cap * head_dim, 2.0);
            let v = random(&mut rng, n_kv_head * cap * head_dim, 1.0);
            let mut got = vec![0f32; n_head * head_dim];
            decode_attention_with(h, Probabilities::F32, &q, &k, &v, len, cap, &mut got);
            let want = decode_attention_reference(h, &q, &k, &v, len, cap);
            let rounded = decode_attention(h, &q, &k, &v, len, cap);
            let err = |x: &[f32]| {
                x.iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
            };
            // f32 probabilities: within a few f32 roundings of the f64 reference, and far
            // closer than the f16-rounded ones (which would fail this bound).
            assert!(err(&got) < 2e-6, "{n_head}/{len}: {}", err(&got));
            assert!(
                err(&got) * 10.0 < err(&rounded),
                "{} vs {}",
                err(&got),
                err(&rounded)
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_two_ulp() {
        if !crate::simd_test_runs("vector_exp_is_within_two_ulp") {
            return;
        }
        use std::arch::x86_64::*;
        let xs: Vec<f32> = (0..=100_000)
            .map(|i| -(i as f32) * 87.0 / 100_000.0)
            .collect();
        for x in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: AVX2 and FMA are present (checked above).
            unsafe {
                let e = avx2::exp_nonpositive(_mm256_loadu_ps(x.as_ptr()));
                _mm256_storeu_ps(got.as_mut_ptr(), e);
            }
            for (&x, &g) in x.iter().zip(&got) {
                let want = x.exp();
                let ulps = (g.to_bits() as i64 - want.to_bits() as i64).abs();
                assert!(ulps <= 2, "exp({x}) = {g}, want {want}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn eight_key_sums_equal_one_key_sums_bit_for_bit() {
        if !crate::simd_test_runs("eight_key_sums_equal_one_key_sums_bit_for_bit") {
            return;
        }
        use std::arch::x86_64::*;
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        for round in 0..2000 {
            // Magnitudes spread over many binades, so a changed order would round differently.
            let lanes: Vec<f32> = (0..64)
                .map(|_| rng.random_range(-1.0f32..1.0) * 2f32.powi(rng.random_range(-20..20)))
                .collect();
            // SAFETY: AVX2 and FMA are present (checked above); every load reads 8 values.
            unsafe {
                let v: [__m256; 8] =
                    std::array::from_fn(|j| _mm256_loadu_ps(lanes.as_ptr().add(8 * j)));
                let mut all = [0f32; 8];
                _mm256_storeu_ps(all.as_mut_ptr(), avx2::hsum8(&v));
                let mut four = [0f32; 8];
                _mm_storeu_ps(four.as_mut_ptr(), avx2::hsum4(&[v[0], v[1], v[2], v[3]]));
                _mm_storeu_ps(
                    four.as_mut_ptr().add(4),
                    avx2::hsum4(&[v[4], v[5], v[6], v[7]]),
                );
                for (j, chunk) in lanes.chunks_exact(8).enumerate() {
                    let one = avx2::hsum(v[j]);
                    assert_eq!(four[j].to_bits(), one.to_bits(), "round {round} key {j}");
                    assert_eq!(all[j].to_bits(), one.to_bits(), "round {round} key {j}");
                    let tree = ((chunk[0] + chunk[1]) + (chunk[2] + chunk[3]))
                        + ((chunk[4] + chunk[5]) + (chunk[6] + chunk[7]));
                    assert_eq!(one.to_bits(), tree.to_bits(), "round {round} key {j}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_key_scores_the_same_alone_and_in_a_block_of_eight() {
        if !crate::simd_test_runs("a_key_scores_the_same_alone_and_in_a_block_of_eight") {
            return;
        }
        use std::arch::x86_64::*;
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        for hd in [8, 64, 128] {
            let q = random(&mut rng, hd, 2.0);
            let k = random(&mut rng, 8 * hd, 2.0);
            // SAFETY: AVX2 and FMA are present (checked above); k holds 8 rows of hd values.
            unsafe {
                let block = avx2::hsum8(&avx2::key_lanes::<8>(q.as_ptr(), k.as_ptr(), hd));
                let mut got = [0f32; 8];
                _mm256_storeu_ps(got.as_mut_ptr(), block);
                for (j, got) in got.iter().enumerate() {
                    let alone =
                        avx2::hsum(avx2::key_lanes::<1>(q.as_ptr(), k[j * hd..].as_ptr(), hd)[0]);
                    assert_eq!(got.to_bits(), alone.to_bits(), "hd {hd} key {j}");
                }
            }
        }
    }

    #[test]
    fn simd_heads_match_portable_heads() {
        if !crate::simd_test_runs("simd_heads_match_portable_heads") {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for &(hd, len, scale) in &[
            (8, 1, 1.0),
            (64, 37, 3.0),
            (64, 8, 0.1),
            (32, 200, 10.0),
            (128, 9, 1.0),
        ] {
            let q = random(&mut rng, hd, scale);
            let k = random(&mut rng, len * hd, scale);
            let v = random(&mut rng, len * hd, 1.0);
            let (mut s1, mut s2) = (vec![0f32; len], vec![0f32; len]);
            let (mut o1, mut o2) = (vec![0f32; hd], vec![0f32; hd]);
            let sc = 1.0 / (hd as f32).sqrt();
            attend_head(&q, &k, &v, sc, true, &mut s1, &mut o1);
            #[cfg(target_arch = "x86_64")]
            if crate::avx2_available() {
                // SAFETY: AVX2, FMA and F16C are present; hd is a multiple of 8.
                unsafe { avx2::attend_heads(&q, &k, &v, hd, sc, true, &mut s2, &mut o2) };
                for (a, b) in o1.iter().zip(&o2) {
                    // Sums in another order, exp within 2 ulp: a probability may round to
                    // the neighbouring f16 (2^-11 relative).
                    assert!(
                        (a - b).abs() <= 1e-3 * (1.0 + a.abs()),
                        "{hd}/{len}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_group_of_heads_equals_its_heads_one_by_one_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for (hd, n_rep) in [
            (64, 3),
            (8, 2),
            (24, 4),
            (128, 1),
            (48, 1),
            (40, 5),
            (56, 6),
        ] {
            for len in [1, 7, 8, 9, 31, 32, 33, 100, 513] {
                for probs in [Probabilities::F16, Probabilities::F32] {
                    let (n_kv_head, cap) = (2, 520);
                    let h = Heads {
                        n_head: n_kv_head * n_rep,
                        n_kv_head,
                        head_dim: hd,
                    };
                    let q = random(&mut rng, n_rep * hd, 2.0);
                    let k = random(&mut rng, n_kv_head * cap * hd, 2.0);
                    let v = random(&mut rng, n_kv_head * cap * hd, 1.0);
                    let mut scores = Vec::new();
                    let mut together = vec![f32::NAN; n_rep * hd];
                    attend_group(
                        h,
                        probs,
                        &q,
                        &k,
                        &v,
                        1,
                        len,
                        cap,
                        &mut scores,
                        &mut together,
                    );
                    for (i, q_h) in q.chunks_exact(hd).enumerate() {
                        let mut alone = vec![f32::NAN; hd];
                        let head = n_rep + i;
                        attend_one_head(
                            h,
                            probs,
                            q_h,
                            &k,
                            &v,
                            head,
                            len,
                            cap,
                            &mut scores,
                            &mut alone,
                        );
                        let bits = |x: &[f32]| x.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&alone),
                            bits(&together[i * hd..(i + 1) * hd]),
                            "hd {hd} n_rep {n_rep} len {len} {probs:?} head {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn heads_in_parallel_equal_heads_one_by_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let (n_head, n_kv_head, hd, len, cap) = (6, 2, 64, 900, 1000);
        assert!(len * n_head >= PARALLEL_HEADS_FROM);
        let q = random(&mut rng, n_head * hd, 1.0);
        let k = random(&mut rng, n_kv_head * cap * hd, 1.0);
        let v = random(&mut rng, n_kv_head * cap * hd, 1.0);
        let all = decode_attention(
            Heads {
                n_head,
                n_kv_head,
                head_dim: hd,
            },
            &q,
            &k,
            &v,
            len,
            cap,
        );
        for head in 0..n_head {
            let g = head / (n_head / n_kv_head);
            let one = Heads {
                n_head: 1,
                n_kv_head: 1,
                head_dim: hd,
            };
            let kv = g * cap * hd..(g + 1) * cap * hd;
            let alone = decode_attention(
                one,
                &q[head * hd..(head + 1) * hd],
                &k[kv.clone()],
                &v[kv],
                len,
                cap,
            );
            assert_eq!(alone, all[head * hd..(head + 1) * hd], "head {head}");
        }
    }

    #[test]
    fn zeros_give_the_mean_of_values_and_positions_past_len_are_ignored() {
        let h = Heads {
            n_head: 2,
            n_kv_head: 1,
            head_dim: 2,
        };
        let k = vec![0.0; 8];
        // Positions 0 and 1 hold (1, 2) and (3, 4); positions 2 and 3 hold garbage.
        let v = vec![1.0, 2.0, 3.0, 4.0, 1e9, 1e9, f32::NAN, f32::NAN];
        let out = decode_attention(h, &[0.0; 4], &k, &v, 2, 4);
        assert_eq!(out, [2.0, 3.0, 2.0, 3.0]);
    }
}
