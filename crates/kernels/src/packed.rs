//! Quantized weights repacked eight rows at a time, so that one 256-bit register holds the
//! same four values of eight rows and its eight lanes are eight outputs.
//!
//! Row-major blocks (ggml's layout) make every dot product end in a horizontal sum and pay
//! one scale multiply per row and block; the prompt path spent most of its time there and
//! in re-reading activations from cache. Interleaved, one broadcast of four activation
//! bytes meets eight rows in one `maddubs`, the eight rows' scales are one vector, and
//! results are stored eight at a time (llama.cpp repacks Q4_0 the same way on AVX2).
//!
//! A packed block of eight rows holds their f16 scales (8 x 2 bytes), for Q4_1 their f16
//! minimums (8 x 2 bytes), then the values in 32-byte groups: group g's lane r holds bytes
//! 4g..4g+4 of row r's block (Q4_0/Q4_1: 16 nibble bytes, so 4 groups, the low nibbles
//! being values 4g.. and the high ones 16 + 4g..; Q8_0: 32 bytes, so 8 groups). Rows past
//! `n` in the last group are zero. Q5_0 and Q5_1 are stored as Q4_0 and Q4_1, followed by
//! one more group holding the fifth bits: byte b of lane r holds, in bit g, the fifth bit
//! of value 4g + b and in bit 4 + g that of value 16 + 4g + b. The size equals the
//! row-major one.

use half::f16;
use rayon::prelude::*;

use crate::format::WeightFormat;
use crate::q8_1::{quantize_row_q8_1, BlockQ8_1, QK};
use crate::storage::Storage;

/// Rows interleaved in one packed block.
pub const LANES: usize = 8;

/// Output rows per parallel task when there is one activation row.
const DECODE_GROUPS_PER_TASK: usize = 2;
/// Activation rows and row groups per parallel task otherwise: the task's activations and
/// weights stay in L2 while every 8 x 4 tile is computed.
const TASK_ROWS: usize = 32;
const TASK_GROUPS: usize = 8;

impl WeightFormat {
    /// Bytes of the scales (and minimums) that open a packed block.
    pub(crate) fn header_bytes(self) -> usize {
        match self {
            Self::Q4_1 | Self::Q5_1 => 2 * 2 * LANES,
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 => 2 * LANES,
        }
    }

    /// Bytes of one packed block of eight rows.
    pub(crate) fn packed_block_bytes(self) -> usize {
        LANES * self.block_bytes()
    }

    /// Bytes of the f16 scale (and minimum) that open a row-major block.
    fn scale_bytes(self) -> usize {
        self.header_bytes() / LANES
    }

    /// Whether values have a fifth bit (stored after the nibble groups when packed).
    fn has_high_bits(self) -> bool {
        matches!(self, Self::Q5_0 | Self::Q5_1)
    }

    /// Byte offset of the 32 values (or 16 nibble bytes) inside a row-major block.
    fn values_offset(self) -> usize {
        self.block_bytes() - self.value_bytes()
    }

    /// Bytes of values in one row-major block.
    fn value_bytes(self) -> usize {
        match self {
            Self::Q8_0 => QK,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 => QK / 2,
        }
    }
}

/// The kernels' error (kept under its earlier name for the packing functions).
pub use crate::error::KernelError as PackError;

/// An (n, k) weight matrix in the interleaved layout.
pub struct PackedMatrix {
    format: WeightFormat,
    n: usize,
    k: usize,
    data: Storage,
}

impl PackedMatrix {
    /// Repacks `rows`: n row-major rows of k / 32 blocks in `format`.
    pub fn pack(format: WeightFormat, rows: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let bb = format.block_bytes();
        let size = n.checked_mul(k / QK).and_then(|b| b.checked_mul(bb));
        if k == 0 || !k.is_multiple_of(QK) || size != Some(rows.len()) {
            return Err(PackError::RowBytes {
                format: format!("{format:?}"),
                n,
                k,
                bytes: rows.len(),
            });
        }
        let blocks = k / QK;
        let groups = n.div_ceil(LANES);
        let pbb = format.packed_block_bytes();
        let (header, values, vb, sb) = (
            format.header_bytes(),
            format.values_offset(),
            format.value_bytes(),
            format.scale_bytes(),
        );
        let mut data = vec![0u8; groups * blocks * pbb];
        data.par_chunks_mut(blocks * pbb)
            .enumerate()
            .for_each(|(g, group)| {
                for lane in 0..LANES.min(n - g * LANES) {
                    let row = &rows[(g * LANES + lane) * blocks * bb..][..blocks * bb];
                    for (src, dst) in row.chunks_exact(bb).zip(group.chunks_exact_mut(pbb)) {
                        // Scale (and minimum), each an f16 in its own 16-byte row of lanes.
                        for (h, pair) in src[..sb].chunks_exact(2).enumerate() {
                            dst[h * 2 * LANES + 2 * lane..][..2].copy_from_slice(pair);
                        }
                        for (q, four) in src[values..values + vb].chunks_exact(4).enumerate() {
                            dst[header + 32 * q + 4 * lane..][..4].copy_from_slice(four);
                        }
                        if format.has_high_bits() {
                            let qh = u32::from_le_bytes([
                                src[sb],
                                src[sb + 1],
                                src[sb + 2],
                                src[sb + 3],
                            ]);
                            let bit = |i: usize| ((qh >> i) & 1) as u8;
                            for b in 0..4 {
                                dst[header + 128 + 4 * lane + b] = (0..4)
                                    .map(|g| bit(4 * g + b) << g | bit(16 + 4 * g + b) << (4 + g))
                                    .sum();
                            }
                        }
                    }
                }
            });
        Ok(Self {
            format,
            n,
            k,
            data: Storage::Owned(data),
        })
    }

    /// A matrix already in the packed layout (as [`Self::packed_bytes`] gave it).
    pub fn from_packed(
        format: WeightFormat,
        n: usize,
        k: usize,
        data: Storage,
    ) -> Result<Self, PackError> {
        let expected = n
            .div_ceil(LANES)
            .checked_mul(k / QK)
            .and_then(|b| b.checked_mul(format.packed_block_bytes()));
        if k == 0 || !k.is_multiple_of(QK) || expected != Some(data.len()) {
            return Err(PackError::PackedBytes {
                format: format!("{format:?}"),
                n,
                k,
                bytes: data.len(),
            });
        }
        Ok(Self { format, n, k, data })
    }

    /// The packed layout's bytes.
    pub fn packed_bytes(&self) -> &[u8] {
        self.data.as_bytes()
    }

    /// Whether the bytes are a region of a shared buffer (a mapped cache file).
    pub fn is_shared(&self) -> bool {
        self.data.is_shared()
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// (output rows, input width).
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held (the same as the row-major matrix, plus the last group's padding rows).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn group(&self, g: usize) -> &[u8] {
        let len = self.k / QK * self.format.packed_block_bytes();
        &self.data.as_bytes()[g * len..(g + 1) * len]
    }

    /// Row `r` dequantized into `out` (k values): the embedding lookup of a tied output
    /// projection, and the plain reference for the tests. Panics if r >= n.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.n && out.len() == self.k);
        let (format, lane) = (self.format, r % LANES);
        let header = format.header_bytes();
        for (block, out) in self
            .group(r / LANES)
            .chunks_exact(format.packed_block_bytes())
            .zip(out.chunks_exact_mut(QK))
        {
            let half = |h: usize| {
                f16::from_le_bytes([
                    block[h * 2 * LANES + 2 * lane],
                    block[h * 2 * LANES + 2 * lane + 1],
                ])
                .to_f32()
            };
            let d = half(0);
            let q = values(format, &block[header..], lane);
            for (o, &q) in out.iter_mut().zip(&q) {
                *o = match format {
                    WeightFormat::Q4_0 => d * (q - 8) as f32,
                    WeightFormat::Q5_0 => d * (q - 16) as f32,
                    WeightFormat::Q4_1 | WeightFormat::Q5_1 => d * q as f32 + half(1),
                    WeightFormat::Q8_0 => d * q as f32,
                };
            }
        }
    }

    /// `y[t * n + o] = dot(W[o], x[t])` for m activation rows x (m, k); y is (m, n).
    /// Panics if the sizes disagree; callers check shapes first.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        assert!(x.len() == m * k && y.len() == m * n);
        let blocks = k / QK;
        let mut xq = vec![BlockQ8_1::default(); m * blocks];
        if m == 1 {
            quantize_row_q8_1(x, &mut xq);
        } else {
            xq.par_chunks_mut(blocks)
                .zip(x.par_chunks_exact(k))
                .for_each(|(q, row)| quantize_row_q8_1(row, q));
        }
        let x_row = |t: usize| &xq[t * blocks..(t + 1) * blocks];
        for_each_tile(n, m, y, |g, t, out| {
            let w = self.group(g);
            match out {
                [o] => *o = tile(self.format, w, [x_row(t)])[0],
                [o0, o1, o2, o3] => {
                    [*o0, *o1, *o2, *o3] = tile(
                        self.format,
                        w,
                        [x_row(t), x_row(t + 1), x_row(t + 2), x_row(t + 3)],
                    )
                }
                _ => unreachable!("tiles are one or four rows"),
            }
        });
    }
}

/// Runs `tile(g, t, out)` over the whole (m, n) output y: `out` (one or four entries) gets
/// the W outputs of row group g for activation rows t.. (columns past n dropped).
/// One activation row: tasks of DECODE_GROUPS_PER_TASK groups. Otherwise tasks own
/// rectangles of TASK_ROWS activation rows by TASK_GROUPS groups, in tiles of 4 rows (the
/// last 1-3 rows one at a time), so a task's weights and activations stay in L2. Kernels
/// compute each row alike in a tile of one or four, so results do not depend on m.
pub(crate) fn for_each_tile<const W: usize>(
    n: usize,
    m: usize,
    y: &mut [f32],
    tile: impl Fn(usize, usize, &mut [[f32; W]]) + Sync,
) {
    assert_eq!(y.len(), m * n);
    let groups = n.div_ceil(W);
    if m == 1 {
        y.par_chunks_mut(DECODE_GROUPS_PER_TASK * W)
            .enumerate()
            .for_each(|(c, out)| {
                for (i, out) in out.chunks_mut(W).enumerate() {
                    let mut sums = [[0f32; W]; 1];
                    tile(c * DECODE_GROUPS_PER_TASK + i, 0, &mut sums);
                    out.copy_from_slice(&sums[0][..out.len()]);
                }
            });
        return;
    }
    let out = SharedOut(y.as_mut_ptr());
    let row_tasks = m.div_ceil(TASK_ROWS);
    let group_tasks = groups.div_ceil(TASK_GROUPS);
    (0..row_tasks * group_tasks)
        .into_par_iter()
        .for_each(|task| {
            let (rt, gt) = (task / group_tasks, task % group_tasks);
            let rows = rt * TASK_ROWS..(m.min((rt + 1) * TASK_ROWS));
            for g in gt * TASK_GROUPS..groups.min((gt + 1) * TASK_GROUPS) {
                let cols = g * W..n.min((g + 1) * W);
                let write = |t: usize, sums: &[f32; W]| {
                    // SAFETY: y holds m * n values and (t, cols) lies inside; tasks write
                    // disjoint rectangles and y outlives the parallel loop.
                    unsafe { out.write(t * n + cols.start, &sums[..cols.len()]) }
                };
                let mut t = rows.start;
                while t < rows.end {
                    let count = if t + 4 <= rows.end { 4 } else { 1 };
                    let mut sums = [[0f32; W]; 4];
                    tile(g, t, &mut sums[..count]);
                    for (j, s) in sums[..count].iter().enumerate() {
                        write(t + j, s);
                    }
                    t += count;
                }
            }
        });
}

/// The output matrix, written by parallel tasks in disjoint rectangles.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: tasks write disjoint parts only (see `for_each_tile`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `at..at + values.len()` must lie inside the output and no other task may touch it.
    unsafe fn write(self, at: usize, values: &[f32]) {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(at), values.len());
        }
    }
}

/// The 32 stored values of lane `lane` in one packed block's value bytes: nibbles 0..15
/// (Q4_0, Q4_1), 5-bit values 0..31 (Q5_0, Q5_1) or signed bytes (Q8_0).
fn values(format: WeightFormat, v: &[u8], lane: usize) -> [i32; QK] {
    let mut q = [0i32; QK];
    for g in 0..format.value_bytes() / 4 {
        for j in 0..4 {
            let byte = v[32 * g + 4 * lane + j];
            match format {
                WeightFormat::Q8_0 => q[4 * g + j] = i32::from(byte as i8),
                _ => {
                    q[4 * g + j] = i32::from(byte & 0x0F);
                    q[16 + 4 * g + j] = i32::from(byte >> 4);
                    if format.has_high_bits() {
                        let high = v[128 + 4 * lane + j];
                        q[4 * g + j] |= i32::from((high >> g) & 1) << 4;
                        q[16 + 4 * g + j] |= i32::from((high >> (4 + g)) & 1) << 4;
                    }
                }
            }
        }
    }
    q
}

/// Dot products of one packed row group (8 rows) with R activation rows: out[j][lane].
pub(crate) fn tile<const R: usize>(
    format: WeightFormat,
    w: &[u8],
    xs: [&[BlockQ8_1]; R],
) -> [[f32; LANES]; R] {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::avx512_vnni_available() {
            // SAFETY: the CPU supports AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C (checked
            // above); `w` is a packed row group and each row of xs has its blocks.
            return unsafe { crate::packed_vnni::tile(format, w, xs) };
        }
        if crate::avx2_available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
            return unsafe {
                match format {
                    WeightFormat::Q4_0 => avx2::tile::<Q4_0, R>(w, xs),
                    WeightFormat::Q4_1 => avx2::tile::<Q4_1, R>(w, xs),
                    WeightFormat::Q5_0 => avx2::tile::<Q5_0, R>(w, xs),
                    WeightFormat::Q5_1 => avx2::tile::<Q5_1, R>(w, xs),
                    WeightFormat::Q8_0 => avx2::tile::<Q8_0, R>(w, xs),
                }
            };
        }
    }
    xs.map(|x| tile_ref(format, w, x))
}

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;
const Q5_0: u8 = 3;
const Q5_1: u8 = 4;

/// Plain reference: one packed row group against one activation row, block by block as
/// the SIMD kernel sums (exact integer sums, then the scales).
pub(crate) fn tile_ref(format: WeightFormat, w: &[u8], x: &[BlockQ8_1]) -> [f32; LANES] {
    let header = format.header_bytes();
    let mut acc = [0f32; LANES];
    for (block, xb) in w.chunks_exact(format.packed_block_bytes()).zip(x) {
        for (lane, acc) in acc.iter_mut().enumerate() {
            let half = |h: usize| {
                f16::from_le_bytes([
                    block[h * 2 * LANES + 2 * lane],
                    block[h * 2 * LANES + 2 * lane + 1],
                ])
                .to_f32()
            };
            let q = values(format, &block[header..], lane);
            let mut sumi: i32 = q.iter().zip(&xb.qs).map(|(&q, &a)| q * i32::from(a)).sum();
            match format {
                WeightFormat::Q4_0 => sumi -= 8 * xb.sum,
                WeightFormat::Q5_0 => sumi -= 16 * xb.sum,
                _ => {}
            }
            *acc += half(0) * xb.d * sumi as f32;
            if matches!(format, WeightFormat::Q4_1 | WeightFormat::Q5_1) {
                *acc += half(1) * xb.s;
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
    use crate::format::WeightFormat;
    use crate::q8_1::BlockQ8_1;

    /// Four activation bytes starting at `at`, in every 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn broadcast4(xb: &BlockQ8_1, at: usize) -> __m256i {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            _mm256_set1_epi32(std::ptr::read_unaligned(
                xb.qs.as_ptr().add(at) as *const i32
            ))
        }
    }

    /// The values of one 32-byte group `g` of a packed block: (low nibbles, high nibbles)
    /// as bytes, each 0..15, or with FIVE their fifth bits from `high` (the block's group
    /// of fifth bits: bits g and 4 + g of each byte) added as bit 4, 0..31.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn nibble_values<const FIVE: bool>(
        raw: __m256i,
        high: __m256i,
        g: usize,
    ) -> (__m256i, __m256i) {
        let low = _mm256_set1_epi8(0x0F);
        let mut lo = _mm256_and_si256(raw, low);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
        if FIVE {
            let fifth = _mm256_set1_epi8(0x10);
            let (to_lo, to_hi) = match g {
                0 => (_mm256_slli_epi16(high, 4), high),
                1 => (_mm256_slli_epi16(high, 3), _mm256_srli_epi16(high, 1)),
                2 => (_mm256_slli_epi16(high, 2), _mm256_srli_epi16(high, 2)),
                _ => (_mm256_slli_epi16(high, 1), _mm256_srli_epi16(high, 3)),
            };
            lo = _mm256_or_si256(lo, _mm256_and_si256(to_lo, fifth));
            hi = _mm256_or_si256(hi, _mm256_and_si256(to_hi, fifth));
        }
        (lo, hi)
    }

    /// Sums of one group of 8 rows against R activation rows, block by block: per block,
    /// exact integer sums in 8 lanes (one per row), then scaled as in [`super::tile_ref`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<const F: u8, const R: usize>(
        w: &[u8],
        xs: [&[BlockQ8_1]; R],
    ) -> [[f32; 8]; R] {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            let format = match F {
                Q4_0 => WeightFormat::Q4_0,
                Q4_1 => WeightFormat::Q4_1,
                Q5_0 => WeightFormat::Q5_0,
                Q5_1 => WeightFormat::Q5_1,
                _ => WeightFormat::Q8_0,
            };
            let five = F == Q5_0 || F == Q5_1;
            let (pbb, header) = (format.packed_block_bytes(), format.header_bytes());
            let blocks = w.len() / pbb;
            debug_assert!(xs.iter().all(|x| x.len() >= blocks));
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..blocks {
                let block = w.as_ptr().add(b * pbb);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(block as *const __m128i));
                let v = block.add(header);
                let mut sumi = [_mm256_setzero_si256(); R];
                if F == Q8_0 {
                    for g in 0..8 {
                        let q = _mm256_loadu_si256(v.add(32 * g) as *const __m256i);
                        let abs = _mm256_sign_epi8(q, q);
                        for j in 0..R {
                            let x = _mm256_sign_epi8(broadcast4(&xs[j][b], 4 * g), q);
                            // At most 2 * 128 * 127 per i16 lane: no saturation.
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(abs, x), ones);
                            sumi[j] = _mm256_add_epi32(sumi[j], p);
                        }
                    }
                } else {
                    // Nibbles 0..15 times bytes up to 127 in magnitude: 8 pair sums of at most
                    // 2 * 15 * 127 each fit an i16 lane, so the sums stay in i16 until madd.
                    // 5-bit values (up to 31) go to i32 after every 4 pair sums instead.
                    let mut s16 = [_mm256_setzero_si256(); R];
                    let high = if five {
                        _mm256_loadu_si256(v.add(128) as *const __m256i)
                    } else {
                        _mm256_setzero_si256()
                    };
                    for g in 0..4 {
                        let raw = _mm256_loadu_si256(v.add(32 * g) as *const __m256i);
                        let (lo, hi) = if five {
                            nibble_values::<true>(raw, high, g)
                        } else {
                            nibble_values::<false>(raw, high, g)
                        };
                        for j in 0..R {
                            let xb = &xs[j][b];
                            let p = _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo, broadcast4(xb, 4 * g)),
                                _mm256_maddubs_epi16(hi, broadcast4(xb, 16 + 4 * g)),
                            );
                            s16[j] = _mm256_add_epi16(s16[j], p);
                        }
                        if five && g == 1 {
                            for j in 0..R {
                                sumi[j] = _mm256_madd_epi16(s16[j], ones);
                                s16[j] = _mm256_setzero_si256();
                            }
                        }
                    }
                    for j in 0..R {
                        sumi[j] = _mm256_add_epi32(sumi[j], _mm256_madd_epi16(s16[j], ones));
                        if F == Q4_0 {
                            sumi[j] =
                                _mm256_sub_epi32(sumi[j], _mm256_set1_epi32(8 * xs[j][b].sum));
                        }
                        if F == Q5_0 {
                            sumi[j] =
                                _mm256_sub_epi32(sumi[j], _mm256_set1_epi32(16 * xs[j][b].sum));
                        }
                    }
                }
                for j in 0..R {
                    let xb = &xs[j][b];
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(xb.d));
                    acc[j] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sumi[j]), acc[j]);
                    if F == Q4_1 || F == Q5_1 {
                        let m = _mm256_cvtph_ps(_mm_loadu_si128(block.add(16) as *const __m128i));
                        acc[j] = _mm256_fmadd_ps(m, _mm256_set1_ps(xb.s), acc[j]);
                    }
                }
            }
            let mut out = [[0f32; 8]; R];
            for j in 0..R {
                _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j]);
            }
            out
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::{q4_0, q4_1, q5, q8_0};

    /// Random row-major weights in `format`: n rows of k / 32 blocks, with extreme values.
    pub(crate) fn weights(rng: &mut impl Rng, format: WeightFormat, n: usize, k: usize) -> Vec<u8> {
        (0..n * k / QK)
            .flat_map(|i| {
                let mut b = f16::from_f32(rng.random_range(0.0..0.1))
                    .to_le_bytes()
                    .to_vec();
                if format.scale_bytes() == 4 {
                    b.extend(f16::from_f32(rng.random_range(-0.5..0.0)).to_le_bytes());
                }
                // Every seventh block extreme: bytes -128/127 (Q8_0), or all values at the
                // top (every bit set: 15 or 31, the largest sums) or at 0.
                let extreme = i % 7 == 0;
                let top = i % 14 == 0;
                let len = format.block_bytes() - format.scale_bytes();
                b.extend((0..len).map(|j| match (extreme, format) {
                    (true, WeightFormat::Q8_0) => [0x80, 0x7F][j % 2],
                    (true, _) => [0x00, 0xFF][usize::from(top)],
                    _ => rng.random::<u8>(),
                }));
                b
            })
            .collect()
    }

    fn row_dot_ref(format: WeightFormat, row: &[u8], x: &[BlockQ8_1]) -> f32 {
        match format {
            WeightFormat::Q5_0 => q5::vec_dot_ref_q5_0(row, x),
            WeightFormat::Q5_1 => q5::vec_dot_ref_q5_1(row, x),
            WeightFormat::Q4_0 => q4_0::vec_dot_ref(row, x),
            WeightFormat::Q4_1 => q4_1::vec_dot_ref(row, x),
            WeightFormat::Q8_0 => q8_0::vec_dot_ref(row, x),
        }
    }

    pub(crate) fn activations(rng: &mut impl Rng, m: usize, k: usize) -> Vec<f32> {
        (0..m * k)
            .map(|i| match (i / QK % 5, i % 11) {
                // Every fifth block constant: all its bytes 127, the largest sums.
                (3, _) => 1.5,
                (_, 0) => 0.0,
                (_, 1) => 1e4,
                _ => rng.random_range(-2.0..2.0),
            })
            .collect()
    }

    const FORMATS: [WeightFormat; 5] = [
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q5_0,
        WeightFormat::Q5_1,
        WeightFormat::Q8_0,
    ];

    #[test]
    fn packing_keeps_every_row() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for format in FORMATS {
            for &(n, k) in &[(1, 32), (8, 64), (13, 96), (17, 32)] {
                let w = weights(&mut rng, format, n, k);
                let p = PackedMatrix::pack(format, &w, n, k).unwrap();
                assert_eq!(p.bytes(), n.div_ceil(8) * 8 * k / 32 * format.block_bytes());
                let rb = k / QK * format.block_bytes();
                let mut row = vec![0f32; k];
                for r in 0..n {
                    p.dequantize_row(r, &mut row);
                    // Dotting the dequantized row with one-hot activations would go through
                    // quantization; compare with the row-major values directly instead.
                    let want = dequantize_row_major(format, &w[r * rb..(r + 1) * rb]);
                    assert_eq!(row, want, "{format:?} ({n},{k}) row {r}");
                }
            }
        }
    }

    fn dequantize_row_major(format: WeightFormat, row: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in row.chunks_exact(format.block_bytes()) {
            if format.has_high_bits() {
                let mut block = [0f32; QK];
                q5::dequantize_block(b, format == WeightFormat::Q5_1, &mut block);
                out.extend(block);
                continue;
            }
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            let v = &b[format.values_offset()..];
            let q: Vec<i32> = match format {
                WeightFormat::Q8_0 => v.iter().map(|&x| i32::from(x as i8)).collect(),
                _ => v
                    .iter()
                    .map(|&x| i32::from(x & 15))
                    .chain(v.iter().map(|&x| i32::from(x >> 4)))
                    .collect(),
            };
            out.extend(q.iter().map(|&q| match format {
                WeightFormat::Q4_0 => d * (q - 8) as f32,
                WeightFormat::Q4_1 => d * q as f32 + f16::from_le_bytes([b[2], b[3]]).to_f32(),
                WeightFormat::Q8_0 => d * q as f32,
                WeightFormat::Q5_0 | WeightFormat::Q5_1 => unreachable!("dequantized above"),
            }));
        }
        out
    }

    #[test]
    fn rejects_a_wrong_size() {
        assert!(PackedMatrix::pack(WeightFormat::Q4_0, &[0; 17], 1, 32).is_err());
        assert!(PackedMatrix::pack(WeightFormat::Q8_0, &[0; 34], 1, 33).is_err());
    }

    #[test]
    fn simd_tile_matches_plain_reference() {
        if !crate::simd_test_runs("simd_tile_matches_plain_reference") {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for format in FORMATS {
            for &k in &[32, 96, 576] {
                let w = weights(&mut rng, format, 8, k);
                let p = PackedMatrix::pack(format, &w, 8, k).unwrap();
                let xs: Vec<Vec<BlockQ8_1>> = (0..4)
                    .map(|_| {
                        let mut q = vec![BlockQ8_1::default(); k / QK];
                        quantize_row_q8_1(&activations(&mut rng, 1, k), &mut q);
                        q
                    })
                    .collect();
                let four = tile(format, p.group(0), [&xs[0][..], &xs[1], &xs[2], &xs[3]]);
                for (j, x) in xs.iter().enumerate() {
                    let want = tile_ref(format, p.group(0), x);
                    let [one] = tile(format, p.group(0), [&x[..]]);
                    // Four rows at once are the same operations per row as one.
                    assert_eq!(one, four[j]);
                    for lane in 0..LANES {
                        let tol = 1e-5 * want[lane].abs().max(1.0);
                        assert!(
                            (one[lane] - want[lane]).abs() <= tol,
                            "{format:?} {k} {lane}: {one:?} vs {want:?}"
                        );
                    }
                }
            }
        }
    }

    /// The VNNI tile against the AVX2 one: the same bits (both sum each block exactly as
    /// integers, then apply the scales in the same order), for one and four rows.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vnni_tile_gives_the_avx2_tiles_bits() {
        if !crate::avx512_vnni_test_runs("vnni_tile_gives_the_avx2_tiles_bits") {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for format in FORMATS {
            for &k in &[32, 64, 96, 576, 1536] {
                let w = weights(&mut rng, format, 8, k);
                let p = PackedMatrix::pack(format, &w, 8, k).unwrap();
                let xs: Vec<Vec<BlockQ8_1>> = (0..4)
                    .map(|_| {
                        let mut q = vec![BlockQ8_1::default(); k / QK];
                        quantize_row_q8_1(&activations(&mut rng, 1, k), &mut q);
                        q
                    })
                    .collect();
                let g = p.group(0);
                let four = [&xs[0][..], &xs[1], &xs[2], &xs[3]];
                // SAFETY: the CPU has every feature both tiles need (checked above).
                let (vnni, avx2) = unsafe {
                    (
                        crate::packed_vnni::tile(format, g, four),
                        match format {
                            WeightFormat::Q4_0 => avx2::tile::<Q4_0, 4>(g, four),
                            WeightFormat::Q4_1 => avx2::tile::<Q4_1, 4>(g, four),
                            WeightFormat::Q5_0 => avx2::tile::<Q5_0, 4>(g, four),
                            WeightFormat::Q5_1 => avx2::tile::<Q5_1, 4>(g, four),
                            WeightFormat::Q8_0 => avx2::tile::<Q8_0, 4>(g, four),
                        },
                    )
                };
                assert_eq!(vnni, avx2, "{format:?} k {k}");
                for (j, x) in xs.iter().enumerate() {
                    // SAFETY: as above.
                    let [one] = unsafe { crate::packed_vnni::tile(format, g, [&x[..]]) };
                    assert_eq!(one, vnni[j], "{format:?} k {k} row {j} alone");
                }
            }
        }
    }

    #[test]
    fn matmul_matches_row_by_row_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for format in FORMATS {
            for &(n, k, m) in &[
                (1, 32, 1),
                (37, 64, 1),
                (50, 96, 3),
                (17, 576, 9),
                (40, 64, 37),
                (8, 32, 70),
            ] {
                let w = weights(&mut rng, format, n, k);
                let p = PackedMatrix::pack(format, &w, n, k).unwrap();
                let x = activations(&mut rng, m, k);
                let mut y = vec![f32::NAN; m * n];
                p.matmul(&x, m, &mut y);
                let rb = k / QK * format.block_bytes();
                for t in 0..m {
                    let mut xq = vec![BlockQ8_1::default(); k / QK];
                    quantize_row_q8_1(&x[t * k..(t + 1) * k], &mut xq);
                    for o in 0..n {
                        let want = row_dot_ref(format, &w[o * rb..(o + 1) * rb], &xq);
                        let got = y[t * n + o];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{format:?} ({n},{k},{m}) [{t},{o}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_batch() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for format in FORMATS {
            let (n, k, m) = (24, 128, 41);
            let p = PackedMatrix::pack(format, &weights(&mut rng, format, n, k), n, k).unwrap();
            let x = activations(&mut rng, m, k);
            let mut all = vec![0f32; m * n];
            p.matmul(&x, m, &mut all);
            for t in [0, 5, 40] {
                let mut one = vec![0f32; n];
                p.matmul(&x[t * k..(t + 1) * k], 1, &mut one);
                assert_eq!(one, all[t * n..(t + 1) * n], "{format:?} row {t}");
            }
        }
    }
}
