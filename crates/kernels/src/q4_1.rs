//! Q4_1 weights (ggml `block_q4_1`: f16 scale d, f16 minimum m, 16 bytes of nibbles; value
//! j is d * q_j + m, low nibbles holding values 0..16 and high nibbles 16..32) dotted with
//! Q8_1 activations: sum = d_w * d_x * sum(q_w * q_x) + m_w * s_x. The plain reference of
//! the row-major layout; the fast kernels work on repacked rows (`crate::packed`).

use half::f16;

use crate::q8_1::BlockQ8_1;

/// Bytes per Q4_1 block.
pub const BLOCK_BYTES: usize = 20;

fn scales(block: &[u8]) -> (f32, f32) {
    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
    let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
    (d, m)
}

/// Plain reference: the dot product of one row of Q4_1 blocks with Q8_1 activations.
pub fn vec_dot_ref(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (block, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
        let (d, m) = scales(block);
        let qs = &block[4..];
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (qs[j] & 0x0F) as i32 * xb.qs[j] as i32;
            sumi += (qs[j] >> 4) as i32 * xb.qs[j + 16] as i32;
        }
        sum += d * xb.d * sumi as f32 + m * xb.s;
    }
    sum
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::q8_1::quantize_row_q8_1;

    fn random_row(rng: &mut rand::rngs::StdRng, blocks: usize, scale: f32) -> Vec<u8> {
        let mut w = Vec::with_capacity(blocks * BLOCK_BYTES);
        for _ in 0..blocks {
            w.extend_from_slice(&f16::from_f32(rng.random_range(-1.0..1.0) * scale).to_le_bytes());
            w.extend_from_slice(&f16::from_f32(rng.random_range(-1.0..1.0) * scale).to_le_bytes());
            w.extend((0..16).map(|_| rng.random::<u8>()));
        }
        w
    }

    #[test]
    fn reference_equals_dequantized_dot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let w = random_row(&mut rng, 2, 1.0);
        let xf: Vec<f32> = (0..64).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut x = vec![BlockQ8_1::default(); 2];
        quantize_row_q8_1(&xf, &mut x);
        let mut exact = 0f32;
        for (b, (block, xb)) in w.chunks(BLOCK_BYTES).zip(&x).enumerate() {
            let (d, m) = scales(block);
            for j in 0..32 {
                let q = if j < 16 {
                    block[4 + j] & 0x0F
                } else {
                    block[4 + j - 16] >> 4
                };
                exact += (d * q as f32 + m) * (xb.qs[j] as f32 * xb.d);
                let _ = b;
            }
        }
        // s is rounded through f16, so the two differ by that rounding only.
        assert!(
            (exact - vec_dot_ref(&w, &x)).abs() < 2e-2,
            "{exact} {}",
            vec_dot_ref(&w, &x)
        );
    }
}
