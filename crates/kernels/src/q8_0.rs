//! Q8_0 weights (ggml `block_q8_0`: f16 scale d, 32 signed bytes; value j is d * q_j)
//! dotted with 8-bit activations: sum = d_w * d_x * sum(q_w * q_x). The activations are
//! Q8_1 blocks, whose scale and bytes are exactly ggml's Q8_0 quantization (Q8_1 only
//! adds the block sum, unused here).
//!
//! Q4_0 blocks (`crate::q4_0`) differ only in how the 32 values are stored (nibbles, value
//! q - 8), so the kernels here are generic over `NIBBLES`: the nibbles are widened to
//! signed bytes and then go through the same integer products, exactly as Q8_0 values.

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

/// The fastest dot product this CPU supports, for either layout.
pub(crate) fn dot<const NIBBLES: bool>(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::q4_1::avx2_available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
            return unsafe { avx2::vec_dot::<NIBBLES>(w, x) };
        }
    }
    dot_ref::<NIBBLES>(w, x)
}

/// One weight row against four activation rows, for either layout.
pub(crate) fn dot_x4<const NIBBLES: bool>(w: &[u8], xs: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::q4_1::avx2_available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
            return unsafe { avx2::vec_dot_x4::<NIBBLES>(w, xs) };
        }
    }
    xs.map(|x| dot_ref::<NIBBLES>(w, x))
}

/// Plain reference: the dot product of one row of Q8_0 blocks with 8-bit activations.
pub fn vec_dot_ref(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    dot_ref::<false>(w, x)
}

/// The fastest dot product this CPU supports (AVX2 + FMA + F16C, else the reference).
pub fn vec_dot(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    dot::<false>(w, x)
}

/// Dot products of one weight row with four activation rows in one pass over the row.
pub fn vec_dot_x4(w: &[u8], xs: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    dot_x4::<false>(w, xs)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::block_bytes;
    use crate::q8_1::BlockQ8_1;

    /// Scale and the 32 signed weight values of one block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack<const NIBBLES: bool>(block: &[u8]) -> (f32, __m256i) {
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
            u16::from_le_bytes([block[0], block[1]]),
        ))));
        let q = if NIBBLES {
            let mask = _mm_set1_epi8(0x0F);
            let raw = _mm_loadu_si128(block.as_ptr().add(2) as *const __m128i);
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
        } else {
            _mm256_loadu_si256(block.as_ptr().add(2) as *const __m256i)
        };
        (d, q)
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
    pub unsafe fn vec_dot<const NIBBLES: bool>(w: &[u8], x: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (block, xb) in w.chunks_exact(block_bytes(NIBBLES)).zip(x) {
            let (d, qw) = unpack::<NIBBLES>(block);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), products(qw, xb), acc);
        }
        crate::q4_1::hsum_avx(acc)
    }

    /// Each row sees the same operations in the same order as in [`vec_dot`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_x4<const NIBBLES: bool>(w: &[u8], xs: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (b, block) in w.chunks_exact(block_bytes(NIBBLES)).enumerate() {
            let (d, qw) = unpack::<NIBBLES>(block);
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
