//! Q8_0 weights (ggml `block_q8_0`: f16 scale d, 32 signed bytes; value j is d * q_j)
//! dotted with 8-bit activations: sum = d_w * d_x * sum(q_w * q_x). The activations are
//! Q8_1 blocks, whose scale and bytes are exactly ggml's Q8_0 quantization (Q8_1 only
//! adds the block sum, unused here).
//!
//! Q4_0 blocks (`crate::q4_0`) differ only in how the 32 values are stored (nibbles, value
//! q - 8), so the reference here is generic over `NIBBLES`: the nibbles are widened to
//! signed bytes and then go through the same integer products, exactly as Q8_0 values.
//! This is the plain reference of the row-major layout; the fast kernels work on repacked
//! rows (`crate::packed`).

use half::f16;

use crate::q8_1::BlockQ8_1;

/// Bytes per Q8_0 block.
pub const BLOCK_BYTES: usize = block_bytes(false);

/// Bytes per block: the f16 scale, then 32 bytes or 16 bytes of nibbles.
pub(crate) const fn block_bytes(nibbles: bool) -> usize {
    if nibbles {
        18
    } else {
        34
    }
}

fn scale(block: &[u8]) -> f32 {
    f16::from_le_bytes([block[0], block[1]]).to_f32()
}

/// The 32 signed values of a block (low nibbles are values 0..16, high nibbles 16..32).
fn values<const NIBBLES: bool>(block: &[u8]) -> [i8; 32] {
    let mut q = [0i8; 32];
    if NIBBLES {
        for j in 0..16 {
            q[j] = (block[2 + j] & 0x0F) as i8 - 8;
            q[j + 16] = (block[2 + j] >> 4) as i8 - 8;
        }
    } else {
        for (q, &b) in q.iter_mut().zip(&block[2..34]) {
            *q = b as i8;
        }
    }
    q
}

/// Plain reference for either layout.
pub(crate) fn dot_ref<const NIBBLES: bool>(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (block, xb) in w.chunks_exact(block_bytes(NIBBLES)).zip(x) {
        let sumi: i32 = values::<NIBBLES>(block)
            .iter()
            .zip(&xb.qs)
            .map(|(&q, &a)| i32::from(q) * i32::from(a))
            .sum();
        sum += scale(block) * xb.d * sumi as f32;
    }
    sum
}

/// Plain reference: the dot product of one row of Q8_0 blocks with 8-bit activations.
pub fn vec_dot_ref(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    dot_ref::<false>(w, x)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::q8_1::quantize_row_q8_1;

    /// A Q8_0 row of `blocks` blocks with random scales and bytes, including -128.
    fn weights(rng: &mut impl Rng, blocks: usize, scale: f32) -> Vec<u8> {
        let mut w = Vec::new();
        for b in 0..blocks {
            w.extend(f16::from_f32(rng.random_range(0.0..scale)).to_le_bytes());
            for j in 0..32 {
                let q: i8 = if (b + j) % 17 == 0 {
                    -128
                } else {
                    rng.random()
                };
                w.push(q as u8);
            }
        }
        w
    }

    #[test]
    fn reference_equals_the_dequantized_dot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let w = weights(&mut rng, 3, 1.0);
        let xf: Vec<f32> = (0..96).map(|_| rng.random_range(-3.0..3.0)).collect();
        let mut x = vec![BlockQ8_1::default(); 3];
        quantize_row_q8_1(&xf, &mut x);
        let mut exact = 0f64;
        for (block, xb) in w.chunks(BLOCK_BYTES).zip(&x) {
            let d = f64::from(scale(block));
            for j in 0..32 {
                exact += d * f64::from(block[2 + j] as i8) * f64::from(xb.qs[j]) * f64::from(xb.d);
            }
        }
        let got = f64::from(vec_dot_ref(&w, &x));
        assert!(
            (exact - got).abs() <= 1e-5 * exact.abs().max(1.0),
            "{exact} {got}"
        );
    }
}
