//! bf16 weights repacked sixteen rows at a time in pairs of inputs: for each pair (2p,
//! 2p+1), the sixteen rows' two values side by side, the layout of AVX-512 BF16's
//! `vdpbf16ps`, whose lane r adds row r's pair times the pair of activations broadcast to
//! every lane. Activations are rounded to bf16 first, as llama.cpp does before its bf16
//! products.
//!
//! One definition of the sums, the instruction's: per lane, per pair, the odd input's
//! product added first, then the even one's, each product unrounded and each sum rounded
//! to nearest even (a fused multiply-add: where a product overflows f32 the instruction
//! gives what the fused form gives, which the tests check); values below f32's smallest
//! normal (2^-126) read as zero and sums there are flushed to zero. Weights and activations
//! that small are flushed when they are packed or rounded, so the AVX2 kernel (two
//! multiply-adds per pair, in the same order) gives the same bits wherever no running sum
//! falls below 2^-126, where only the instruction flushes it.

use half::bf16;
use rayon::prelude::*;

use crate::packed::{for_each_tile, PackError};
use crate::packed_f16::{halves, Halves};
use crate::storage::Storage;

/// Rows interleaved in one group.
pub const LANES: usize = 16;

/// An (n, k) bf16 weight matrix in the pair-interleaved layout.
pub struct PackedBf16 {
    n: usize,
    k: usize,
    /// bf16 bits: group g, pair p, lane r, element e (input 2p + e) at
    /// ((g * pairs + p) * 16 + r) * 2 + e; an odd k's last pair ends in a zero.
    data: Halves,
}

/// Pairs of inputs of a row of k.
pub fn pairs(k: usize) -> usize {
    k.div_ceil(2)
}

/// bf16 bits with a subnormal value flushed to a zero of its sign (the instruction reads
/// such inputs as zero).
fn flush_subnormal(bits: u16) -> u16 {
    if bits & 0x7f80 == 0 {
        bits & 0x8000
    } else {
        bits
    }
}

impl PackedBf16 {
    /// Repacks `rows`: n row-major rows of k bf16 values, little-endian bytes as GGUF and
    /// safetensors store them. Subnormal weights (below 2^-126) become zeros.
    pub fn pack(rows: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        if n.checked_mul(k).and_then(|e| e.checked_mul(2)) != Some(rows.len()) || k == 0 {
            return Err(PackError::RowBytes {
                format: "BF16".into(),
                n,
                k,
                bytes: rows.len(),
            });
        }
        let group_len = pairs(k) * LANES * 2;
        let mut data = vec![0u16; n.div_ceil(LANES) * group_len];
        data.par_chunks_mut(group_len)
            .enumerate()
            .for_each(|(g, group)| {
                for lane in 0..LANES.min(n - g * LANES) {
                    let row = &rows[2 * (g * LANES + lane) * k..][..2 * k];
                    for (i, v) in row.chunks_exact(2).enumerate() {
                        let bits = flush_subnormal(u16::from_le_bytes([v[0], v[1]]));
                        group[((i / 2) * LANES + lane) * 2 + i % 2] = bits;
                    }
                }
            });
        Ok(Self {
            n,
            k,
            data: Halves::Owned(data),
        })
    }

    /// A matrix already in the packed layout (as [`Self::packed_bytes`] gave it): the
    /// bytes must be 2-byte aligned.
    pub fn from_packed(n: usize, k: usize, data: Storage) -> Result<Self, PackError> {
        let expected = n
            .div_ceil(LANES)
            .checked_mul(pairs(k))
            .and_then(|e| e.checked_mul(LANES * 2));
        match halves(data.as_bytes()) {
            Some(h) if Some(h.len()) == expected && k > 0 => Ok(Self {
                n,
                k,
                data: Halves::Shared(data),
            }),
            _ => Err(PackError::PackedBytes {
                format: "BF16".into(),
                n,
                k,
                bytes: data.len(),
            }),
        }
    }

    /// The packed layout's bytes (little-endian bf16).
    pub fn packed_bytes(&self) -> &[u8] {
        self.data.as_bytes()
    }

    /// Whether the bytes are a region of a shared buffer (a mapped cache file).
    pub fn is_shared(&self) -> bool {
        self.data.is_shared()
    }

    /// (output rows, input width).
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    pub(crate) fn group(&self, g: usize) -> &[u16] {
        let len = pairs(self.k) * LANES * 2;
        &self.data.as_slice()[g * len..(g + 1) * len]
    }

    /// Row `r` as f32 into `out` (k values). Panics if r >= n.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.n && out.len() == self.k);
        let group = self.group(r / LANES);
        for (i, o) in out.iter_mut().enumerate() {
            *o = bf16::from_bits(group[((i / 2) * LANES + r % LANES) * 2 + i % 2]).to_f32();
        }
    }

    /// `y[t * n + o] = dot(W[o], bf16(x[t]))` for m activation rows x (m, k); y is (m, n).
    /// Panics if the sizes disagree; callers check shapes first.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let k = self.k;
        assert!(x.len() == m * k && y.len() == m * self.n);
        let p = pairs(k);
        let mut xb = vec![0u32; m * p];
        xb.par_chunks_mut(p)
            .zip(x.par_chunks(k))
            .for_each(|(out, row)| round_to_bf16_pairs(row, out));
        let x_row = |t: usize| &xb[t * p..(t + 1) * p];
        for_each_tile(self.n, m, y, |g, t, out| {
            let w = self.group(g);
            match out {
                [o] => *o = tile(w, [x_row(t)])[0],
                [o0, o1, o2, o3] => {
                    [*o0, *o1, *o2, *o3] =
                        tile(w, [x_row(t), x_row(t + 1), x_row(t + 2), x_row(t + 3)])
                }
                _ => unreachable!("tiles are one or four rows"),
            }
        });
    }
}

/// One activation rounded to bf16 as ggml rounds (nearest, ties to even; a NaN stays a
/// quiet NaN), then flushed to zero below 2^-126 as the instruction reads it.
pub fn round_to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    flush_subnormal((u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16)
}

/// A row of activations as pairs: `out[p]` holds input 2p's bf16 in its low half and
/// input 2p+1's in its high half (zero past the row's end). Panics unless `out` holds
/// `pairs(x.len())` values.
pub fn round_to_bf16_pairs(x: &[f32], out: &mut [u32]) {
    assert_eq!(out.len(), pairs(x.len()), "pairs of the wrong length");
    for (o, pair) in out.iter_mut().zip(x.chunks(2)) {
        let low = u32::from(round_to_bf16(pair[0]));
        let high = pair.get(1).map_or(0, |&v| u32::from(round_to_bf16(v)));
        *o = low | high << 16;
    }
}

/// Activation rows a prompt tile takes at once: eight with AVX-512 BF16 (one load and
/// eight `vdpbf16ps` per pair, the accumulators in 8 of 32 registers), four with AVX2.
pub fn prompt_tile_rows() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::avx512_bf16_available() {
            return 8;
        }
    }
    4
}

/// One row group against R activation rows (each `pairs(k)` pairs): out[j][lane].
pub(crate) fn tile<const R: usize>(w: &[u16], xs: [&[u32]; R]) -> [[f32; LANES]; R] {
    // The kernels read activations unchecked: every row must be as long as the group.
    assert!(xs.iter().all(|x| x.len() * LANES * 2 == w.len()));
    #[cfg(target_arch = "x86_64")]
    {
        if crate::avx512_bf16_available() {
            // SAFETY: the CPU supports AVX-512 F and BF16 (checked above); w holds
            // xs[j].len() * 32 values (asserted above).
            return unsafe { avx512::tile(w, xs) };
        }
        if crate::avx2_available() {
            // SAFETY: the CPU supports AVX2 and FMA (checked above); w holds
            // xs[j].len() * 32 values (asserted above).
            return unsafe { avx2::tile(w, xs) };
        }
    }
    xs.map(|x| tile_ref(w, x))
}

/// `v`, or a zero of its sign if it is subnormal.
fn flush(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0f32.copysign(v)
    } else {
        v
    }
}

/// Plain reference, the instruction's order: per lane and pair, the odd input's product
/// added, then the even one's (fused), subnormal inputs read as zero and subnormal sums
/// flushed.
fn tile_ref(w: &[u16], x: &[u32]) -> [f32; LANES] {
    let value = |bits: u16| flush(bf16::from_bits(bits).to_f32());
    let mut acc = [0f32; LANES];
    for (&xp, ws) in x.iter().zip(w.chunks_exact(LANES * 2)) {
        let (x0, x1) = (value(xp as u16), value((xp >> 16) as u16));
        for (a, w) in acc.iter_mut().zip(ws.chunks_exact(2)) {
            *a = flush(value(w[1]).mul_add(x1, flush(*a)));
            *a = flush(value(w[0]).mul_add(x0, *a));
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::LANES;

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile<const R: usize>(w: &[u16], xs: [&[u32]; R]) -> [[f32; LANES]; R] {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            let pairs = w.len() / (LANES * 2);
            let wp = w.as_ptr();
            let xp = xs.map(|x| x.as_ptr());
            let mut acc = [_mm512_setzero_ps(); R];
            for p in 0..pairs {
                let wv: __m512bh = std::mem::transmute(_mm512_loadu_si512(
                    wp.add(p * LANES * 2) as *const __m512i
                ));
                for j in 0..R {
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*xp[j].add(p) as i32));
                    acc[j] = _mm512_dpbf16_ps(acc[j], wv, x);
                }
            }
            let mut out = [[0f32; LANES]; R];
            for j in 0..R {
                _mm512_storeu_ps(out[j].as_mut_ptr(), acc[j]);
            }
            out
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// The odd elements of each 32-bit pair are the high halves (already an f32's bit
    /// pattern once the low half is cleared), the even ones the low halves shifted up.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(w: &[u16], xs: [&[u32]; R]) -> [[f32; LANES]; R] {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            let pairs = w.len() / (LANES * 2);
            let wp = w.as_ptr();
            let xp = xs.map(|x| x.as_ptr());
            let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for p in 0..pairs {
                let at = wp.add(p * LANES * 2);
                let raw = [
                    _mm256_loadu_si256(at as *const __m256i),
                    _mm256_loadu_si256(at.add(LANES) as *const __m256i),
                ];
                let odd = raw.map(|v| _mm256_castsi256_ps(_mm256_and_si256(v, high)));
                let even = raw.map(|v| _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
                for j in 0..R {
                    let xb = _mm256_set1_epi32(*xp[j].add(p) as i32);
                    let x1 = _mm256_castsi256_ps(_mm256_and_si256(xb, high));
                    let x0 = _mm256_castsi256_ps(_mm256_slli_epi32(xb, 16));
                    for h in 0..2 {
                        acc[j][h] = _mm256_fmadd_ps(odd[h], x1, acc[j][h]);
                        acc[j][h] = _mm256_fmadd_ps(even[h], x0, acc[j][h]);
                    }
                }
            }
            let mut out = [[0f32; LANES]; R];
            for j in 0..R {
                _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j][0]);
                _mm256_storeu_ps(out[j].as_mut_ptr().add(8), acc[j][1]);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn bytes(bits: &[u16]) -> Vec<u8> {
        bits.iter().flat_map(|b| b.to_le_bytes()).collect()
    }

    /// bf16 weights with extremes among them: values far beyond f16's range both ways
    /// (3e30, 1e-30), zeros of both signs, a subnormal (read as zero).
    fn weights(rng: &mut impl Rng, n: usize, k: usize) -> Vec<u16> {
        (0..n * k)
            .map(|i| match i % 17 {
                0 => bf16::from_f32(3e30).to_bits(),
                3 => bf16::from_f32(-1e-30).to_bits(),
                1 => 0x8000,
                2 => 0x0001,
                _ => bf16::from_f32(rng.random_range(-1.0..1.0)).to_bits(),
            })
            .collect()
    }

    #[test]
    fn packing_keeps_every_row_and_rejects_wrong_sizes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for &(n, k) in &[(1, 1), (8, 5), (13, 64), (17, 3)] {
            let w = weights(&mut rng, n, k);
            let p = PackedBf16::pack(&bytes(&w), n, k).unwrap();
            let mut row = vec![0f32; k];
            for r in 0..n {
                p.dequantize_row(r, &mut row);
                let want: Vec<f32> = w[r * k..(r + 1) * k]
                    .iter()
                    .map(|&b| flush(bf16::from_bits(b).to_f32()))
                    .collect();
                assert_eq!(row, want, "({n},{k}) row {r}");
            }
            let again =
                PackedBf16::from_packed(n, k, Storage::Owned(p.packed_bytes().to_vec())).unwrap();
            assert_eq!(again.packed_bytes(), p.packed_bytes());
        }
        assert!(PackedBf16::pack(&[0; 11], 2, 3).is_err());
        assert!(PackedBf16::pack(&[], 1, 0).is_err());
        let p = PackedBf16::pack(&[0; 12], 2, 3).unwrap();
        let short = Storage::Owned(p.packed_bytes()[2..].to_vec());
        assert!(PackedBf16::from_packed(2, 3, short).is_err());
    }

    #[test]
    fn activations_round_as_ggml_does() {
        // Ties to even, both ways; a carry into the exponent; NaN kept quiet; infinities;
        // a subnormal flushed with its sign.
        let cases: [(f32, u16); 8] = [
            (1.0, 0x3f80),
            (f32::from_bits(0x3f80_8000), 0x3f80),
            (f32::from_bits(0x3f81_8000), 0x3f82),
            (f32::from_bits(0x3fff_ffff), 0x4000),
            (f32::NAN, 0x7fc0),
            (f32::NEG_INFINITY, 0xff80),
            (-1e-39, 0x8000),
            (f32::MAX, 0x7f80),
        ];
        for (v, want) in cases {
            assert_eq!(round_to_bf16(v), want, "{v:e}");
        }
        let mut out = [0u32; 2];
        round_to_bf16_pairs(&[1.0, -2.0, 3.0], &mut out);
        assert_eq!(out, [0x3f80 | 0xc000 << 16, 0x4040]);
    }

    /// Every vector tile the machine runs, at one, four and eight rows, against the
    /// reference bit for bit: weights beyond f16's range, zeros, subnormals, odd lengths,
    /// activations spanning signs and magnitudes.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_tiles_equal_the_reference_bit_for_bit() {
        fn check<const R: usize>(w: &[u16], x: &[Vec<u32>]) -> usize {
            let xs: [&[u32]; R] = std::array::from_fn(|j| x[j].as_slice());
            let want = xs.map(|x| tile_ref(w, x).map(f32::to_bits));
            let mut checked = 0;
            if crate::simd_test_runs("bf16 AVX2 tile") {
                // SAFETY: AVX2 and FMA are present (checked); each row holds w.len() / 32
                // pairs.
                let got = unsafe { avx2::tile(w, xs) };
                assert_eq!(got.map(|r| r.map(f32::to_bits)), want, "AVX2, {R} rows");
                checked += 1;
            }
            if crate::avx512_bf16_test_runs("bf16 AVX-512 tile") {
                // SAFETY: AVX-512 F and BF16 are present (checked); each row holds
                // w.len() / 32 pairs.
                let got = unsafe { avx512::tile(w, xs) };
                assert_eq!(got.map(|r| r.map(f32::to_bits)), want, "AVX-512, {R} rows");
                checked += 1;
            }
            checked
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for k in [1, 7, 64, 577] {
            let w = weights(&mut rng, LANES, k);
            let p = PackedBf16::pack(&bytes(&w), LANES, k).unwrap();
            let x: Vec<Vec<u32>> = (0..8)
                .map(|_| {
                    let row: Vec<f32> = (0..k)
                        .map(|_| {
                            rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-6..4))
                        })
                        .collect();
                    let mut out = vec![0u32; pairs(k)];
                    round_to_bf16_pairs(&row, &mut out);
                    out
                })
                .collect();
            let ran = check::<1>(p.group(0), &x) + check::<4>(p.group(0), &x);
            let ran = ran + check::<8>(p.group(0), &x);
            let finite = (0..8).all(|j| tile_ref(p.group(0), &x[j]).iter().all(|v| v.is_finite()));
            assert!(
                finite,
                "k={k}: the sums overflowed, so their order went untested"
            );
            eprintln!("k={k}: {ran} tile variants compared");
        }
        // Overflowing products: the largest bf16 weight times activations beyond 1, signs
        // mixed, so infinities of both signs meet (the instruction's result is the fused
        // form's, unrounded products).
        let w: Vec<u16> = (0..LANES * 7)
            .map(|i| match i % 3 {
                0 => bf16::MAX.to_bits(),
                1 => (-bf16::MAX).to_bits(),
                _ => bf16::from_f32(0.5).to_bits(),
            })
            .collect();
        let p = PackedBf16::pack(&bytes(&w), LANES, 7).unwrap();
        let x: Vec<Vec<u32>> = (0..8)
            .map(|j| {
                let row: Vec<f32> = (0..7).map(|i| ((i * 5 + j) % 7) as f32 - 3.0).collect();
                let mut out = vec![0u32; pairs(7)];
                round_to_bf16_pairs(&row, &mut out);
                out
            })
            .collect();
        check::<8>(p.group(0), &x);
    }

    #[test]
    fn matmul_matches_a_plain_f64_product_and_rows_do_not_depend_on_the_batch() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for &(n, k, m) in &[
            (1, 1, 1),
            (37, 64, 1),
            (9, 7, 5),
            (40, 576, 9),
            (16, 33, 37),
        ] {
            let w: Vec<u16> = (0..n * k)
                .map(|_| bf16::from_f32(rng.random_range(-1.0..1.0)).to_bits())
                .collect();
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
            let p = PackedBf16::pack(&bytes(&w), n, k).unwrap();
            let mut y = vec![f32::NAN; m * n];
            p.matmul(&x, m, &mut y);
            for t in 0..m {
                let xt = &x[t * k..(t + 1) * k];
                let mut one = vec![f32::NAN; n];
                p.matmul(xt, 1, &mut one);
                assert_eq!(one, y[t * n..(t + 1) * n], "({n},{k},{m}) row {t}");
                for o in 0..n {
                    let exact: f64 = (0..k)
                        .map(|i| {
                            let xi = bf16::from_bits(round_to_bf16(xt[i])).to_f32();
                            f64::from(bf16::from_bits(w[o * k + i]).to_f32()) * f64::from(xi)
                        })
                        .sum();
                    let got = y[t * n + o];
                    assert!(
                        (f64::from(got) - exact).abs() <= 1e-5 * (k as f64).sqrt() * 3.0,
                        "({n},{k},{m}) [{t},{o}] {got} vs {exact}"
                    );
                }
            }
        }
    }
}
