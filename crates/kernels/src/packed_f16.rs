//! f16 weights repacked sixteen rows at a time: for each input index, the sixteen rows'
//! values side by side, so two F16C conversions give two vectors whose lanes are sixteen
//! outputs and one broadcast activation meets each in a fused multiply-add. Activations are
//! rounded to f16 first, as llama.cpp does before its f16 products; sums are f32, one
//! chain per output in input order, so a row sees the same operations alone or in a tile.
//!
//! Sixteen rows, not eight as the block formats: a tile of 16 rows by 4 activation rows
//! issues 8 multiply-adds per 6 loads, where 8 rows by 4 issued 4 per 5 and the prompt
//! path was bound by loads (measured 283 vs llama.cpp's 371 tokens/s).
//!
//! With AVX-512 F one conversion gives all sixteen lanes and the 32 registers hold eight
//! activation rows' accumulators: a prompt tile of 16 x 8 issues one conversion per eight
//! multiply-adds where AVX2's 16 x 4 issued two per eight (pp512 of the f16 file 1.07-1.28x
//! in six alternated pairs on a Zen 4, whose 512-bit multiply-adds run at the same rate as
//! two 256-bit ones).

use half::f16;
use rayon::prelude::*;

use crate::packed::{for_each_tile, PackError};
use crate::storage::Storage;

/// Rows interleaved in one group.
pub const LANES: usize = 16;

/// An (n, k) f16 weight matrix in the interleaved layout.
pub struct PackedF16 {
    n: usize,
    k: usize,
    /// f16 bits: group g, input i, lane r at (g * k + i) * 16 + r.
    data: Halves,
}

/// The f16 (or bf16) bits, in memory or in a shared buffer (little-endian, 2-byte
/// aligned).
pub(crate) enum Halves {
    Owned(Vec<u16>),
    Shared(Storage),
}

impl Halves {
    pub(crate) fn as_slice(&self) -> &[u16] {
        match self {
            Self::Owned(v) => v,
            Self::Shared(s) => halves(s.as_bytes()).unwrap_or(&[]),
        }
    }

    /// The bits as little-endian bytes (the packed layout a cache file holds).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        let h = self.as_slice();
        // SAFETY: u8 has no alignment or validity requirement; the length is in bytes.
        unsafe { std::slice::from_raw_parts(h.as_ptr() as *const u8, 2 * h.len()) }
    }

    /// Whether the bits are a region of a shared buffer (a mapped cache file).
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Self::Shared(_))
    }
}

/// `bytes` read as u16s, if they are 2-byte aligned and whole (and the CPU little-endian,
/// as the file is).
pub(crate) fn halves(bytes: &[u8]) -> Option<&[u16]> {
    let aligned = bytes.as_ptr().align_offset(std::mem::align_of::<u16>()) == 0;
    if !aligned || !bytes.len().is_multiple_of(2) || cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: the pointer is 2-byte aligned and the length whole (checked above); every bit
    // pattern is a valid u16; the slice borrows `bytes`.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const u16, bytes.len() / 2) })
}

impl PackedF16 {
    /// Repacks `rows`: n row-major rows of k f16 values, little-endian bytes as GGUF stores
    /// them.
    pub fn pack(rows: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        if n.checked_mul(k).and_then(|e| e.checked_mul(2)) != Some(rows.len()) || k == 0 {
            return Err(PackError::RowBytes {
                format: "F16".into(),
                n,
                k,
                bytes: rows.len(),
            });
        }
        let mut data = vec![0u16; n.div_ceil(LANES) * k * LANES];
        data.par_chunks_mut(k * LANES)
            .enumerate()
            .for_each(|(g, group)| {
                for lane in 0..LANES.min(n - g * LANES) {
                    let row = &rows[2 * (g * LANES + lane) * k..][..2 * k];
                    for (i, v) in row.chunks_exact(2).enumerate() {
                        group[i * LANES + lane] = u16::from_le_bytes([v[0], v[1]]);
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
            .checked_mul(k)
            .and_then(|e| e.checked_mul(LANES));
        match halves(data.as_bytes()) {
            Some(h) if Some(h.len()) == expected && k > 0 => Ok(Self {
                n,
                k,
                data: Halves::Shared(data),
            }),
            _ => Err(PackError::PackedBytes {
                format: "F16".into(),
                n,
                k,
                bytes: data.len(),
            }),
        }
    }

    /// The packed layout's bytes (little-endian f16).
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
        &self.data.as_slice()[g * self.k * LANES..(g + 1) * self.k * LANES]
    }

    /// Row `r` as f32 into `out` (k values). Panics if r >= n.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.n && out.len() == self.k);
        let group = self.group(r / LANES);
        for (i, o) in out.iter_mut().enumerate() {
            *o = f16::from_bits(group[i * LANES + r % LANES]).to_f32();
        }
    }

    /// `y[t * n + o] = dot(W[o], f16(x[t]))` for m activation rows x (m, k); y is (m, n).
    /// Panics if the sizes disagree; callers check shapes first.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let k = self.k;
        assert!(x.len() == m * k && y.len() == m * self.n);
        let mut xh = x.to_vec();
        if m == 1 {
            round_to_f16(&mut xh);
        } else {
            xh.par_chunks_mut(k).for_each(round_to_f16);
        }
        let x_row = |t: usize| &xh[t * k..(t + 1) * k];
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

/// Rounds every value to the nearest f16 (ties to even), kept as f32.
pub fn round_to_f16(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::avx2_available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
            unsafe { avx2::round_to_f16(x) };
            return;
        }
    }
    for v in x {
        *v = f16::from_f32(*v).to_f32();
    }
}

/// Activation rows a prompt tile takes at once: eight where the 512-bit tile runs (one
/// conversion and eight multiply-adds of sixteen lanes per input, the accumulators in 8 of
/// its 32 registers), four with AVX2 (whose 16 registers hold 8 accumulators of 8 lanes).
pub fn prompt_tile_rows() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::avx512f_available() {
            return 8;
        }
    }
    4
}

/// One row group against R activation rows: out[j][lane].
pub(crate) fn tile<const R: usize>(w: &[u16], xs: [&[f32]; R]) -> [[f32; LANES]; R] {
    #[cfg(target_arch = "x86_64")]
    {
        // The kernel reads activations unchecked: every row must be as long as the group.
        assert!(xs.iter().all(|x| x.len() * LANES == w.len()));
        if crate::avx512f_available() {
            // SAFETY: the CPU supports AVX-512 F, AVX2, FMA and F16C (checked above); w
            // holds xs[j].len() * 16 values (asserted above).
            return unsafe { avx512::tile(w, xs) };
        }
        if crate::avx2_available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above); w holds
            // xs[j].len() * 16 values (asserted above).
            return unsafe { avx2::tile(w, xs) };
        }
    }
    xs.map(|x| tile_ref(w, x))
}

/// Plain reference: per lane, inputs summed in order. A product of two f16 values is exact
/// in f32 (11 + 11 significant bits), so the vector kernels' fused multiply-adds round only
/// the sums, as this does: they agree bit for bit.
fn tile_ref(w: &[u16], x: &[f32]) -> [f32; LANES] {
    let mut acc = [0f32; LANES];
    for (&x, ws) in x.iter().zip(w.chunks_exact(LANES)) {
        for (a, &w) in acc.iter_mut().zip(ws) {
            *a = f16::from_bits(w).to_f32().mul_add(x, *a);
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::LANES;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn round_to_f16(x: &mut [f32]) {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            let mut chunks = x.chunks_exact_mut(8);
            for c in &mut chunks {
                let v = _mm256_loadu_ps(c.as_ptr());
                let r = _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
                _mm256_storeu_ps(c.as_mut_ptr(), r);
            }
            for v in chunks.into_remainder() {
                *v = half::f16::from_f32(*v).to_f32();
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<const R: usize>(w: &[u16], xs: [&[f32]; R]) -> [[f32; LANES]; R] {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            let k = w.len() / LANES;
            debug_assert!(xs.iter().all(|x| x.len() == k));
            let wp = w.as_ptr();
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for i in 0..k {
                let raw = _mm256_loadu_si256(wp.add(i * LANES) as *const __m256i);
                let w0 = _mm256_cvtph_ps(_mm256_castsi256_si128(raw));
                let w1 = _mm256_cvtph_ps(_mm256_extracti128_si256(raw, 1));
                for j in 0..R {
                    let x = _mm256_set1_ps(*xs[j].get_unchecked(i));
                    acc[j][0] = _mm256_fmadd_ps(w0, x, acc[j][0]);
                    acc[j][1] = _mm256_fmadd_ps(w1, x, acc[j][1]);
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

/// Sixteen lanes in one register: the same multiply-adds as the AVX2 tile, lane for lane
/// and input by input, so the results are the same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::LANES;

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn tile<const R: usize>(w: &[u16], xs: [&[f32]; R]) -> [[f32; LANES]; R] {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            let k = w.len() / LANES;
            debug_assert!(xs.iter().all(|x| x.len() == k));
            let wp = w.as_ptr();
            let xp = xs.map(|x| x.as_ptr());
            let mut acc = [_mm512_setzero_ps(); R];
            for i in 0..k {
                let halves = _mm256_loadu_si256(wp.add(i * LANES) as *const __m256i);
                let wv = _mm512_cvtph_ps(halves);
                for j in 0..R {
                    let x = _mm512_set1_ps(*xp[j].add(i));
                    acc[j] = _mm512_fmadd_ps(wv, x, acc[j]);
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

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn bytes(bits: &[u16]) -> Vec<u8> {
        bits.iter().flat_map(|b| b.to_le_bytes()).collect()
    }

    fn weights(rng: &mut impl Rng, n: usize, k: usize) -> Vec<u16> {
        (0..n * k)
            .map(|i| match i % 13 {
                0 => f16::MAX.to_bits(),
                1 => 0,
                2 => f16::from_f32(-6e-8).to_bits(),
                _ => f16::from_f32(rng.random_range(-1.0..1.0)).to_bits(),
            })
            .collect()
    }

    #[test]
    fn packing_keeps_every_row_and_rejects_wrong_sizes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for &(n, k) in &[(1, 1), (8, 5), (13, 64), (17, 3)] {
            let w = weights(&mut rng, n, k);
            let p = PackedF16::pack(&bytes(&w), n, k).unwrap();
            let mut row = vec![0f32; k];
            for r in 0..n {
                p.dequantize_row(r, &mut row);
                let want: Vec<f32> = w[r * k..(r + 1) * k]
                    .iter()
                    .map(|&b| f16::from_bits(b).to_f32())
                    .collect();
                assert_eq!(row, want, "({n},{k}) row {r}");
            }
        }
        assert!(PackedF16::pack(&[0; 11], 2, 3).is_err());
        assert!(PackedF16::pack(&[], 1, 0).is_err());
    }

    #[test]
    fn matmul_matches_a_plain_f64_product_and_the_reference_tile() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for &(n, k, m) in &[
            (1, 1, 1),
            (37, 64, 1),
            (9, 7, 5),
            (40, 576, 9),
            (16, 33, 37),
        ] {
            let w: Vec<u16> = (0..n * k)
                .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)).to_bits())
                .collect();
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
            let p = PackedF16::pack(&bytes(&w), n, k).unwrap();
            let mut y = vec![f32::NAN; m * n];
            p.matmul(&x, m, &mut y);
            for t in 0..m {
                let xt: Vec<f32> = x[t * k..(t + 1) * k]
                    .iter()
                    .map(|&v| f16::from_f32(v).to_f32())
                    .collect();
                let reference = tile_ref(p.group(0), &xt);
                for o in 0..n {
                    let exact: f64 = (0..k)
                        .map(|i| {
                            f64::from(f16::from_bits(w[o * k + i]).to_f32()) * f64::from(xt[i])
                        })
                        .sum();
                    let got = y[t * n + o];
                    assert!(
                        (f64::from(got) - exact).abs() <= 1e-5 * (k as f64).sqrt() * 3.0,
                        "({n},{k},{m}) [{t},{o}] {got} vs {exact}"
                    );
                    if o < LANES {
                        assert_eq!(got.to_bits(), reference[o].to_bits(), "[{t},{o}]");
                    }
                }
            }
        }
    }

    /// Every vector tile the machine runs, at one, four and eight rows, against the
    /// reference bit for bit: extremes, zeros and f16 subnormals among the weights,
    /// activations spanning signs and magnitudes, odd lengths.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_tiles_equal_the_reference_bit_for_bit() {
        fn check<const R: usize>(w: &[u16], x: &[Vec<f32>]) -> usize {
            let xs: [&[f32]; R] = std::array::from_fn(|j| x[j].as_slice());
            let want = xs.map(|x| tile_ref(w, x));
            let mut checked = 0;
            if crate::simd_test_runs("f16 AVX2 tile") {
                // SAFETY: AVX2, FMA and F16C are present (checked); each row holds
                // w.len() / 16 values.
                let got = unsafe { avx2::tile(w, xs) };
                assert_eq!(
                    got.map(|r| r.map(f32::to_bits)),
                    want.map(|r| r.map(f32::to_bits))
                );
                checked += 1;
            }
            if crate::avx512f_test_runs("f16 AVX-512 tile") {
                // SAFETY: AVX-512 F, AVX2, FMA and F16C are present (checked); each row
                // holds w.len() / 16 values.
                let got = unsafe { avx512::tile(w, xs) };
                assert_eq!(
                    got.map(|r| r.map(f32::to_bits)),
                    want.map(|r| r.map(f32::to_bits))
                );
                checked += 1;
            }
            checked
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for k in [1, 7, 64, 577] {
            let w = weights(&mut rng, LANES, k);
            let p = PackedF16::pack(&bytes(&w), LANES, k).unwrap();
            let x: Vec<Vec<f32>> = (0..8)
                .map(|_| {
                    let mut row: Vec<f32> = (0..k)
                        .map(|_| {
                            rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-6..4))
                        })
                        .collect();
                    round_to_f16(&mut row);
                    row
                })
                .collect();
            let ran = check::<1>(p.group(0), &x) + check::<4>(p.group(0), &x);
            let ran = ran + check::<8>(p.group(0), &x);
            eprintln!("k={k}: {ran} tile variants compared");
        }
    }

    #[test]
    fn rows_do_not_depend_on_the_batch_and_extremes_stay_finite() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (n, k, m) = (24, 50, 9);
        let w = weights(&mut rng, n, k);
        let p = PackedF16::pack(&bytes(&w), n, k).unwrap();
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1e-3..1e-3)).collect();
        let mut all = vec![0f32; m * n];
        p.matmul(&x, m, &mut all);
        assert!(all.iter().all(|v| v.is_finite()));
        for t in 0..m {
            let mut one = vec![0f32; n];
            p.matmul(&x[t * k..(t + 1) * k], 1, &mut one);
            assert_eq!(one, all[t * n..(t + 1) * n], "row {t}");
        }
    }
}
