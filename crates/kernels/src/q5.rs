//! Q5_0 and Q5_1 weights (ggml `block_q5_0`: f16 scale d, 32 high bits qh, 16 bytes of
//! nibbles, value j = d * (q_j - 16); `block_q5_1`: f16 d and minimum m, then the same,
//! value j = d * q_j + m; q_j = nibble | bit j of qh << 4, low nibbles holding values 0..16
//! and high nibbles 16..32) dotted with 8-bit activations, summed as ggml does: exact
//! integers per block, then d_w * d_x (Q5_0 subtracting 16 x the block's activation sum,
//! Q5_1 adding m_w * s_x). The plain references of the row-major layout; the fast kernels
//! work on repacked rows (`crate::packed`).

use half::f16;

use crate::q8_1::{BlockQ8_1, QK};

/// Bytes per Q5_0 block.
pub const BLOCK_BYTES_Q5_0: usize = 22;
/// Bytes per Q5_1 block.
pub const BLOCK_BYTES_Q5_1: usize = 24;

/// The 32 five-bit values (0..32) of a block whose high bits start at byte `qh_at`.
pub fn values(block: &[u8], qh_at: usize) -> [i32; QK] {
    let qh = u32::from_le_bytes([
        block[qh_at],
        block[qh_at + 1],
        block[qh_at + 2],
        block[qh_at + 3],
    ]);
    let qs = &block[qh_at + 4..qh_at + 20];
    std::array::from_fn(|j| {
        let nibble = if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        };
        i32::from(nibble) | (((qh >> j) & 1) << 4) as i32
    })
}

fn half(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// Plain reference: one row of Q5_0 blocks dotted with 8-bit activations.
pub fn vec_dot_ref_q5_0(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (block, xb) in w.chunks_exact(BLOCK_BYTES_Q5_0).zip(x) {
        let q = values(block, 2);
        let sumi: i32 = q
            .iter()
            .zip(&xb.qs)
            .map(|(&q, &a)| (q - 16) * i32::from(a))
            .sum();
        sum += half(block, 0) * xb.d * sumi as f32;
    }
    sum
}

/// Plain reference: one row of Q5_1 blocks dotted with Q8_1 activations.
pub fn vec_dot_ref_q5_1(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (block, xb) in w.chunks_exact(BLOCK_BYTES_Q5_1).zip(x) {
        let q = values(block, 4);
        let sumi: i32 = q.iter().zip(&xb.qs).map(|(&q, &a)| q * i32::from(a)).sum();
        sum += half(block, 0) * xb.d * sumi as f32 + half(block, 2) * xb.s;
    }
    sum
}

/// One block dequantized (32 values); `with_min` for Q5_1.
pub fn dequantize_block(block: &[u8], with_min: bool, out: &mut [f32]) {
    let d = half(block, 0);
    if with_min {
        let m = half(block, 2);
        for (o, q) in out.iter_mut().zip(values(block, 4)) {
            *o = d * q as f32 + m;
        }
    } else {
        for (o, q) in out.iter_mut().zip(values(block, 2)) {
            *o = d * (q - 16) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::q8_1::quantize_row_q8_1;

    #[test]
    fn values_follow_ggml_layout() {
        // Value j takes bit j of qh as its fifth bit: value 3 from qs[3]'s low nibble,
        // value 19 from its high nibble and bit 19.
        let mut block = [0u8; BLOCK_BYTES_Q5_0];
        block[2..6].copy_from_slice(&((1u32 << 3) | (1 << 19)).to_le_bytes());
        block[6 + 3] = 0x52;
        let q = values(&block, 2);
        assert_eq!((q[3], q[19], q[4]), (0x12, 0x15, 0));
    }

    #[test]
    fn references_equal_dequantized_dots() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let xf: Vec<f32> = (0..64).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut x = vec![BlockQ8_1::default(); 2];
        quantize_row_q8_1(&xf, &mut x);
        for with_min in [false, true] {
            let bb = if with_min {
                BLOCK_BYTES_Q5_1
            } else {
                BLOCK_BYTES_Q5_0
            };
            let mut w = Vec::new();
            for _ in 0..2 {
                w.extend(f16::from_f32(rng.random_range(0.0..0.1)).to_le_bytes());
                if with_min {
                    w.extend(f16::from_f32(rng.random_range(-0.5..0.0)).to_le_bytes());
                }
                w.extend((0..20).map(|_| rng.random::<u8>()));
            }
            let mut exact = 0f64;
            let mut vals = [0f32; QK];
            for (block, xb) in w.chunks(bb).zip(&x) {
                dequantize_block(block, with_min, &mut vals);
                for (v, &q) in vals.iter().zip(&xb.qs) {
                    exact += f64::from(*v) * f64::from(xb.d) * f64::from(q);
                }
            }
            let got = if with_min {
                vec_dot_ref_q5_1(&w, &x)
            } else {
                vec_dot_ref_q5_0(&w, &x)
            };
            // Q5_1's s is rounded through f16, so the two differ by that rounding.
            let got = f64::from(got);
            assert!((got - exact).abs() < 2e-2, "{with_min}: {got} vs {exact}");
        }
    }
}
