//! Q5_K weights (ggml `block_q5_K`: Q4_K's f16 d and dmin and 12 bytes of 6-bit scales and
//! minimums, then 32 bytes of fifth bits qh, then Q4_K's 128 bytes of nibbles; value i of
//! sub-block j is d * sc_j * q_i - dmin * m_j with q_i in 0..32: in the run of 64 values c,
//! value 64 c + l takes bit 2 c of qh[l] and value 64 c + 32 + l bit 2 c + 1) dotted with
//! Q8_K activations, summed as Q4_K's are. The plain reference of the row-major layout; the
//! fast kernels work on repacked rows (`crate::packed_k`).

use crate::q4_k::{scale_min, super_scales};
use crate::q8_k::{BlockQ8K, QK_K};

/// Bytes per Q5_K block.
pub const BLOCK_BYTES: usize = 176;

/// The 256 five-bit values (0..32) of a block, in value order.
pub fn values(block: &[u8]) -> [u8; QK_K] {
    let qh = &block[16..48];
    let qs = &block[48..BLOCK_BYTES];
    let mut q = [0u8; QK_K];
    for (c, run) in qs.chunks_exact(32).enumerate() {
        for (l, &b) in run.iter().enumerate() {
            q[64 * c + l] = (b & 0x0F) | (((qh[l] >> (2 * c)) & 1) << 4);
            q[64 * c + 32 + l] = (b >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
        }
    }
    q
}

/// Block `block` dequantized into `out` (256 values).
pub fn dequantize_block(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = super_scales(block);
    let q = values(block);
    for (j, (out, q)) in out.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
        let (sc, m) = scale_min(j, &block[4..16]);
        let (scale, min) = (d * f32::from(sc), dmin * f32::from(m));
        for (o, &q) in out.iter_mut().zip(q) {
            *o = scale * f32::from(q) - min;
        }
    }
}

/// Plain reference: the dot product of one row of Q5_K blocks with Q8_K activations
/// (see `q4_k::vec_dot_ref`).
pub fn vec_dot_ref(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (block, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
        let (d, dmin) = super_scales(block);
        let q = values(block);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min(j, &block[4..16]);
            let dot: i32 = (32 * j..32 * j + 32)
                .map(|i| i32::from(q[i]) * i32::from(xb.qs[i]))
                .sum();
            sumi += i32::from(sc) * dot;
            summ += i32::from(m) * i32::from(xb.bsums32[j]);
        }
        sum += xb.d * d * sumi as f32 - xb.d * dmin * summ as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use half::f16;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::q8_k::quantize_row_q8_k;

    #[test]
    fn values_follow_ggml_layout() {
        // Value 64 + 5 (run 1, low nibble of qs[32 + 5]) takes bit 2 of qh[5]; value
        // 64 + 32 + 5 (high nibble) bit 3.
        let mut block = [0u8; BLOCK_BYTES];
        block[16 + 5] = 0b0000_1100;
        block[48 + 32 + 5] = 0x3A;
        let q = values(&block);
        assert_eq!((q[69], q[101], q[5], q[37]), (0x1A, 0x13, 0, 0));
    }

    #[test]
    fn reference_equals_dequantized_dot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut w = Vec::new();
        for _ in 0..2 {
            w.extend(f16::from_f32(rng.random_range(0.0..0.01)).to_le_bytes());
            w.extend(f16::from_f32(rng.random_range(0.0..0.01)).to_le_bytes());
            w.extend((0..172).map(|_| rng.random::<u8>()));
        }
        let xf: Vec<f32> = (0..2 * QK_K).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut x = vec![BlockQ8K::default(); 2];
        quantize_row_q8_k(&xf, &mut x);
        let mut exact = 0f64;
        let mut vals = [0f32; QK_K];
        for (block, xb) in w.chunks(BLOCK_BYTES).zip(&x) {
            dequantize_block(block, &mut vals);
            for (v, &q) in vals.iter().zip(&xb.qs) {
                exact += f64::from(*v) * f64::from(xb.d) * f64::from(q);
            }
        }
        let got = f64::from(vec_dot_ref(&w, &x));
        assert!(
            (got - exact).abs() <= 1e-4 * exact.abs().max(1.0),
            "{got} vs {exact}"
        );
    }
}
