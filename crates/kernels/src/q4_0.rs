//! Q4_0 weights (ggml `block_q4_0`: f16 scale d, 16 bytes of nibbles; value j is
//! d * (q_j - 8), low nibbles holding values 0..16 and high nibbles 16..32) dotted with
//! 8-bit activations: sum = d_w * d_x * sum((q_w - 8) * q_x), in integers, as ggml does
//! (not through the Q8_1 block sum, which is rounded to f16). The kernels are Q8_0's with
//! the nibbles widened to signed bytes (`crate::q8_0`).

use crate::q8_0::{block_bytes, dot, dot_ref, dot_x4};
use crate::q8_1::BlockQ8_1;

/// Bytes per Q4_0 block.
pub const BLOCK_BYTES: usize = block_bytes(true);

/// Plain reference: the dot product of one row of Q4_0 blocks with 8-bit activations.
pub fn vec_dot_ref(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    dot_ref::<true>(w, x)
}

/// The fastest dot product this CPU supports (AVX2 + FMA + F16C, else the reference).
pub fn vec_dot(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    dot::<true>(w, x)
}

/// Dot products of one weight row with four activation rows in one pass over the row.
pub fn vec_dot_x4(w: &[u8], xs: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    dot_x4::<true>(w, xs)
}

#[cfg(test)]
mod tests {
    use half::f16;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::q8_1::quantize_row_q8_1;

    fn weights(rng: &mut impl Rng, blocks: usize, scale: f32) -> Vec<u8> {
        let mut w = Vec::new();
        for b in 0..blocks {
            w.extend(f16::from_f32(rng.random_range(-1.0..1.0) * scale).to_le_bytes());
            // Every third block all 0x00 or 0xFF: values -8 and 7, the extremes.
            w.extend((0..16).map(|_| match b % 3 {
                1 => 0x00,
                2 => 0xFF,
                _ => rng.random::<u8>(),
            }));
        }
        w
    }

    fn activations(rng: &mut impl Rng, blocks: usize, amp: f32) -> Vec<BlockQ8_1> {
        let x: Vec<f32> = (0..blocks * 32)
            .map(|_| rng.random_range(-amp..=amp))
            .collect();
        let mut q = vec![BlockQ8_1::default(); blocks];
        quantize_row_q8_1(&x, &mut q);
        q
    }

    #[test]
    fn simd_matches_reference_and_four_rows_match_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for &(blocks, scale) in &[(1, 1.0), (3, 0.01), (18, 2.0), (37, 100.0), (5, 6e4)] {
            let w = weights(&mut rng, blocks, scale);
            let rows: Vec<Vec<BlockQ8_1>> = (0..4)
                .map(|r| activations(&mut rng, blocks, if r == 3 { 0.0 } else { 3.0 }))
                .collect();
            let four = vec_dot_x4(&w, [&rows[0], &rows[1], &rows[2], &rows[3]]);
            for (r, x) in rows.iter().enumerate() {
                let want = vec_dot_ref(&w, x);
                let one = vec_dot(&w, x);
                assert!(
                    (one - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{blocks}: {one} vs {want}"
                );
                assert_eq!(one, four[r], "{blocks} blocks, row {r}");
            }
        }
    }

    #[test]
    fn reference_equals_the_dequantized_dot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let w = weights(&mut rng, 3, 1.0);
        let x = activations(&mut rng, 3, 1.0);
        let mut exact = 0f64;
        for (block, xb) in w.chunks(BLOCK_BYTES).zip(&x) {
            let d = f16::from_le_bytes([block[0], block[1]]).to_f32() as f64;
            for j in 0..32 {
                let nib = if j < 16 {
                    block[2 + j] & 0x0F
                } else {
                    block[2 + j - 16] >> 4
                };
                exact += d * (nib as f64 - 8.0) * (xb.qs[j] as f64 * xb.d as f64);
            }
        }
        let got = vec_dot_ref(&w, &x) as f64;
        assert!(
            (exact - got).abs() <= 1e-5 * exact.abs().max(1.0),
            "{exact} {got}"
        );
    }
}
