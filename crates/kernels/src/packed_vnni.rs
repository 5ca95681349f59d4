//! AVX-512 VNNI versions of the packed Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 tiles
//! (`crate::packed`).
//!
//! The AVX2 tile's loop, with each product of four byte pairs per lane done by one
//! `vpdpbusd`, which multiplies and adds into i32 lanes at once: for nibbles, one
//! instruction where AVX2 needs `maddubs`, an i16 add and later `madd` (and, for five-bit
//! values, an early flush to i32); for Q8_0 one where
//! AVX2 needs two `sign`s, `maddubs`, `madd` and an add.
//!
//! On 256-bit registers (AVX-512 VL): the same weight loads and the same activation
//! broadcasts as AVX2 (from memory, no shuffle port). Two 512-bit versions were measured
//! too and were slower on the AMD EPYC here (a 512-bit operation costs two 256-bit ones on
//! it): two groups per register, whose activations need a `vpermd` per group and row, and
//! the same with the permuted activations laid out once per product and loaded.
//!
//! Every block's sum is exact in i32, and the scales are applied exactly as the AVX2 tile
//! applies them, in the same order: both give the same bits, so a result does not depend
//! on which tile the CPU picked.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes. Nibbles are unsigned already. Q8_0
//! weights are signed, so the activations go in as x + 128 (unsigned) and 128 times the
//! weights' sum, taken by one more `vpdpbusd` against ones, comes off again.

use std::arch::x86_64::*;

use crate::format::WeightFormat;
use crate::packed::avx2::nibble_values;
use crate::q8_1::BlockQ8_1;

/// Dot products of one packed row group (8 rows) with R activation rows, for every format
/// of `crate::packed`: out[j][lane].
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C; `w` must hold whole
/// packed blocks of `format` and each activation row at least as many blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn tile<const R: usize>(
    format: WeightFormat,
    w: &[u8],
    xs: [&[BlockQ8_1]; R],
) -> [[f32; 8]; R] {
    let (pbb, header) = (format.packed_block_bytes(), format.header_bytes());
    let blocks = w.len() / pbb;
    debug_assert!(xs.iter().all(|x| x.len() >= blocks));
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..blocks {
        // SAFETY: block b lies inside `w` (b < blocks: its header and value bytes) and
        // each xs[j] has block b, whose 32 bytes the broadcasts read 4 at a time.
        unsafe {
            let block = w.as_ptr().add(b * pbb);
            let v = block.add(header);
            let xb: [&BlockQ8_1; R] = std::array::from_fn(|j| &xs[j][b]);
            let sumi = match format {
                WeightFormat::Q8_0 => block_sums_q8_0(v, xb),
                WeightFormat::Q5_0 | WeightFormat::Q5_1 => block_sums_nibbles::<true, R>(v, xb),
                WeightFormat::Q4_0 | WeightFormat::Q4_1 => block_sums_nibbles::<false, R>(v, xb),
            };
            let d = _mm256_cvtph_ps(_mm_loadu_si128(block as *const __m128i));
            for j in 0..R {
                let xb = &xs[j][b];
                let mut s = sumi[j];
                match format {
                    WeightFormat::Q4_0 => s = _mm256_sub_epi32(s, _mm256_set1_epi32(8 * xb.sum)),
                    WeightFormat::Q5_0 => s = _mm256_sub_epi32(s, _mm256_set1_epi32(16 * xb.sum)),
                    _ => {}
                }
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(xb.d));
                acc[j] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(s), acc[j]);
                if matches!(format, WeightFormat::Q4_1 | WeightFormat::Q5_1) {
                    let m = _mm256_cvtph_ps(_mm_loadu_si128(block.add(16) as *const __m128i));
                    acc[j] = _mm256_fmadd_ps(m, _mm256_set1_ps(xb.s), acc[j]);
                }
            }
        }
    }
    let mut out = [[0f32; 8]; R];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: o holds 8 f32.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
    }
    out
}

/// Four activation bytes from `at`, in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn broadcast4(bytes: *const u8) -> __m256i {
    // SAFETY: the caller passes a pointer with 4 readable bytes.
    unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(bytes as *const i32)) }
}

/// One block's exact sums of 4-bit (or, when FIVE, 5-bit) values x activations per row
/// (lanes), for R rows.
///
/// # Safety
/// `v` points at the block's value bytes (128, then for FIVE 32 bytes of fifth bits); the
/// CPU has the tile's features.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2")]
unsafe fn block_sums_nibbles<const FIVE: bool, const R: usize>(
    v: *const u8,
    xs: [&BlockQ8_1; R],
) -> [__m256i; R] {
    // SAFETY: for FIVE the 32 bytes after the nibble groups are the fifth bits.
    let high = if FIVE {
        unsafe { _mm256_loadu_si256(v.add(128) as *const __m256i) }
    } else {
        _mm256_setzero_si256()
    };
    // Low and high nibbles into separate sums, added at the end (exact in i32, so the
    // same result): two chains of four dependent `vpdpbusd`s instead of one of eight.
    let mut sum_lo = [_mm256_setzero_si256(); R];
    let mut sum_hi = [_mm256_setzero_si256(); R];
    for g in 0..4 {
        // SAFETY: group g's 32 bytes lie inside the block; qs holds 32 bytes.
        unsafe {
            let raw = _mm256_loadu_si256(v.add(32 * g) as *const __m256i);
            let (lo, hi) = nibble_values::<FIVE>(raw, high, g);
            for j in 0..R {
                let qs = xs[j].qs.as_ptr() as *const u8;
                sum_lo[j] = _mm256_dpbusd_epi32(sum_lo[j], lo, broadcast4(qs.add(4 * g)));
                sum_hi[j] = _mm256_dpbusd_epi32(sum_hi[j], hi, broadcast4(qs.add(16 + 4 * g)));
            }
        }
    }
    std::array::from_fn(|j| _mm256_add_epi32(sum_lo[j], sum_hi[j]))
}

/// One Q8_0 block's exact sums of weights x activations per row (lanes), for R rows.
///
/// # Safety
/// `v` points at the block's 256 value bytes; the CPU has the tile's features.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2")]
unsafe fn block_sums_q8_0<const R: usize>(v: *const u8, xs: [&BlockQ8_1; R]) -> [__m256i; R] {
    // x + 128 as unsigned bytes (the sign bit flipped), kept where broadcasts can read it.
    let mut xu = [[0u8; 32]; R];
    for (u, xb) in xu.iter_mut().zip(xs) {
        // SAFETY: qs and u hold 32 bytes each.
        unsafe {
            let x = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let flipped = _mm256_xor_si256(x, _mm256_set1_epi8(-128));
            _mm256_storeu_si256(u.as_mut_ptr() as *mut __m256i, flipped);
        }
    }
    let ones = _mm256_set1_epi8(1);
    let mut wsum = _mm256_setzero_si256();
    let mut sumi = [_mm256_setzero_si256(); R];
    for g in 0..8 {
        // SAFETY: group g's 32 bytes lie inside the block; xu[j] holds 32 bytes.
        unsafe {
            let q = _mm256_loadu_si256(v.add(32 * g) as *const __m256i);
            wsum = _mm256_dpbusd_epi32(wsum, ones, q);
            for j in 0..R {
                sumi[j] = _mm256_dpbusd_epi32(sumi[j], broadcast4(xu[j].as_ptr().add(4 * g)), q);
            }
        }
    }
    // Each lane summed (x + 128) * w over its row's 32 values: take 128 * sum(w) off.
    let offset = _mm256_slli_epi32(wsum, 7);
    sumi.map(|s| _mm256_sub_epi32(s, offset))
}
