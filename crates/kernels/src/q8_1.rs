//! Q8_1 activations (ggml `block_q8_1`): 32 values as i8 with a scale `d` and
//! `s = d * sum(qs)`, both rounded to f16 as ggml stores them, so dot products against
//! Q4_1 weights see the numbers llama.cpp sees.

use half::f16;

/// Values per block.
pub const QK: usize = 32;

/// One block of 32 quantized activations.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(4))]
pub struct BlockQ8_1 {
    /// Scale, already rounded through f16.
    pub d: f32,
    /// d * sum(qs), rounded through f16.
    pub s: f32,
    /// sum(qs), exact: the packed Q4_0 kernel subtracts 8 * sum from unsigned nibble sums.
    pub sum: i32,
    pub qs: [i8; QK],
}

impl Default for BlockQ8_1 {
    fn default() -> Self {
        Self {
            d: 0.0,
            s: 0.0,
            sum: 0,
            qs: [0; QK],
        }
    }
}

/// Rounds half to even for |x| <= 2^22 (here |x| <= 127): adding 1.5 * 2^23 leaves no
/// fraction bits, so the FPU's default rounding (to nearest, ties to even) does the work.
/// `f32::round_ties_even` compiles to a call to `rintf` without SSE4.1, which cost 7 % of
/// a batched decode step.
#[inline(always)]
fn round_ties_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Quantizes `x` (a multiple of 32 long) into `out` (x.len() / 32 blocks). Rounds half to
/// even, as ggml's AVX path does.
pub fn quantize_row_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    #[cfg(target_arch = "x86_64")]
    {
        if crate::avx2_available() {
            for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
                // SAFETY: the CPU supports AVX2 (checked above); xs holds 32 values.
                unsafe { avx2::quantize_block(xs, block) };
            }
            return;
        }
    }
    quantize_row_q8_1_ref(x, out)
}

/// Plain reference for [`quantize_row_q8_1`]; the SIMD path gives the same bits.
pub fn quantize_row_q8_1_ref(x: &[f32], out: &mut [BlockQ8_1]) {
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        if degenerate(block, amax, xs.iter().any(|v| v.is_nan())) {
            continue;
        }
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in block.qs.iter_mut().zip(xs) {
            let r = round_ties_even_small(v * id) as i32;
            *q = r as i8;
            sum += r;
        }
        set_scales(block, amax, sum);
    }
}

/// Blocks that cannot be scaled into [-127, 127]: one holding NaN or an infinity gets a NaN
/// scale, so every product with it is NaN (the fault shows instead of hiding), and one whose
/// largest magnitude is so small that 127 / amax overflows gets zero values (its f16 scale
/// is zero anyway). Returns whether the block was one of these and is now filled in.
fn degenerate(block: &mut BlockQ8_1, amax: f32, has_nan: bool) -> bool {
    if has_nan || !amax.is_finite() {
        *block = BlockQ8_1 {
            d: f32::NAN,
            s: f32::NAN,
            sum: 0,
            qs: [0; QK],
        };
        return true;
    }
    if amax != 0.0 && !(127.0 / amax).is_finite() {
        block.qs = [0; QK];
        set_scales(block, amax, 0);
        return true;
    }
    false
}

fn set_scales(block: &mut BlockQ8_1, amax: f32, sum: i32) {
    let d = amax / 127.0;
    block.d = f16::from_f32(d).to_f32();
    block.s = f16::from_f32(d * sum as f32).to_f32();
    block.sum = sum;
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::BlockQ8_1;

    /// One block: |x| max, x * 127 / max rounded half to even (the rounding mode of
    /// `_mm256_round_ps` and of the reference's magic addition), packed to bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_block(xs: &[f32], block: &mut BlockQ8_1) {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            debug_assert_eq!(xs.len(), 32);
            let p = xs.as_ptr();
            let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(p.add(i)));
            let sign = _mm256_set1_ps(-0.0);
            let mut m = _mm256_setzero_ps();
            let mut nan = _mm256_setzero_ps();
            for v in v {
                // max_ps returns its second operand when either is NaN: NaNs are skipped here,
                // as f32::max skips them, and counted apart.
                m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
                nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
            if super::degenerate(block, amax, _mm256_movemask_ps(nan) != 0) {
                return;
            }
            let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            let q = v.map(|v| {
                _mm256_cvttps_epi32(_mm256_round_ps(
                    _mm256_mul_ps(v, id),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                ))
            });
            let total =
                _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let t4 = _mm_add_epi32(
                _mm256_castsi256_si128(total),
                _mm256_extracti128_si256(total, 1),
            );
            let t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0b01_00_11_10));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0b10_11_00_01)));
            // Packing works within 128-bit halves; the permutation restores the order.
            let bytes = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let bytes =
                _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(block.qs.as_mut_ptr() as *mut __m256i, bytes);
            super::set_scales(block, amax, sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_rounding_equals_round_ties_even() {
        let mut xs: Vec<f32> = (-2540..=2540).map(|i| i as f32 / 20.0).collect();
        xs.extend([
            0.5, -0.5, 1.5, -1.5, 2.5, 126.5, -126.5, 127.0, 0.49999997, -0.0,
        ]);
        xs.extend((0..1000).map(|i| ((i * 7919) % 25400) as f32 / 99.7 - 127.0));
        for x in xs {
            assert_eq!(round_ties_even_small(x), x.round_ties_even(), "{x}");
        }
        assert!(round_ties_even_small(f32::NAN).is_nan());
    }

    #[test]
    fn quantizes_to_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 7919) % 200) as f32 / 10.0 - 10.0)
            .collect();
        let mut q = vec![BlockQ8_1::default(); 2];
        quantize_row_q8_1(&x, &mut q);
        for (b, xs) in q.iter().zip(x.chunks(32)) {
            for (&qi, &v) in b.qs.iter().zip(xs) {
                assert!((qi as f32 * b.d - v).abs() <= b.d * 0.5 + 1e-2, "{qi} {v}");
            }
            let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
            assert!((b.s - b.d * sum as f32).abs() <= b.s.abs() * 1e-3 + 1e-3);
            assert_eq!(b.sum, sum);
        }
    }

    #[test]
    fn simd_quantization_equals_the_reference_bit_for_bit() {
        if !crate::simd_test_runs("simd_quantization_equals_the_reference_bit_for_bit") {
            return;
        }
        // Random values, exact ties after scaling (k + 0.5 with amax 127), zeros, a block
        // holding -128's neighbour, tiny and huge magnitudes.
        let mut x: Vec<f32> = (0..32 * 50)
            .map(|i| (((i * 7919) % 2001) as f32 - 1000.0) / 37.0)
            .collect();
        x[..32].copy_from_slice(&std::array::from_fn::<f32, 32, _>(|i| {
            if i == 0 {
                127.0
            } else {
                (i as f32 - 16.0) + 0.5
            }
        }));
        x[32..64].fill(0.0);
        x[64..96].iter_mut().for_each(|v| *v *= 1e-30);
        x[96..128].iter_mut().for_each(|v| *v *= 1e30);
        // Degenerate blocks: NaN first and last, an infinity, values too small to scale.
        x[128] = f32::NAN;
        x[191] = f32::NAN;
        x[200] = f32::NEG_INFINITY;
        x[224..256].fill(0.0);
        x[224] = 1e-38;
        x[225] = -2e-39;
        let (mut a, mut b) = (
            vec![BlockQ8_1::default(); 50],
            vec![BlockQ8_1::default(); 50],
        );
        quantize_row_q8_1(&x, &mut a);
        quantize_row_q8_1_ref(&x, &mut b);
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            // NaN != NaN: compare the bits of the scales.
            assert_eq!(
                (a.d.to_bits(), a.s.to_bits(), a.sum, a.qs),
                (b.d.to_bits(), b.s.to_bits(), b.sum, b.qs),
                "block {i}"
            );
            assert!(a.qs.iter().all(|&q| q >= -127), "block {i}");
        }
        assert!(a[4].d.is_nan() && a[5].d.is_nan() && a[6].d.is_nan());
        assert_eq!((a[7].qs, a[7].sum, a[7].d), ([0; QK], 0, 0.0));
    }

    #[test]
    fn zeros_give_zero_scale() {
        let mut q = vec![BlockQ8_1::default(); 1];
        quantize_row_q8_1(&[0.0; 32], &mut q);
        assert_eq!((q[0].d, q[0].s, q[0].qs), (0.0, 0.0, [0; 32]));
    }
}
