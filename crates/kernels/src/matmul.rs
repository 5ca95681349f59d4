//! Quantized matrix products: y (m, n) = x (m, k) . W^T for W (n, k) stored as Q4_0, Q4_1
//! or Q8_0 rows.
//! Activations are quantized to Q8_1 once per call; output rows are split across the
//! rayon pool in fixed chunks, and each dot product is summed in a fixed order, so results
//! do not depend on the thread count.

use rayon::prelude::*;

use crate::q8_1::{quantize_row_q8_1, BlockQ8_1, QK};
use crate::{q4_0, q4_1, q8_0};

/// A weight format with 32-value blocks dotted with 8-bit activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl WeightFormat {
    /// Bytes per block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => q4_0::BLOCK_BYTES,
            Self::Q4_1 => q4_1::BLOCK_BYTES,
            Self::Q8_0 => q8_0::BLOCK_BYTES,
        }
    }

    fn dot(self, w: &[u8], x: &[BlockQ8_1]) -> f32 {
        match self {
            Self::Q4_0 => q4_0::vec_dot(w, x),
            Self::Q4_1 => q4_1::vec_dot(w, x),
            Self::Q8_0 => q8_0::vec_dot(w, x),
        }
    }

    fn dot_x4(self, w: &[u8], xs: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        match self {
            Self::Q4_0 => q4_0::vec_dot_x4(w, xs),
            Self::Q4_1 => q4_1::vec_dot_x4(w, xs),
            Self::Q8_0 => q8_0::vec_dot_x4(w, xs),
        }
    }
}

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// `y[t * n + o] = dot(W[o], x[t])` for Q4_1 weights `w` (n rows of k / 32 blocks).
pub fn matmul_q4_1(w: &[u8], n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32]) {
    matmul(WeightFormat::Q4_1, w, n, k, x, m, y)
}

/// `y[t * n + o] = dot(W[o], x[t])` for weights `w` in `format` (n rows of k / 32 blocks).
/// Panics in debug builds if the sizes disagree; callers check shapes first.
pub fn matmul(
    format: WeightFormat,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) {
    debug_assert!(k % QK == 0 && w.len() == n * k / QK * format.block_bytes());
    debug_assert!(x.len() == m * k && y.len() == m * n);
    let blocks = k / QK;
    let mut xq = vec![BlockQ8_1::default(); m * blocks];
    for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(blocks)) {
        quantize_row_q8_1(row, q);
    }
    let row_bytes = blocks * format.block_bytes();
    if m == 1 {
        y.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(c, out)| {
                for (i, o) in out.iter_mut().enumerate() {
                    let r = c * ROWS_PER_TASK + i;
                    *o = format.dot(&w[r * row_bytes..(r + 1) * row_bytes], &xq);
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
                        format.dot_x4(wr, [x_row(t), x_row(t + 1), x_row(t + 2), x_row(t + 3)]);
                    row_out[t..t + 4].copy_from_slice(&sums);
                    t += 4;
                }
                for (t, o) in row_out.iter_mut().enumerate().skip(t) {
                    *o = format.dot(wr, x_row(t));
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

    /// Random weights in `format`: n rows of k / 32 blocks.
    fn weights(rng: &mut impl Rng, format: WeightFormat, n: usize, k: usize) -> Vec<u8> {
        (0..n * k / 32)
            .flat_map(|_| {
                let mut b = half::f16::from_f32(rng.random_range(0.0..0.1))
                    .to_le_bytes()
                    .to_vec();
                match format {
                    WeightFormat::Q4_0 => b.extend((0..16).map(|_| rng.random::<u8>())),
                    WeightFormat::Q4_1 => {
                        b.extend(half::f16::from_f32(rng.random_range(-0.5..0.0)).to_le_bytes());
                        b.extend((0..16).map(|_| rng.random::<u8>()));
                    }
                    WeightFormat::Q8_0 => b.extend((0..32).map(|_| rng.random::<u8>())),
                }
                b
            })
            .collect()
    }

    #[test]
    fn matmul_matches_row_by_row_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for format in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0] {
            for &(n, k, m) in &[
                (1, 32, 1),
                (37, 64, 1),
                (50, 96, 3),
                (17, 576, 9),
                (33, 64, 4),
                (20, 64, 8),
            ] {
                let w = weights(&mut rng, format, n, k);
                let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
                let mut y = vec![0f32; m * n];
                matmul(format, &w, n, k, &x, m, &mut y);
                let rb = k / 32 * format.block_bytes();
                for t in 0..m {
                    let mut xq = vec![BlockQ8_1::default(); k / 32];
                    quantize_row_q8_1(&x[t * k..(t + 1) * k], &mut xq);
                    for o in 0..n {
                        let row = &w[o * rb..(o + 1) * rb];
                        let want = match format {
                            WeightFormat::Q4_0 => q4_0::vec_dot_ref(row, &xq),
                            WeightFormat::Q4_1 => q4_1::vec_dot_ref(row, &xq),
                            WeightFormat::Q8_0 => q8_0::vec_dot_ref(row, &xq),
                        };
                        assert!(
                            (y[t * n + o] - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{format:?} ({n},{k},{m}) [{t},{o}]"
                        );
                    }
                }
            }
        }
    }
}
