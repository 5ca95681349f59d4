//! Q4_K weights (ggml `block_q4_K`: 256 values in 8 sub-blocks of 32; f16 super-scale d and
//! super-minimum dmin, then 12 bytes packing each sub-block's 6-bit scale and minimum, then
//! 128 bytes of nibbles; value i of sub-block j is d * sc_j * q_i - dmin * m_j. Each run of
//! 32 bytes holds two sub-blocks: low nibbles the first, high nibbles the second) dotted
//! with Q8_K activations. The plain reference of the row-major layout; the fast kernels work
//! on repacked rows (`crate::packed_k`).

use half::f16;

use crate::q8_k::{BlockQ8K, QK_K};

/// Bytes per Q4_K block.
pub const BLOCK_BYTES: usize = 144;

/// (scale, minimum) of sub-block j (0..8) from the 12 packed bytes (ggml `get_scale_min_k4`).
pub fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// (d, dmin) of a block.
pub fn super_scales(block: &[u8]) -> (f32, f32) {
    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
    let dmin = f16::from_le_bytes([block[2], block[3]]).to_f32();
    (d, dmin)
}

/// The 256 nibbles of a block, in value order.
pub fn nibbles(block: &[u8]) -> [u8; QK_K] {
    let qs = &block[16..BLOCK_BYTES];
    let mut q = [0u8; QK_K];
    for (c, run) in qs.chunks_exact(32).enumerate() {
        for (l, &b) in run.iter().enumerate() {
            q[64 * c + l] = b & 0x0F;
            q[64 * c + 32 + l] = b >> 4;
        }
    }
    q
}

/// Block `block` dequantized into `out` (256 values).
pub fn dequantize_block(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = super_scales(block);
    let q = nibbles(block);
    for (j, (out, q)) in out.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
        let (sc, m) = scale_min(j, &block[4..16]);
        let (scale, min) = (d * f32::from(sc), dmin * f32::from(m));
        for (o, &q) in out.iter_mut().zip(q) {
            *o = scale * f32::from(q) - min;
        }
    }
}

/// Plain reference: the dot product of one row of Q4_K blocks with Q8_K activations, summed
/// as ggml does: per block, exact integer sums of scale x values and of minimum x
/// activation sums, then d_x * d and d_x * dmin.
pub fn vec_dot_ref(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (block, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
        let (d, dmin) = super_scales(block);
        let q = nibbles(block);
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
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::q8_k::quantize_row_q8_k;

    #[test]
    fn scale_min_unpacks_six_bits() {
        // Sub-blocks 0..4 use the low 6 bits of bytes 0..8; 4..8 take 4 bits from bytes
        // 8..12 and their top 2 bits from the top of bytes 0..8.
        let s = [
            0xC1, 0x02, 0x03, 0x04, 0x45, 0x06, 0x07, 0x08, 0x9A, 0xBC, 0xDE, 0xF0,
        ];
        assert_eq!(scale_min(0, &s), (1, 5));
        assert_eq!(scale_min(3, &s), (4, 8));
        assert_eq!(scale_min(4, &s), (0x0A | (3 << 4), 0x09 | (1 << 4)));
        assert_eq!(scale_min(7, &s), (0x00, 0x0F));
    }

    #[test]
    fn reference_equals_dequantized_dot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut w = Vec::new();
        for _ in 0..2 {
            w.extend(f16::from_f32(rng.random_range(0.0..0.01)).to_le_bytes());
            w.extend(f16::from_f32(rng.random_range(0.0..0.01)).to_le_bytes());
            w.extend((0..140).map(|_| rng.random::<u8>()));
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
