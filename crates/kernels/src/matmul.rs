//! Quantized matrix products: y (m, n) = x (m, k) . W^T for W (n, k) stored as Q4_1 rows.
//! Activations are quantized to Q8_1 once per call; output rows are split across the
//! rayon pool in fixed chunks, and each dot product is summed in a fixed order, so results
//! do not depend on the thread count.

use rayon::prelude::*;

use crate::q4_1::{self, BLOCK_BYTES};
use crate::q8_1::{quantize_row_q8_1, BlockQ8_1, QK};

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// `y[t * n + o] = dot(W[o], x[t])` for Q4_1 weights `w` (n rows of k / 32 blocks).
/// Panics in debug builds if the sizes disagree; callers check shapes first.
pub fn matmul_q4_1(w: &[u8], n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32]) {
    debug_assert!(k % QK == 0 && w.len() == n * k / QK * BLOCK_BYTES);
    debug_assert!(x.len() == m * k && y.len() == m * n);
    let blocks = k / QK;
    let mut xq = vec![BlockQ8_1::default(); m * blocks];
    for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(blocks)) {
        quantize_row_q8_1(row, q);
    }
    let row_bytes = blocks * BLOCK_BYTES;
    if m == 1 {
        y.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(c, out)| {
                for (i, o) in out.iter_mut().enumerate() {
                    let r = c * ROWS_PER_TASK + i;
                    *o = q4_1::vec_dot(&w[r * row_bytes..(r + 1) * row_bytes], &xq);
                }
            });
        return;
    }
    // (n, m), transposed at the end: each task owns whole output rows.
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(c, out)| {
            for (i, row_out) in out.chunks_exact_mut(m).enumerate() {
                let r = c * ROWS_PER_TASK + i;
                let wr = &w[r * row_bytes..(r + 1) * row_bytes];
                let x_row = |t: usize| &xq[t * blocks..(t + 1) * blocks];
                let mut t = 0;
                while t + 4 <= m {
                    let sums =
                        q4_1::vec_dot_x4(wr, [x_row(t), x_row(t + 1), x_row(t + 2), x_row(t + 3)]);
                    row_out[t..t + 4].copy_from_slice(&sums);
                    t += 4;
                }
                for (t, o) in row_out.iter_mut().enumerate().skip(t) {
                    *o = q4_1::vec_dot(wr, x_row(t));
                }
            }
        });
    for o in 0..n {
        for t in 0..m {
            y[t * n + o] = yt[o * m + t];
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn matmul_matches_row_by_row_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for &(n, k, m) in &[
            (1, 32, 1),
            (37, 64, 1),
            (50, 96, 3),
            (17, 576, 9),
            (33, 64, 4),
            (20, 64, 8),
        ] {
            let w: Vec<u8> = (0..n * k / 32)
                .flat_map(|_| {
                    let mut b = half::f16::from_f32(rng.random_range(0.0..0.1))
                        .to_le_bytes()
                        .to_vec();
                    b.extend(half::f16::from_f32(rng.random_range(-0.5..0.0)).to_le_bytes());
                    b.extend((0..16).map(|_| rng.random::<u8>()));
                    b
                })
                .collect();
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
            let mut y = vec![0f32; m * n];
            matmul_q4_1(&w, n, k, &x, m, &mut y);
            let rb = k / 32 * BLOCK_BYTES;
            for t in 0..m {
                let mut xq = vec![BlockQ8_1::default(); k / 32];
                quantize_row_q8_1(&x[t * k..(t + 1) * k], &mut xq);
                for o in 0..n {
                    let want = q4_1::vec_dot_ref(&w[o * rb..(o + 1) * rb], &xq);
                    assert!(
                        (y[t * n + o] - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "({n},{k},{m}) [{t},{o}]"
                    );
                }
            }
        }
    }
}
