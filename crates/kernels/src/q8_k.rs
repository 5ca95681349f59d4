//! Q8_K activations (ggml `block_q8_K`): 256 values as i8 with one f32 scale, and the
//! integer sums of every 16 values, which the K-quant kernels need for the weights'
//! minimums (Q4_K) and offset (Q6_K). Quantized as ggml's `quantize_row_q8_K_ref` does:
//! the scale maps the value of largest magnitude to -127, rounding half to even.

/// Values per block (ggml's QK_K).
pub const QK_K: usize = 256;

/// One block of 256 quantized activations.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct BlockQ8K {
    pub qs: [i8; QK_K],
    /// Sums of qs over each run of 16 values.
    pub bsums: [i16; QK_K / 16],
    /// Sums of qs over each run of 32 values (pairs of `bsums`).
    pub bsums32: [i16; QK_K / 32],
    pub d: f32,
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Self {
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
            bsums32: [0; QK_K / 32],
            d: 0.0,
        }
    }
}

/// Rounds half to even for |x| <= 2^22, as ggml's `nearest_int` (see `q8_1.rs`).
#[inline(always)]
fn round_ties_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Quantizes `x` (a multiple of 256 long) into `out` (x.len() / 256 blocks).
pub fn quantize_row_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    #[cfg(target_arch = "x86_64")]
    {
        if crate::avx2_available() {
            for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
                // SAFETY: the CPU supports AVX2 (checked above); xs holds 256 values.
                unsafe { avx2::quantize_block(xs, block) };
            }
            return;
        }
    }
    quantize_row_q8_k_ref(x, out)
}

/// Plain reference for [`quantize_row_q8_k`]; the SIMD path gives the same bits.
pub fn quantize_row_q8_k_ref(x: &[f32], out: &mut [BlockQ8K]) {
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                (amax, max) = (v.abs(), v);
            }
        }
        if degenerate(block, xs.iter().any(|v| !v.is_finite()), amax, max) {
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in block.qs.iter_mut().zip(xs) {
            *q = round_ties_even_small(iscale * v).min(127.0) as i8;
        }
        fill_sums(block);
        block.d = 1.0 / iscale;
    }
}

/// Blocks that cannot be scaled: one holding NaN or an infinity gets a NaN scale (every
/// product with it is NaN, so the fault shows); one that is zero, or too small for -127 /
/// max to be finite, gets zeros (ggml's zero block). Returns whether the block was one of
/// these and is now filled in.
fn degenerate(block: &mut BlockQ8K, non_finite: bool, amax: f32, max: f32) -> bool {
    if non_finite {
        *block = BlockQ8K {
            d: f32::NAN,
            ..BlockQ8K::default()
        };
        return true;
    }
    if amax == 0.0 || !(-127.0 / max).is_finite() {
        *block = BlockQ8K::default();
        return true;
    }
    false
}

/// The sums of every 16 and every 32 quantized values.
fn fill_sums(block: &mut BlockQ8K) {
    for (s, run) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
        *s = run.iter().map(|&q| i16::from(q)).sum();
    }
    for (s, pair) in block.bsums32.iter_mut().zip(block.bsums.chunks_exact(2)) {
        *s = pair[0] + pair[1];
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ8K, QK_K};

    /// One block as the reference quantizes it: the largest magnitude by vector maxima,
    /// the value holding it (its first occurrence, whose sign sets the scale's) by one
    /// compare per 8 values, then x * -127 / max rounded half to even (the magic addition,
    /// as the reference) and packed to bytes.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_block(xs: &[f32], block: &mut BlockQ8K) {
        debug_assert_eq!(xs.len(), QK_K);
        // SAFETY: xs holds 256 values (the caller's contract), read 8 at a time below;
        // block.qs holds 256 bytes, written 32 at a time.
        unsafe {
            let p = xs.as_ptr();
            let sign = _mm256_set1_ps(-0.0);
            let inf = _mm256_set1_ps(f32::INFINITY);
            let mut m = _mm256_setzero_ps();
            let mut bad = _mm256_setzero_ps();
            for i in (0..QK_K).step_by(8) {
                let a = _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(i)));
                m = _mm256_max_ps(a, m);
                // |v| is not below infinity: an infinity or NaN.
                bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
            let non_finite = _mm256_movemask_ps(bad) != 0;
            // The first value of magnitude amax (there is one unless the block is bad).
            let mut max = 0.0;
            if !non_finite && amax != 0.0 {
                let target = _mm256_set1_ps(amax);
                for i in (0..QK_K).step_by(8) {
                    let a = _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(i)));
                    let hit = _mm256_movemask_ps(_mm256_cmp_ps(a, target, _CMP_EQ_OQ));
                    if hit != 0 {
                        max = xs[i + hit.trailing_zeros() as usize];
                        break;
                    }
                }
            }
            if super::degenerate(block, non_finite, amax, max) {
                return;
            }
            let iscale = -127.0 / max;
            let scale = _mm256_set1_ps(iscale);
            let magic = _mm256_set1_ps(12_582_912.0);
            let top = _mm256_set1_ps(127.0);
            let q = block.qs.as_mut_ptr();
            for i in (0..QK_K).step_by(32) {
                let ints = [0, 8, 16, 24].map(|j| {
                    let v = _mm256_mul_ps(scale, _mm256_loadu_ps(p.add(i + j)));
                    let r = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
                    _mm256_cvtps_epi32(_mm256_min_ps(r, top))
                });
                // Whole numbers in [-127, 127]: the saturating packs keep them; they leave
                // 4-value runs interleaved across the two lanes, put back in order after.
                let ab = _mm256_packs_epi32(ints[0], ints[1]);
                let cd = _mm256_packs_epi32(ints[2], ints[3]);
                let bytes = _mm256_packs_epi16(ab, cd);
                let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
                let bytes = _mm256_permutevar8x32_epi32(bytes, order);
                _mm256_storeu_si256(q.add(i) as *mut __m256i, bytes);
            }
            super::fill_sums(block);
            block.d = 1.0 / iscale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_extreme_value_to_minus_127_and_sums_runs() {
        let mut x: Vec<f32> = (0..QK_K).map(|i| (i as f32 - 100.0) / 50.0).collect();
        x[7] = -4.0;
        let mut q = [BlockQ8K::default()];
        quantize_row_q8_k(&x, &mut q);
        // The scale is -max / 127: the extreme value (here -4) always becomes -127.
        assert_eq!(q[0].qs[7], -127);
        assert!((q[0].d - 4.0 / 127.0).abs() < 1e-7);
        for (i, &v) in x.iter().enumerate() {
            assert!((q[0].d * f32::from(q[0].qs[i]) - v).abs() <= q[0].d.abs() / 2.0 + 1e-6);
        }
        for j in 0..16 {
            let s: i32 = q[0].qs[16 * j..16 * j + 16]
                .iter()
                .map(|&v| i32::from(v))
                .sum();
            assert_eq!(i32::from(q[0].bsums[j]), s);
        }
        for j in 0..8 {
            assert_eq!(q[0].bsums32[j], q[0].bsums[2 * j] + q[0].bsums[2 * j + 1]);
        }
    }

    #[test]
    fn simd_path_gives_the_references_bits() {
        #[cfg(target_arch = "x86_64")]
        if !crate::avx2_available() {
            eprintln!("SKIPPED: the CPU lacks AVX2, so both sides would be the reference");
            return;
        }
        // Values with ties (halves after scaling), repeated extremes of both signs, negative
        // zeros, subnormals beside normal values, blocks too small to scale though normal,
        // zeros, and non-finite values.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..4000 {
            let scale = [1.0, 1e-3, 1e-30, 1e30, 254.0, 1e-39, 2e-38][case % 7];
            let mut x: Vec<f32> = (0..2 * QK_K)
                .map(|_| ((next() % 2001) as f32 - 1000.0) / 1000.0 * scale)
                .collect();
            let mut at = || (next() % 512) as usize;
            match case % 10 {
                1 => x[at()] = -scale * 2.0,
                2 => {
                    // The extreme twice, with both signs: the first one sets the sign.
                    let (i, j) = (at(), at());
                    x[i] = 3.0 * scale;
                    x[j] = -3.0 * scale;
                }
                3 => x[at()] = f32::NAN,
                4 => x[at()] = [f32::NEG_INFINITY, f32::INFINITY][case % 20 / 10],
                5 => x[..QK_K].iter_mut().for_each(|v| *v = 0.0),
                6 => x
                    .iter_mut()
                    .for_each(|v| *v = (*v * 254.0).round() / 2.0 * scale),
                7 => (0..40).for_each(|_| x[at()] = -0.0),
                8 => (0..40).for_each(|_| {
                    let i = at();
                    x[i] = f32::from_bits(1 + (i as u32 * 0x9e37) % 0x7f_ffff);
                }),
                9 => x[..QK_K].iter_mut().for_each(|v| *v = -0.0),
                _ => {}
            }
            let (mut fast, mut plain) = ([BlockQ8K::default(); 2], [BlockQ8K::default(); 2]);
            quantize_row_q8_k(&x, &mut fast);
            quantize_row_q8_k_ref(&x, &mut plain);
            for (f, p) in fast.iter().zip(&plain) {
                assert_eq!(f.qs, p.qs, "case {case}");
                assert_eq!(f.bsums, p.bsums, "case {case}");
                assert_eq!(f.bsums32, p.bsums32, "case {case}");
                assert_eq!(f.d.to_bits(), p.d.to_bits(), "case {case}");
            }
        }
    }

    #[test]
    fn degenerate_blocks() {
        let mut q = [BlockQ8K::default(); 3];
        let mut x = vec![0f32; 3 * QK_K];
        x[QK_K + 3] = 1e-40;
        x[2 * QK_K + 9] = f32::NAN;
        quantize_row_q8_k(&x, &mut q);
        assert_eq!((q[0].d, q[0].qs), (0.0, [0; QK_K]));
        assert_eq!((q[1].d, q[1].qs), (0.0, [0; QK_K]));
        assert!(q[2].d.is_nan());
    }
}
