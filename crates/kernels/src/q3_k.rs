//! Q2_K and Q3_K weights, the 2- and 3-bit K-quants: 256 values in 16 sub-blocks of 16,
//! their low 2 bits in 64 bytes `qs` (value 128 n + 32 j + l, for n = 0..2, j = 0..4,
//! l = 0..32, in bits 2 j of qs[32 n + l]).
//! - ggml `block_q2_K` (84 bytes): 16 scale bytes (low 4 bits: scale, high 4: minimum),
//!   qs, f16 d and dmin; value i = d * sc * q_i - dmin * m.
//! - ggml `block_q3_K` (110 bytes): 32 bytes `hmask` (value 128 n + 32 j + l has its third
//!   bit in bit 4 n + j of hmask[l]), qs, 12 bytes of 6-bit scales, f16 d; value i =
//!   d * (sc - 32) * (q_i - 4) with q_i in 0..8.
//!
//! Dotted with Q8_K activations, summed as ggml does: exact integers per block, then d_x x d
//! (and, for Q2_K, minus d_x x dmin x sum(m x activation sums)). The plain references of the
//! row-major layouts; the fast kernels work on repacked rows (`crate::packed_k`).

use half::f16;

use crate::q8_k::{BlockQ8K, QK_K};

/// Bytes per Q2_K block.
pub const BLOCK_BYTES_Q2_K: usize = 84;
/// Bytes per Q3_K block.
pub const BLOCK_BYTES_Q3_K: usize = 110;

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The low 2 bits of the 256 values, from the 64 bytes of `qs`.
fn crumbs(qs: &[u8]) -> [u8; QK_K] {
    std::array::from_fn(|i| {
        let (n, j, l) = (i / 128, i % 128 / 32, i % 32);
        (qs[32 * n + l] >> (2 * j)) & 3
    })
}

/// A Q2_K block: (d, dmin, scales, minimums, values 0..4).
pub fn q2_k_parts(block: &[u8]) -> (f32, f32, [u8; 16], [u8; 16], [u8; QK_K]) {
    (
        half(block, 80),
        half(block, 82),
        std::array::from_fn(|j| block[j] & 0x0F),
        std::array::from_fn(|j| block[j] >> 4),
        crumbs(&block[16..80]),
    )
}

/// A Q3_K block: (d, scales - 32, values 0..8, to be taken minus 4).
pub fn q3_k_parts(block: &[u8]) -> (f32, [i8; 16], [u8; QK_K]) {
    let hmask = &block[..32];
    let s = &block[96..108];
    let scales = std::array::from_fn(|i| {
        let low = (s[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    });
    let mut q = crumbs(&block[32..96]);
    for (i, q) in q.iter_mut().enumerate() {
        let (n, j, l) = (i / 128, i % 128 / 32, i % 32);
        *q |= ((hmask[l] >> (4 * n + j)) & 1) << 2;
    }
    (half(block, 108), scales, q)
}

/// One Q2_K block dequantized (256 values).
pub fn dequantize_block_q2_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin, sc, m, q) = q2_k_parts(block);
    for (i, o) in out.iter_mut().enumerate().take(QK_K) {
        *o = d * f32::from(sc[i / 16]) * f32::from(q[i]) - dmin * f32::from(m[i / 16]);
    }
}

/// One Q3_K block dequantized (256 values).
pub fn dequantize_block_q3_k(block: &[u8], out: &mut [f32]) {
    let (d, sc, q) = q3_k_parts(block);
    for (i, o) in out.iter_mut().enumerate().take(QK_K) {
        *o = d * f32::from(sc[i / 16]) * (i32::from(q[i]) - 4) as f32;
    }
}

/// Plain reference: one row of Q2_K blocks dotted with Q8_K activations.
pub fn vec_dot_ref_q2_k(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (block, xb) in w.chunks_exact(BLOCK_BYTES_Q2_K).zip(x) {
        let (d, dmin, sc, m, q) = q2_k_parts(block);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..16 {
            let dot: i32 = (16 * j..16 * j + 16)
                .map(|i| i32::from(q[i]) * i32::from(xb.qs[i]))
                .sum();
            sumi += i32::from(sc[j]) * dot;
            summ += i32::from(m[j]) * i32::from(xb.bsums[j]);
        }
        sum += xb.d * d * sumi as f32 - xb.d * dmin * summ as f32;
    }
    sum
}

/// Plain reference: one row of Q3_K blocks dotted with Q8_K activations.
pub fn vec_dot_ref_q3_k(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (block, xb) in w.chunks_exact(BLOCK_BYTES_Q3_K).zip(x) {
        let (d, sc, q) = q3_k_parts(block);
        let mut sumi = 0i32;
        for j in 0..16 {
            let dot: i32 = (16 * j..16 * j + 16)
                .map(|i| (i32::from(q[i]) - 4) * i32::from(xb.qs[i]))
                .sum();
            sumi += i32::from(sc[j]) * dot;
        }
        sum += xb.d * d * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::q8_k::quantize_row_q8_k;

    #[test]
    fn layouts_follow_ggml() {
        // Q3_K: value 128 + 64 + 17 (n 1, j 2, l 17): bits 4 of qs[32 + 17], bit 6 of
        // hmask[17]; scale 8 + 4 + 1 = 13: low 4 bits from the high nibble of s[5], high 2
        // bits from bits 6..8 of s[8 + 1].
        let mut b = [0u8; BLOCK_BYTES_Q3_K];
        b[32 + 32 + 17] = 0b11 << 4;
        b[17] = 1 << 6;
        b[96 + 5] = 0xA0;
        b[96 + 9] = 0b10 << 6;
        let (_, sc, q) = q3_k_parts(&b);
        assert_eq!((q[128 + 64 + 17], q[128 + 64 + 16]), (7, 0));
        assert_eq!(sc[13], (0x0A | (2 << 4)) - 32);
        assert_eq!(sc[0], -32);
        // Q2_K: value 32 + 3 (j 1): bits 2 of qs[3]; its sub-block 2's scale byte 0x5C.
        let mut b = [0u8; BLOCK_BYTES_Q2_K];
        b[16 + 3] = 0b10 << 2;
        b[2] = 0x5C;
        let (_, _, sc, m, q) = q2_k_parts(&b);
        assert_eq!((q[35], q[3], sc[2], m[2]), (2, 0, 0x0C, 0x05));
    }

    #[test]
    fn references_equal_dequantized_dots() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let xf: Vec<f32> = (0..2 * QK_K).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut x = vec![BlockQ8K::default(); 2];
        quantize_row_q8_k(&xf, &mut x);
        for three in [false, true] {
            let bb = if three {
                BLOCK_BYTES_Q3_K
            } else {
                BLOCK_BYTES_Q2_K
            };
            let mut w = Vec::new();
            for _ in 0..2 {
                let mut b: Vec<u8> = (0..bb).map(|_| rng.random::<u8>()).collect();
                let d_at = if three { 108 } else { 80 };
                b[d_at..d_at + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
                if !three {
                    b[82..84].copy_from_slice(&f16::from_f32(0.02).to_le_bytes());
                }
                w.extend(b);
            }
            let mut exact = 0f64;
            let mut vals = [0f32; QK_K];
            for (block, xb) in w.chunks(bb).zip(&x) {
                if three {
                    dequantize_block_q3_k(block, &mut vals);
                } else {
                    dequantize_block_q2_k(block, &mut vals);
                }
                for (v, &q) in vals.iter().zip(&xb.qs) {
                    exact += f64::from(*v) * f64::from(xb.d) * f64::from(q);
                }
            }
            let got = if three {
                vec_dot_ref_q3_k(&w, &x)
            } else {
                vec_dot_ref_q2_k(&w, &x)
            };
            let got = f64::from(got);
            assert!(
                (got - exact).abs() <= 1e-4 * exact.abs().max(1.0),
                "{three}: {got} vs {exact}"
            );
        }
    }
}
