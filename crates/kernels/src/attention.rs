//! Attention of one new query token over a sequence's KV cache, fused into one pass per
//! head: scores, softmax and the weighted sum of values, with no intermediate tensors.
//! Generation runs this once per layer per sequence per token; done with a dozen small
//! tensor operations it cost more than the matrix products of a batched decode step.
//!
//! Numerics follow llama.cpp's: the caller passes the query rounded to f16 (as K and V are
//! stored), and the softmax probabilities are rounded to f16 before they weight the values.

use half::f16;

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
    let hd = h.head_dim;
    let n_rep = h.n_head / h.n_kv_head.max(1);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; h.n_head * hd];
    let mut scores = vec![0f32; len];
    for (head, out_h) in out.chunks_exact_mut(hd).enumerate() {
        let g = head / n_rep.max(1);
        let q_h = &q[head * hd..(head + 1) * hd];
        let row = |t: usize| (g * cap + t) * hd..(g * cap + t + 1) * hd;
        for (t, s) in scores.iter_mut().enumerate() {
            *s = dot(q_h, &k[row(t)]) * scale;
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for (t, &e) in scores.iter().enumerate() {
            let p = f16::from_f32(e / sum).to_f32();
            for (o, &x) in out_h.iter_mut().zip(&v[row(t)]) {
                *o += p * x;
            }
        }
    }
    out
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
