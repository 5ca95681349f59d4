//! Q4_1 weights (ggml `block_q4_1`: f16 scale d, f16 minimum m, 16 bytes of nibbles; value
//! j is d * q_j + m, low nibbles holding values 0..16 and high nibbles 16..32) dotted with
//! Q8_1 activations: sum = d_w * d_x * sum(q_w * q_x) + m_w * s_x.

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

/// The fastest dot product this CPU supports (AVX2 + FMA + F16C, else the reference).
pub fn vec_dot(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
            return unsafe { avx2::vec_dot(w, x) };
        }
    }
    vec_dot_ref(w, x)
}

/// Dot products of one row of Q4_1 blocks with four activation rows at once (the weight
/// nibbles are unpacked once per block): `out[j] = vec_dot(w, xs[j])`.
pub fn vec_dot_x4(w: &[u8], xs: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::vnni_available() {
            // SAFETY: the CPU supports AVX2, FMA, F16C, AVX512-VNNI and AVX512-VL.
            return unsafe { avx2::vec_dot_x4_vnni(w, xs) };
        }
        if avx2::available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
            return unsafe { avx2::vec_dot_x4(w, xs) };
        }
    }
    xs.map(|x| vec_dot_ref(w, x))
}

/// Whether the AVX2 + FMA + F16C kernels can run here (checked once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_available() -> bool {
    avx2::available()
}

/// Horizontal sum of 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum_avx(v: std::arch::x86_64::__m256) -> f32 {
    avx2::hsum(v)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::BLOCK_BYTES;
    use crate::q8_1::BlockQ8_1;

    pub fn available() -> bool {
        use std::sync::OnceLock;
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    /// Whether VPDPBUSD on 256-bit registers is available (AVX512-VNNI with AVX512-VL).
    pub fn vnni_available() -> bool {
        use std::sync::OnceLock;
        static YES: OnceLock<bool> = OnceLock::new();
        // FERROLLAMA_NO_VNNI=1 forces the AVX2 path, to compare the two in one benchmark.
        *YES.get_or_init(|| {
            available()
                && std::env::var_os("FERROLLAMA_NO_VNNI").is_none()
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
        })
    }

    /// One weight block: its scale d, minimum m, and 32 nibbles widened to bytes (low
    /// nibbles are values 0..16, high nibbles 16..32).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(block: &[u8]) -> (f32, f32, __m256i) {
        // d and m, two f16 values side by side, widened at once with F16C.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([
            block[0], block[1], block[2], block[3],
        ])));
        let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)));
        let mask = _mm_set1_epi8(0x0F);
        let raw = _mm_loadu_si128(block.as_ptr().add(4) as *const __m128i);
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
        (d, m, _mm256_set_m128i(hi, lo))
    }

    /// Sum of q4 * q8 in 8 lanes: maddubs multiplies u8 x i8 pairs into i16 (at most
    /// 2 * 15 * 127, no overflow), madd sums them to i32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn products(q4: __m256i, xb: &BlockQ8_1) -> __m256 {
        let q8 = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(
            _mm256_maddubs_epi16(q4, q8),
            _mm256_set1_epi16(1),
        ))
    }

    /// AVX2 dot product of one weight row with one activation row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot(w: &[u8], x: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut sum_m = 0f32;
        for (block, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
            let (d, m, q4) = unpack(block);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), products(q4, xb), acc);
            sum_m += m * xb.s;
        }
        hsum(acc) + sum_m
    }

    /// Defines a four-row dot product over `$products`, compiled for `$features`: four
    /// activation rows per pass over the weights, four independent accumulators, each row
    /// seeing the same operations in the same order as in [`vec_dot`].
    macro_rules! four_row_dot {
        ($(#[$doc:meta])* $name:ident, $features:literal, $products:ident) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            pub unsafe fn $name(w: &[u8], xs: [&[BlockQ8_1]; 4]) -> [f32; 4] {
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut sum_m = [0f32; 4];
                for (b, block) in w.chunks_exact(BLOCK_BYTES).enumerate() {
                    let (d, m, q4) = unpack(block);
                    for j in 0..4 {
                        let xb = &xs[j][b];
                        let p = $products(q4, xb);
                        acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), p, acc[j]);
                        sum_m[j] += m * xb.s;
                    }
                }
                [0, 1, 2, 3].map(|j| hsum(acc[j]) + sum_m[j])
            }
        };
    }

    four_row_dot!(vec_dot_x4, "avx2,fma,f16c", products);

    /// [`products`] with one VPDPBUSD in place of VPMADDUBSW + VPMADDWD: the same
    /// integer sums (no i16 saturation is possible with 4-bit weights), one instruction less
    /// per block and activation row, which is what a batched product is bound by.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn products_vnni(q4: __m256i, xb: &BlockQ8_1) -> __m256 {
        let q8 = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), q4, q8))
    }

    four_row_dot!(
        /// [`vec_dot_x4`] with [`products_vnni`]; bit-identical results.
        vec_dot_x4_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        products_vnni
    );

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
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
    fn simd_matches_reference_on_random_and_edge_data() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for &(blocks, scale) in &[
            (1, 1.0),
            (3, 0.01),
            (18, 1.0),
            (48, 100.0),
            (7, 1e-4),
            (5, 6e4),
        ] {
            let w = random_row(&mut rng, blocks, scale);
            let xf: Vec<f32> = (0..blocks * 32)
                .map(|_| rng.random_range(-3.0..3.0))
                .collect();
            let mut x = vec![BlockQ8_1::default(); blocks];
            quantize_row_q8_1(&xf, &mut x);
            let (a, b) = (vec_dot_ref(&w, &x), vec_dot(&w, &x));
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "{blocks} blocks: {a} vs {b}"
            );
        }
        // Largest nibbles against zero and against extreme activations.
        let mut block = f16::from_f32(2.0).to_le_bytes().to_vec();
        block.extend(f16::from_f32(-0.5).to_le_bytes());
        block.extend([0xFFu8; 16]);
        let w = [block.clone(), block].concat();
        let mut x = vec![BlockQ8_1::default(); 2];
        assert_eq!(vec_dot(&w, &x), 0.0);
        quantize_row_q8_1(&[-1000.0; 64], &mut x);
        assert_eq!(vec_dot(&w, &x), vec_dot_ref(&w, &x));
    }

    #[test]
    fn four_row_dot_equals_single_dots() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for blocks in [1, 2, 18, 48] {
            let w = random_row(&mut rng, blocks, 0.5);
            let rows: Vec<Vec<BlockQ8_1>> = (0..4)
                .map(|_| {
                    let xf: Vec<f32> = (0..blocks * 32)
                        .map(|_| rng.random_range(-4.0..4.0))
                        .collect();
                    let mut x = vec![BlockQ8_1::default(); blocks];
                    quantize_row_q8_1(&xf, &mut x);
                    x
                })
                .collect();
            let got = vec_dot_x4(&w, [&rows[0], &rows[1], &rows[2], &rows[3]]);
            for j in 0..4 {
                // Same operations in the same order as the single-row kernel: equal bits.
                assert_eq!(got[j], vec_dot(&w, &rows[j]), "{blocks} blocks, row {j}");
                let r = vec_dot_ref(&w, &rows[j]);
                assert!((got[j] - r).abs() <= 1e-4 * r.abs().max(1.0));
            }
            // Both SIMD variants, whichever the dispatcher chose above.
            #[cfg(target_arch = "x86_64")]
            if avx2::vnni_available() {
                let xs = [&rows[0][..], &rows[1], &rows[2], &rows[3]];
                // SAFETY: the features were checked.
                let (a, b) = unsafe { (avx2::vec_dot_x4(&w, xs), avx2::vec_dot_x4_vnni(&w, xs)) };
                assert_eq!(a, b, "{blocks} blocks");
            }
        }
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
