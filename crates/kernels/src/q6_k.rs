//! Q6_K weights (ggml `block_q6_K`: 256 values, 128 bytes of low 4 bits `ql`, 64 bytes of
//! high 2 bits `qh`, 16 signed 8-bit scales (one per 16 values), f16 super-scale d; value i
//! is d * sc_{i/16} * (q_i - 32) with q_i in 0..64) dotted with Q8_K activations. The plain
//! reference of the row-major layout; the fast kernels work on repacked rows
//! (`crate::packed_k`).

use half::f16;

use crate::q8_k::{BlockQ8K, QK_K};

/// Bytes per Q6_K block.
pub const BLOCK_BYTES: usize = 210;

/// The 256 six-bit values (0..64) of a block, in value order. Each half of 128 values
/// takes 64 bytes of `ql` and 32 of `qh`: value l + 32 s (s = 0..4, l = 0..32) has its low
/// bits in nibble s / 2 of ql[l + 32 (s % 2)] and its high bits in bits 2 s of qh[l].
pub fn values(block: &[u8]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
        for l in 0..32 {
            for s in 0..4 {
                let low = (ql[l + 32 * (s % 2)] >> (4 * (s / 2))) & 0x0F;
                let high = (qh[l] >> (2 * s)) & 3;
                q[128 * half + 32 * s + l] = low | (high << 4);
            }
        }
    }
    q
}

/// The 16 scales of a block.
pub fn scales(block: &[u8]) -> [i8; 16] {
    std::array::from_fn(|j| block[192 + j] as i8)
}

/// The super-scale d of a block.
pub fn super_scale(block: &[u8]) -> f32 {
    f16::from_le_bytes([block[208], block[209]]).to_f32()
}

/// Block `block` dequantized into `out` (256 values).
pub fn dequantize_block(block: &[u8], out: &mut [f32]) {
    let d = super_scale(block);
    let (q, sc) = (values(block), scales(block));
    for (i, o) in out.iter_mut().enumerate().take(QK_K) {
        *o = d * f32::from(sc[i / 16]) * (i32::from(q[i]) - 32) as f32;
    }
}

/// Plain reference: the dot product of one row of Q6_K blocks with Q8_K activations, summed
/// as ggml does: per block one exact integer sum of scale x (value - 32) x activation, then
/// d_x * d.
pub fn vec_dot_ref(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (block, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
        let (q, sc) = (values(block), scales(block));
        let mut sumi = 0i32;
        for j in 0..16 {
            let dot: i32 = (16 * j..16 * j + 16)
                .map(|i| (i32::from(q[i]) - 32) * i32::from(xb.qs[i]))
                .sum();
            sumi += i32::from(sc[j]) * dot;
        }
        sum += xb.d * super_scale(block) * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::q8_k::quantize_row_q8_k;

    #[test]
    fn values_follow_ggml_layout() {
        // Value 32 s + l of the first half: low nibble s / 2 of ql[l + 32 (s % 2)], high
        // bits 2 s of qh[l].
        let mut block = [0u8; BLOCK_BYTES];
        block[5] = 0x3A; // ql[5]: value 5 low = 0xA, value 69 low = 0x3
        block[37] = 0x0C; // ql[37]: value 37 low = 0xC
        block[128 + 5] = 0b11_10_01_00; // qh[5]: high of values 5, 37, 69, 101
        let q = values(&block);
        assert_eq!((q[5], q[37], q[69], q[101]), (0x0A, 0x1C, 0x23, 0x30));
    }

    #[test]
    fn reference_equals_dequantized_dot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let mut w = Vec::new();
        for _ in 0..2 {
            w.extend((0..208).map(|_| rng.random::<u8>()));
            w.extend(f16::from_f32(rng.random_range(0.0..0.001)).to_le_bytes());
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
