//! AVX-512 VNNI versions of the packed K-quant tiles (`crate::packed_k`).
//!
//! The AVX2 tiles add `maddubs` results in i16 over a few groups, then multiply by the
//! sub-block scales with `madd`. Here `vpdpbusd` sums each sub-block's products straight
//! into i32 (no i16 bound to respect, so no early flushes for five- and six-bit values),
//! and one `vpmulld` per sub-block and row applies its scale. The integer sums are the same
//! numbers, and the float steps are the AVX2 tile's, in its order: the same bits.

use std::arch::x86_64::*;

use crate::packed_k::avx2::{
    broadcast4, broadcast_pair, pair_i8, pair_u8, q2k3k_values, q4k_values, q6k_values,
};
use crate::packed_k::{
    KFormat, Q2K_SCALES, Q2K_VALUES, Q3K_SCALES, Q3K_UNIT, Q3K_VALUES, Q4K_DMIN, Q4K_MINS,
    Q4K_SCALES, Q6K_SCALES, Q6K_UNIT, Q6K_VALUES,
};
use crate::q8_k::BlockQ8K;

/// Dot products of one packed row group (8 rows) with R activation rows: out[j][lane].
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C; `w` must hold whole
/// packed blocks of `format` and each activation row at least as many blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn tile<const R: usize>(
    format: KFormat,
    w: &[u8],
    xs: [&[BlockQ8K]; R],
) -> [[f32; 8]; R] {
    // SAFETY: the caller upholds this function's contract.
    unsafe {
        match format {
            KFormat::Q4K => tile_q4k::<false, R>(w, xs),
            KFormat::Q5K => tile_q4k::<true, R>(w, xs),
            KFormat::Q6K => tile_q6k(w, xs),
            KFormat::Q2K => tile_q2k3k::<false, R>(w, xs),
            KFormat::Q3K => tile_q2k3k::<true, R>(w, xs),
        }
    }
}

/// The first and the second i16 of each 32-bit lane as i32 (sign-extended).
#[inline]
#[target_feature(enable = "avx2")]
fn split_pairs(p: __m256i) -> (__m256i, __m256i) {
    (
        _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(p)),
        _mm256_srai_epi32::<16>(p),
    )
}

/// Q4_K, or Q5_K when FIVE.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_q4k<const FIVE: bool, const R: usize>(
    w: &[u8],
    xs: [&[BlockQ8K]; R],
) -> [[f32; 8]; R] {
    let format = if FIVE { KFormat::Q5K } else { KFormat::Q4K };
    let pbb = format.packed_block_bytes();
    let blocks = w.len() / pbb;
    debug_assert!(xs.iter().all(|x| x.len() >= blocks));
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..blocks {
        // SAFETY: block b lies inside `w` (b < blocks): every offset below is inside its
        // packed bytes; each xs[j] has block b.
        unsafe {
            let block = w.as_ptr().add(b * pbb);
            let mut sumi = [_mm256_setzero_si256(); R];
            let mut summ = [_mm256_setzero_si256(); R];
            for c in 0..4 {
                let (sc_lo, sc_hi) = split_pairs(pair_u8(block.add(Q4K_SCALES + 16 * c)));
                let mut t_lo = [_mm256_setzero_si256(); R];
                let mut t_hi = [_mm256_setzero_si256(); R];
                for g in 0..8 {
                    let (lo, hi) = q4k_values::<FIVE>(block, c, g);
                    for j in 0..R {
                        let at = 64 * c + 4 * g;
                        t_lo[j] = _mm256_dpbusd_epi32(t_lo[j], lo, broadcast4(&xs[j][b], at));
                        t_hi[j] = _mm256_dpbusd_epi32(t_hi[j], hi, broadcast4(&xs[j][b], at + 32));
                    }
                }
                let mins = pair_u8(block.add(Q4K_MINS + 16 * c));
                for j in 0..R {
                    let p = _mm256_add_epi32(
                        _mm256_mullo_epi32(t_lo[j], sc_lo),
                        _mm256_mullo_epi32(t_hi[j], sc_hi),
                    );
                    sumi[j] = _mm256_add_epi32(sumi[j], p);
                    let pair = broadcast_pair(&xs[j][b].bsums32, 2 * c);
                    summ[j] = _mm256_dpwssd_epi32(summ[j], mins, pair);
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(block as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(block.add(Q4K_DMIN) as *const __m128i));
            for j in 0..R {
                let xd = _mm256_set1_ps(xs[j][b].d);
                let (scale, min) = (_mm256_mul_ps(xd, d), _mm256_mul_ps(xd, dmin));
                let pos = _mm256_mul_ps(scale, _mm256_cvtepi32_ps(sumi[j]));
                let neg = _mm256_mul_ps(min, _mm256_cvtepi32_ps(summ[j]));
                acc[j] = _mm256_add_ps(acc[j], _mm256_sub_ps(pos, neg));
            }
        }
    }
    store(acc)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_q6k<const R: usize>(w: &[u8], xs: [&[BlockQ8K]; R]) -> [[f32; 8]; R] {
    let pbb = KFormat::Q6K.packed_block_bytes();
    let blocks = w.len() / pbb;
    debug_assert!(xs.iter().all(|x| x.len() >= blocks));
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..blocks {
        // SAFETY: as in tile_q4k.
        unsafe {
            let block = w.as_ptr().add(b * pbb);
            let mut sumi = [_mm256_setzero_si256(); R];
            // The values are stored plus 32: subtract 32 * sum(scale * activation sum).
            let mut offset = [_mm256_setzero_si256(); R];
            for u in 0..8 {
                let scales = pair_i8(block.add(Q6K_SCALES + 16 * u));
                for j in 0..R {
                    let pair = broadcast_pair(&xs[j][b].bsums, 2 * u);
                    offset[j] = _mm256_dpwssd_epi32(offset[j], scales, pair);
                }
                let (sc_lo, sc_hi) = split_pairs(scales);
                let unit = block.add(Q6K_VALUES + Q6K_UNIT * u);
                let mut t_lo = [_mm256_setzero_si256(); R];
                let mut t_hi = [_mm256_setzero_si256(); R];
                for g in 0..4 {
                    let (lo, hi) = q6k_values(unit, g);
                    for j in 0..R {
                        let at = 32 * u + 4 * g;
                        t_lo[j] = _mm256_dpbusd_epi32(t_lo[j], lo, broadcast4(&xs[j][b], at));
                        t_hi[j] = _mm256_dpbusd_epi32(t_hi[j], hi, broadcast4(&xs[j][b], at + 16));
                    }
                }
                for j in 0..R {
                    let p = _mm256_add_epi32(
                        _mm256_mullo_epi32(t_lo[j], sc_lo),
                        _mm256_mullo_epi32(t_hi[j], sc_hi),
                    );
                    sumi[j] = _mm256_add_epi32(sumi[j], p);
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(block as *const __m128i));
            for j in 0..R {
                let total = _mm256_sub_epi32(sumi[j], _mm256_slli_epi32(offset[j], 5));
                let scale = _mm256_mul_ps(_mm256_set1_ps(xs[j][b].d), d);
                acc[j] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(total), acc[j]);
            }
        }
    }
    store(acc)
}

/// Q2_K, or Q3_K when THREE.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_q2k3k<const THREE: bool, const R: usize>(
    w: &[u8],
    xs: [&[BlockQ8K]; R],
) -> [[f32; 8]; R] {
    let format = if THREE { KFormat::Q3K } else { KFormat::Q2K };
    let (values, unit_bytes) = if THREE {
        (Q3K_VALUES, Q3K_UNIT)
    } else {
        (Q2K_VALUES, 64)
    };
    let pbb = format.packed_block_bytes();
    let blocks = w.len() / pbb;
    debug_assert!(xs.iter().all(|x| x.len() >= blocks));
    let nibble16 = _mm256_set1_epi16(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..blocks {
        // SAFETY: as in tile_q4k.
        unsafe {
            let block = w.as_ptr().add(b * pbb);
            let mut sumi = [_mm256_setzero_si256(); R];
            // Q2_K: sum(minimum x activation sums); Q3_K: sum(scale x activation sums), as
            // the values are stored plus 4.
            let mut side = [_mm256_setzero_si256(); R];
            for u in 0..8 {
                let scales = if THREE {
                    pair_i8(block.add(Q3K_SCALES + 16 * u))
                } else {
                    let both = pair_u8(block.add(Q2K_SCALES + 16 * u));
                    let mins = _mm256_srli_epi16(both, 4);
                    for j in 0..R {
                        let pair = broadcast_pair(&xs[j][b].bsums, 2 * u);
                        side[j] = _mm256_dpwssd_epi32(side[j], mins, pair);
                    }
                    _mm256_and_si256(both, nibble16)
                };
                if THREE {
                    for j in 0..R {
                        let pair = broadcast_pair(&xs[j][b].bsums, 2 * u);
                        side[j] = _mm256_dpwssd_epi32(side[j], scales, pair);
                    }
                }
                let (sc_lo, sc_hi) = split_pairs(scales);
                let unit = block.add(values + unit_bytes * u);
                let mut t_lo = [_mm256_setzero_si256(); R];
                let mut t_hi = [_mm256_setzero_si256(); R];
                for quad in 0..8 {
                    let v = q2k3k_values::<THREE>(unit, quad);
                    for j in 0..R {
                        let x = broadcast4(&xs[j][b], 32 * u + 4 * quad);
                        if quad < 4 {
                            t_lo[j] = _mm256_dpbusd_epi32(t_lo[j], v, x);
                        } else {
                            t_hi[j] = _mm256_dpbusd_epi32(t_hi[j], v, x);
                        }
                    }
                }
                for j in 0..R {
                    let p = _mm256_add_epi32(
                        _mm256_mullo_epi32(t_lo[j], sc_lo),
                        _mm256_mullo_epi32(t_hi[j], sc_hi),
                    );
                    sumi[j] = _mm256_add_epi32(sumi[j], p);
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(block as *const __m128i));
            for j in 0..R {
                let xd = _mm256_set1_ps(xs[j][b].d);
                if THREE {
                    let total = _mm256_sub_epi32(sumi[j], _mm256_slli_epi32(side[j], 2));
                    let scale = _mm256_mul_ps(xd, d);
                    acc[j] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(total), acc[j]);
                } else {
                    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(block.add(16) as *const __m128i));
                    let pos = _mm256_mul_ps(_mm256_mul_ps(xd, d), _mm256_cvtepi32_ps(sumi[j]));
                    let neg = _mm256_mul_ps(_mm256_mul_ps(xd, dmin), _mm256_cvtepi32_ps(side[j]));
                    acc[j] = _mm256_add_ps(acc[j], _mm256_sub_ps(pos, neg));
                }
            }
        }
    }
    store(acc)
}

#[inline]
#[target_feature(enable = "avx2")]
fn store<const R: usize>(acc: [__m256; R]) -> [[f32; 8]; R] {
    let mut out = [[0f32; 8]; R];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: o holds 8 f32.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
    }
    out
}
