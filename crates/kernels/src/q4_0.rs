//! Q4_0 weights (ggml `block_q4_0`: f16 scale d, 16 bytes of nibbles; value j is
//! d * (q_j - 8), low nibbles holding values 0..16 and high nibbles 16..32) dotted with
//! 8-bit activations: sum = d_w * d_x * sum((q_w - 8) * q_x), in integers, as ggml does
//! (not through the Q8_1 block sum, which is rounded to f16). The plain reference is Q8_0's
//! with the nibbles widened to signed bytes (`crate::q8_0`); the fast kernels work on
//! repacked rows (`crate::packed`).

use crate::q8_0::{block_bytes, dot_ref};
use crate::q8_1::BlockQ8_1;

/// Bytes per Q4_0 block.
pub const BLOCK_BYTES: usize = block_bytes(true);

/// Plain reference: the dot product of one row of Q4_0 blocks with 8-bit activations.
pub fn vec_dot_ref(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    dot_ref::<true>(w, x)
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
