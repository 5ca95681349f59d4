//! Q8_0 weights (ggml `block_q8_0`: f16 scale d, 32 signed bytes; value j is d * q_j)
//! dotted with 8-bit activations: sum = d_w * d_x * sum(q_w * q_x). The activations are
//! Q8_1 blocks, whose scale and bytes are exactly ggml's Q8_0 quantization (Q8_1 only
//! adds the block sum, unused here).

use half::f16;

use crate::q8_1::BlockQ8_1;

/// Bytes per Q8_0 block.
pub const BLOCK_BYTES: usize = 34;

fn scale(block: &[u8]) -> f32 {
    f16::from_le_bytes([block[0], block[1]]).to_f32()
}

/// Plain reference: the dot product of one row of Q8_0 blocks with 8-bit activations.
pub fn vec_dot_ref(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (block, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
        let sumi: i32 = block[2..]
            .iter()
            .zip(&xb.qs)
            .map(|(&q, &a)| i32::from(q as i8) * i32::from(a))
            .sum();
        sum += scale(block) * xb.d * sumi as f32;
    }
    sum
}

/// The fastest dot product this CPU supports (AVX2 + FMA + F16C, else the reference).
pub fn vec_dot(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::q4_1::avx2_available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
            return unsafe { avx2::vec_dot(w, x) };
        }
    }
    vec_dot_ref(w, x)
}

/// Dot products of one weight row with four activation rows in one pass over the row.
pub fn vec_dot_x4(w: &[u8], xs: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::q4_1::avx2_available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
            return unsafe { avx2::vec_dot_x4(w, xs) };
        }
    }
    xs.map(|x| vec_dot_ref(w, x))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::BLOCK_BYTES;
    use crate::q8_1::BlockQ8_1;

    /// Scale and the 32 weight bytes of one block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(block: &[u8]) -> (f32, __m256i) {
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
            u16::from_le_bytes([block[0], block[1]]),
        ))));
        (
            d,
            _mm256_loadu_si256(block.as_ptr().add(2) as *const __m256i),
        )
    }

    /// Sum of q_w * q_x in 8 lanes. maddubs wants one unsigned operand: |q_w| times q_x
    /// carrying q_w's sign gives the same products (at most 2 * 128 * 127 per i16 lane).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn products(qw: __m256i, xb: &BlockQ8_1) -> __m256 {
        let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        let abs_w = _mm256_sign_epi8(qw, qw);
        let signed_x = _mm256_sign_epi8(qx, qw);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(
            _mm256_maddubs_epi16(abs_w, signed_x),
            _mm256_set1_epi16(1),
        ))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot(w: &[u8], x: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (block, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
            let (d, qw) = unpack(block);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), products(qw, xb), acc);
        }
        crate::q4_1::hsum_avx(acc)
    }

    /// Each row sees the same operations in the same order as in [`vec_dot`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_x4(w: &[u8], xs: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (b, block) in w.chunks_exact(BLOCK_BYTES).enumerate() {
            let (d, qw) = unpack(block);
            for j in 0..4 {
                let xb = &xs[j][b];
                acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), products(qw, xb), acc[j]);
            }
        }
        acc.map(|a| crate::q4_1::hsum_avx(a))
    }
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
    fn simd_matches_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for &(blocks, scale) in &[(1, 1.0), (3, 0.01), (18, 2.0), (37, 100.0)] {
            let w = weights(&mut rng, blocks, scale);
            let rows: Vec<Vec<BlockQ8_1>> = (0..4)
                .map(|r| {
                    let x: Vec<f32> = (0..blocks * 32)
                        .map(|i| {
                            if r == 3 {
                                0.0
                            } else {
                                rng.random_range(-3.0..3.0) * (i % 5) as f32
                            }
                        })
                        .collect();
                    let mut q = vec![BlockQ8_1::default(); blocks];
                    quantize_row_q8_1(&x, &mut q);
                    q
                })
                .collect();
            let four = vec_dot_x4(&w, [&rows[0], &rows[1], &rows[2], &rows[3]]);
            for (r, x) in rows.iter().enumerate() {
                let want = vec_dot_ref(&w, x);
                let one = vec_dot(&w, x);
                assert!(
                    (one - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{blocks}: {one} vs {want}"
                );
                assert_eq!(one, four[r]);
            }
        }
    }
}
