//! K-quant weights (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) repacked eight rows at a time, as `crate::packed` does for
//! the 32-value formats, dotted with Q8_K activations. candle's K-quant products work row
//! by row and end every dot product in a horizontal sum; here one `maddubs` meets eight
//! rows and the per-sub-block scales are applied to eight rows by one `madd`.
//!
//! A packed block covers 256 values of eight rows (the same bytes as eight ggml blocks):
//! - Q4_K (1184 bytes): the rows' f16 d (16 bytes), f16 dmin (16), scales (64) and
//!   minimums (64) as 8-bit values in pairs of sub-blocks: byte 16 i + 2 r + s holds
//!   sub-block 2 i + s of row r; then 4 chunks of 64 values, each 8 groups of 32 bytes
//!   whose lane r holds 4 bytes of row r's ggml nibbles (low nibbles: sub-block 2 c,
//!   values 4 g..4 g + 4; high nibbles: sub-block 2 c + 1, same positions).
//! - Q5_K (1440 bytes): Q4_K's packed block, then 8 groups of 32 bytes whose lane r holds 4
//!   bytes of row r's ggml `qh` (bytes 4 g..4 g + 4: the fifth bits of group g's values, bit
//!   2 c for the low nibbles of chunk c and 2 c + 1 for the high ones).
//! - Q6_K (1680 bytes): the rows' f16 d (16 bytes), the 16 signed scales per row in pairs as
//!   above (128), then 8 units of 32 values (192 bytes each): 4 groups of nibble bytes (low
//!   4 bits of values 4 g + b and 16 + 4 g + b) and 2 groups of high bits (group h's byte
//!   holds, in bits 2 g, the top 2 bits of value 16 h + 4 g + b).
//! - Q2_K (672 bytes) and Q3_K (912): the rows' f16 d (16 bytes), for Q2_K f16 dmin (16)
//!   and the 16 scale bytes per row (scale | minimum << 4) in pairs as above (128), for Q3_K
//!   the 16 signed scales (less 32) in pairs (128); then 8 units of 32 values: 2 groups of
//!   the values' low 2 bits (group c's byte b of lane r holds, in bits 2 s, value
//!   4 (4 c + s) + b of the unit) and for Q3_K one group of third bits (bit q: value
//!   4 q + b).

use half::f16;
use rayon::prelude::*;

use crate::packed::{for_each_tile, PackError, LANES};
use crate::q8_k::{quantize_row_q8_k, BlockQ8K, QK_K};
use crate::storage::Storage;
use crate::{q3_k, q4_k, q5_k, q6_k};

/// A K-quant weight format with its own kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KFormat {
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl KFormat {
    /// Bytes per ggml block of 256 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q2K => q3_k::BLOCK_BYTES_Q2_K,
            Self::Q3K => q3_k::BLOCK_BYTES_Q3_K,
            Self::Q4K => q4_k::BLOCK_BYTES,
            Self::Q5K => q5_k::BLOCK_BYTES,
            Self::Q6K => q6_k::BLOCK_BYTES,
        }
    }

    pub(crate) fn packed_block_bytes(self) -> usize {
        match self {
            Self::Q2K => Q2K_VALUES + 8 * 64,
            Self::Q3K => Q3K_VALUES + 8 * Q3K_UNIT,
            Self::Q4K => Q5K_HIGH,
            Self::Q5K => Q5K_HIGH + 256,
            Self::Q6K => Q6K_VALUES + 8 * Q6K_UNIT,
        }
    }
}

/// Offsets inside a packed Q4_K block.
pub(crate) const Q4K_DMIN: usize = 16;
pub(crate) const Q4K_SCALES: usize = 32;
pub(crate) const Q4K_MINS: usize = 96;
pub(crate) const Q4K_VALUES: usize = 160;
/// Where Q5_K's fifth bits follow the Q4_K part.
pub(crate) const Q5K_HIGH: usize = Q4K_VALUES + 4 * 256;
/// Offsets inside a packed Q6_K block, and the bytes of one unit of 32 values.
pub(crate) const Q6K_SCALES: usize = 16;
pub(crate) const Q6K_VALUES: usize = 144;
pub(crate) const Q6K_UNIT: usize = 192;
/// Offsets inside packed Q2_K and Q3_K blocks.
pub(crate) const Q2K_SCALES: usize = 32;
pub(crate) const Q2K_VALUES: usize = 160;
pub(crate) const Q3K_SCALES: usize = 16;
pub(crate) const Q3K_VALUES: usize = 144;
pub(crate) const Q3K_UNIT: usize = 96;

/// Byte of sub-block j of lane r in a region of 8-bit values stored in pairs.
fn paired(j: usize, lane: usize) -> usize {
    16 * (j / 2) + 2 * lane + j % 2
}

/// An (n, k) K-quant weight matrix in the interleaved layout.
pub struct PackedKMatrix {
    format: KFormat,
    n: usize,
    k: usize,
    data: Storage,
}

impl PackedKMatrix {
    /// Repacks `rows`: n row-major rows of k / 256 ggml blocks in `format`.
    pub fn pack(format: KFormat, rows: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let bb = format.block_bytes();
        let size = n.checked_mul(k / QK_K).and_then(|b| b.checked_mul(bb));
        if k == 0 || !k.is_multiple_of(QK_K) || size != Some(rows.len()) {
            return Err(PackError::RowBytes {
                format: format!("{format:?}"),
                n,
                k,
                bytes: rows.len(),
            });
        }
        let blocks = k / QK_K;
        let pbb = format.packed_block_bytes();
        let mut data = vec![0u8; n.div_ceil(LANES) * blocks * pbb];
        data.par_chunks_mut(blocks * pbb)
            .enumerate()
            .for_each(|(g, group)| {
                for lane in 0..LANES.min(n - g * LANES) {
                    let row = &rows[(g * LANES + lane) * blocks * bb..][..blocks * bb];
                    for (src, dst) in row.chunks_exact(bb).zip(group.chunks_exact_mut(pbb)) {
                        match format {
                            KFormat::Q2K => pack_q2k(src, dst, lane),
                            KFormat::Q3K => pack_q3k(src, dst, lane),
                            KFormat::Q4K => pack_q4k(src, dst, lane),
                            KFormat::Q5K => pack_q5k(src, dst, lane),
                            KFormat::Q6K => pack_q6k(src, dst, lane),
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
        format: KFormat,
        n: usize,
        k: usize,
        data: Storage,
    ) -> Result<Self, PackError> {
        let expected = n
            .div_ceil(LANES)
            .checked_mul(k / QK_K)
            .and_then(|b| b.checked_mul(format.packed_block_bytes()));
        if k == 0 || !k.is_multiple_of(QK_K) || expected != Some(data.len()) {
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

    pub fn format(&self) -> KFormat {
        self.format
    }

    /// (output rows, input width).
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held (the ggml size, plus Q4_K's unpacked scales and the last group's padding).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn group(&self, g: usize) -> &[u8] {
        let len = self.k / QK_K * self.format.packed_block_bytes();
        &self.data.as_bytes()[g * len..(g + 1) * len]
    }

    /// Row `r` dequantized into `out` (k values). Panics if r >= n.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.n && out.len() == self.k);
        let lane = r % LANES;
        let pbb = self.format.packed_block_bytes();
        for (block, out) in self
            .group(r / LANES)
            .chunks_exact(pbb)
            .zip(out.chunks_exact_mut(QK_K))
        {
            let lv = LaneValues::read(self.format, block, lane);
            for (i, o) in out.iter_mut().enumerate() {
                *o = lv.value(i);
            }
        }
    }

    /// `y[t * n + o] = dot(W[o], x[t])` for m activation rows x (m, k); y is (m, n).
    /// Panics if the sizes disagree; callers check shapes first.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        assert!(x.len() == m * k && y.len() == m * n);
        let blocks = k / QK_K;
        let mut xq = vec![BlockQ8K::default(); m * blocks];
        if m == 1 {
            quantize_row_q8_k(x, &mut xq);
        } else {
            xq.par_chunks_mut(blocks)
                .zip(x.par_chunks_exact(k))
                .for_each(|(q, row)| quantize_row_q8_k(row, q));
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

fn pack_q4k(src: &[u8], dst: &mut [u8], lane: usize) {
    dst[2 * lane..2 * lane + 2].copy_from_slice(&src[0..2]);
    dst[Q4K_DMIN + 2 * lane..Q4K_DMIN + 2 * lane + 2].copy_from_slice(&src[2..4]);
    for j in 0..8 {
        let (sc, m) = q4_k::scale_min(j, &src[4..16]);
        dst[Q4K_SCALES + paired(j, lane)] = sc;
        dst[Q4K_MINS + paired(j, lane)] = m;
    }
    for (q, four) in src[16..q4_k::BLOCK_BYTES].chunks_exact(4).enumerate() {
        // Bytes 4q.. of the 128: chunk q / 8, group q % 8.
        dst[Q4K_VALUES + 32 * q + 4 * lane..][..4].copy_from_slice(four);
    }
}

/// Q5_K: the Q4_K part from the same fields (qh sits between the scales and the nibbles),
/// then qh in 4-byte lanes.
fn pack_q5k(src: &[u8], dst: &mut [u8], lane: usize) {
    let mut as_q4k = [0u8; q4_k::BLOCK_BYTES];
    as_q4k[..16].copy_from_slice(&src[..16]);
    as_q4k[16..].copy_from_slice(&src[48..q5_k::BLOCK_BYTES]);
    pack_q4k(&as_q4k, dst, lane);
    for (g, four) in src[16..48].chunks_exact(4).enumerate() {
        dst[Q5K_HIGH + 32 * g + 4 * lane..][..4].copy_from_slice(four);
    }
}

/// Low 2 bits of a block's values (value order) into the packed units at `at`, `unit`
/// bytes apart.
fn pack_crumbs(q: &[u8; QK_K], dst: &mut [u8], at: usize, unit: usize, lane: usize) {
    for u in 0..8 {
        for c in 0..2 {
            for s in 0..4 {
                for b in 0..4 {
                    let v = q[32 * u + 4 * (4 * c + s) + b] & 3;
                    dst[at + unit * u + 32 * c + 4 * lane + b] |= v << (2 * s);
                }
            }
        }
    }
}

fn pack_q2k(src: &[u8], dst: &mut [u8], lane: usize) {
    dst[2 * lane..2 * lane + 2].copy_from_slice(&src[80..82]);
    dst[16 + 2 * lane..16 + 2 * lane + 2].copy_from_slice(&src[82..84]);
    for (j, &sm) in src[..16].iter().enumerate() {
        dst[Q2K_SCALES + paired(j, lane)] = sm;
    }
    let (_, _, _, _, q) = q3_k::q2_k_parts(src);
    pack_crumbs(&q, dst, Q2K_VALUES, 64, lane);
}

fn pack_q3k(src: &[u8], dst: &mut [u8], lane: usize) {
    dst[2 * lane..2 * lane + 2].copy_from_slice(&src[108..110]);
    let (_, sc, q) = q3_k::q3_k_parts(src);
    for (j, &sc) in sc.iter().enumerate() {
        dst[Q3K_SCALES + paired(j, lane)] = sc as u8;
    }
    pack_crumbs(&q, dst, Q3K_VALUES, Q3K_UNIT, lane);
    for u in 0..8 {
        for quad in 0..8 {
            for b in 0..4 {
                let high = q[32 * u + 4 * quad + b] >> 2;
                dst[Q3K_VALUES + Q3K_UNIT * u + 64 + 4 * lane + b] |= high << quad;
            }
        }
    }
}

fn pack_q6k(src: &[u8], dst: &mut [u8], lane: usize) {
    dst[2 * lane..2 * lane + 2].copy_from_slice(&src[208..210]);
    for (j, &sc) in src[192..208].iter().enumerate() {
        dst[Q6K_SCALES + paired(j, lane)] = sc;
    }
    let q = q6_k::values(src);
    for u in 0..8 {
        let unit = &mut dst[Q6K_VALUES + Q6K_UNIT * u..][..Q6K_UNIT];
        for g in 0..4 {
            for b in 0..4 {
                let (lo, hi) = (q[32 * u + 4 * g + b], q[32 * u + 16 + 4 * g + b]);
                unit[32 * g + 4 * lane + b] = (lo & 0x0F) | (hi << 4);
                unit[128 + 4 * lane + b] |= (lo >> 4) << (2 * g);
                unit[160 + 4 * lane + b] |= (hi >> 4) << (2 * g);
            }
        }
    }
}

/// One row's values and scales read back from a packed block.
enum LaneValues {
    /// d, dmin, scales, minimums, values (Q4_K nibbles or Q5_K five-bit values).
    Q4K(f32, f32, [u8; 8], [u8; 8], [u8; QK_K]),
    /// d, scales, six-bit values (0..64).
    Q6K(f32, [i8; 16], [u8; QK_K]),
    /// d, dmin, scales, minimums, two-bit values.
    Q2K(f32, f32, [u8; 16], [u8; 16], [u8; QK_K]),
    /// d, scales (less 32), three-bit values (0..8).
    Q3K(f32, [i8; 16], [u8; QK_K]),
}

impl LaneValues {
    fn read(format: KFormat, block: &[u8], lane: usize) -> Self {
        let half = |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
        match format {
            KFormat::Q4K | KFormat::Q5K => {
                let mut q = [0u8; QK_K];
                for c in 0..4 {
                    for g in 0..8 {
                        for b in 0..4 {
                            let byte = block[Q4K_VALUES + 256 * c + 32 * g + 4 * lane + b];
                            q[64 * c + 4 * g + b] = byte & 0x0F;
                            q[64 * c + 32 + 4 * g + b] = byte >> 4;
                            if format == KFormat::Q5K {
                                let qh = block[Q5K_HIGH + 32 * g + 4 * lane + b];
                                q[64 * c + 4 * g + b] |= ((qh >> (2 * c)) & 1) << 4;
                                q[64 * c + 32 + 4 * g + b] |= ((qh >> (2 * c + 1)) & 1) << 4;
                            }
                        }
                    }
                }
                Self::Q4K(
                    half(2 * lane),
                    half(Q4K_DMIN + 2 * lane),
                    std::array::from_fn(|j| block[Q4K_SCALES + paired(j, lane)]),
                    std::array::from_fn(|j| block[Q4K_MINS + paired(j, lane)]),
                    q,
                )
            }
            KFormat::Q2K | KFormat::Q3K => {
                let (values, unit) = if format == KFormat::Q2K {
                    (Q2K_VALUES, 64)
                } else {
                    (Q3K_VALUES, Q3K_UNIT)
                };
                let mut q = [0u8; QK_K];
                for u in 0..8 {
                    for quad in 0..8 {
                        for b in 0..4 {
                            let (c, s) = (quad / 4, quad % 4);
                            let crumbs = block[values + unit * u + 32 * c + 4 * lane + b];
                            let mut v = (crumbs >> (2 * s)) & 3;
                            if format == KFormat::Q3K {
                                let high = block[values + unit * u + 64 + 4 * lane + b];
                                v |= ((high >> quad) & 1) << 2;
                            }
                            q[32 * u + 4 * quad + b] = v;
                        }
                    }
                }
                if format == KFormat::Q2K {
                    let sm: [u8; 16] = std::array::from_fn(|j| block[Q2K_SCALES + paired(j, lane)]);
                    Self::Q2K(
                        half(2 * lane),
                        half(16 + 2 * lane),
                        sm.map(|b| b & 0x0F),
                        sm.map(|b| b >> 4),
                        q,
                    )
                } else {
                    Self::Q3K(
                        half(2 * lane),
                        std::array::from_fn(|j| block[Q3K_SCALES + paired(j, lane)] as i8),
                        q,
                    )
                }
            }
            KFormat::Q6K => {
                let mut q = [0u8; QK_K];
                for u in 0..8 {
                    let unit = &block[Q6K_VALUES + Q6K_UNIT * u..][..Q6K_UNIT];
                    for g in 0..4 {
                        for b in 0..4 {
                            let nib = unit[32 * g + 4 * lane + b];
                            let high =
                                |h: usize| (unit[128 + 32 * h + 4 * lane + b] >> (2 * g)) & 3;
                            q[32 * u + 4 * g + b] = (nib & 0x0F) | (high(0) << 4);
                            q[32 * u + 16 + 4 * g + b] = (nib >> 4) | (high(1) << 4);
                        }
                    }
                }
                Self::Q6K(
                    half(2 * lane),
                    std::array::from_fn(|j| block[Q6K_SCALES + paired(j, lane)] as i8),
                    q,
                )
            }
        }
    }

    fn value(&self, i: usize) -> f32 {
        match self {
            Self::Q4K(d, dmin, sc, m, q) => {
                d * f32::from(sc[i / 32]) * f32::from(q[i]) - dmin * f32::from(m[i / 32])
            }
            Self::Q6K(d, sc, q) => d * f32::from(sc[i / 16]) * (i32::from(q[i]) - 32) as f32,
            Self::Q2K(d, dmin, sc, m, q) => {
                d * f32::from(sc[i / 16]) * f32::from(q[i]) - dmin * f32::from(m[i / 16])
            }
            Self::Q3K(d, sc, q) => d * f32::from(sc[i / 16]) * (i32::from(q[i]) - 4) as f32,
        }
    }

    /// This row's share of one block's dot product, summed as ggml sums it (see
    /// `q4_k::vec_dot_ref`, `q6_k::vec_dot_ref`).
    fn dot(&self, xb: &BlockQ8K) -> f32 {
        let dot = |q: &[u8; QK_K], from: usize, len: usize| -> i32 {
            (from..from + len)
                .map(|i| i32::from(q[i]) * i32::from(xb.qs[i]))
                .sum()
        };
        match self {
            Self::Q4K(d, dmin, sc, m, q) => {
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..8 {
                    sumi += i32::from(sc[j]) * dot(q, 32 * j, 32);
                    summ += i32::from(m[j]) * i32::from(xb.bsums32[j]);
                }
                xb.d * d * sumi as f32 - xb.d * dmin * summ as f32
            }
            Self::Q6K(d, sc, q) => {
                let mut sumi = 0i32;
                for j in 0..16 {
                    sumi += i32::from(sc[j]) * (dot(q, 16 * j, 16) - 32 * i32::from(xb.bsums[j]));
                }
                xb.d * d * sumi as f32
            }
            Self::Q2K(d, dmin, sc, m, q) => {
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..16 {
                    sumi += i32::from(sc[j]) * dot(q, 16 * j, 16);
                    summ += i32::from(m[j]) * i32::from(xb.bsums[j]);
                }
                xb.d * d * sumi as f32 - xb.d * dmin * summ as f32
            }
            Self::Q3K(d, sc, q) => {
                let mut sumi = 0i32;
                for j in 0..16 {
                    sumi += i32::from(sc[j]) * (dot(q, 16 * j, 16) - 4 * i32::from(xb.bsums[j]));
                }
                xb.d * d * sumi as f32
            }
        }
    }
}

/// Plain reference: one packed row group against one activation row.
pub(crate) fn tile_ref(format: KFormat, w: &[u8], x: &[BlockQ8K]) -> [f32; LANES] {
    let mut acc = [0f32; LANES];
    for (block, xb) in w.chunks_exact(format.packed_block_bytes()).zip(x) {
        for (lane, acc) in acc.iter_mut().enumerate() {
            *acc += LaneValues::read(format, block, lane).dot(xb);
        }
    }
    acc
}

/// Dot products of one packed row group (8 rows) with R activation rows: out[j][lane].
pub(crate) fn tile<const R: usize>(
    format: KFormat,
    w: &[u8],
    xs: [&[BlockQ8K]; R],
) -> [[f32; LANES]; R] {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::avx512_vnni_available() {
            // SAFETY: the CPU supports AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C (checked
            // above); `w` is a packed row group and each row of xs has its blocks.
            return unsafe { crate::packed_k_vnni::tile(format, w, xs) };
        }
        if crate::avx2_available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
            return unsafe {
                match format {
                    KFormat::Q4K => avx2::tile_q4k::<false, R>(w, xs),
                    KFormat::Q5K => avx2::tile_q4k::<true, R>(w, xs),
                    KFormat::Q6K => avx2::tile_q6k::<R>(w, xs),
                    KFormat::Q2K => avx2::tile_q2k3k::<false, R>(w, xs),
                    KFormat::Q3K => avx2::tile_q2k3k::<true, R>(w, xs),
                }
            };
        }
    }
    xs.map(|x| tile_ref(format, w, x))
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    /// Four activation bytes starting at `at`, in every 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn broadcast4(xb: &BlockQ8K, at: usize) -> __m256i {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            _mm256_set1_epi32(std::ptr::read_unaligned(
                xb.qs.as_ptr().add(at) as *const i32
            ))
        }
    }

    /// Two i16 sums `s[at]`, `s[at + 1]` as the halves of every 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn broadcast_pair(s: &[i16], at: usize) -> __m256i {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            debug_assert!(at + 1 < s.len());
            _mm256_set1_epi32(std::ptr::read_unaligned(s.as_ptr().add(at) as *const i32))
        }
    }

    /// A pair region's 16 bytes as eight lanes of two i16 (unsigned or signed bytes).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn pair_u8(p: *const u8) -> __m256i {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe { _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i)) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn pair_i8(p: *const u8) -> __m256i {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i)) }
    }

    /// The low (FIRST = true) or high i16 of each 32-bit lane, copied into both halves.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dup<const FIRST: bool>(pairs: __m256i) -> __m256i {
        if FIRST {
            _mm256_blend_epi16::<0b1010_1010>(pairs, _mm256_slli_epi32::<16>(pairs))
        } else {
            _mm256_blend_epi16::<0b0101_0101>(pairs, _mm256_srli_epi32::<16>(pairs))
        }
    }

    /// Group g of chunk c of a packed Q4_K block: (low nibbles, high nibbles) as bytes;
    /// with FIVE (Q5_K) each with its fifth bit from the block's qh groups (bits 2c and
    /// 2c + 1 of each byte) as bit 4.
    ///
    /// # Safety
    /// `block` is a whole packed Q4_K (or, with FIVE, Q5_K) block; c < 4, g < 8.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn q4k_values<const FIVE: bool>(
        block: *const u8,
        c: usize,
        g: usize,
    ) -> (__m256i, __m256i) {
        let low = _mm256_set1_epi8(0x0F);
        // SAFETY: the caller's contract; both loads are inside the block.
        unsafe {
            let v = block.add(Q4K_VALUES + 256 * c + 32 * g);
            let raw = _mm256_loadu_si256(v as *const __m256i);
            let mut lo = _mm256_and_si256(raw, low);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
            if FIVE {
                let fifth = _mm256_set1_epi8(0x10);
                let h = _mm256_loadu_si256(block.add(Q5K_HIGH + 32 * g) as *const __m256i);
                let (to_lo, to_hi) = match c {
                    0 => (_mm256_slli_epi16(h, 4), _mm256_slli_epi16(h, 3)),
                    1 => (_mm256_slli_epi16(h, 2), _mm256_slli_epi16(h, 1)),
                    2 => (h, _mm256_srli_epi16(h, 1)),
                    _ => (_mm256_srli_epi16(h, 2), _mm256_srli_epi16(h, 3)),
                };
                lo = _mm256_or_si256(lo, _mm256_and_si256(to_lo, fifth));
                hi = _mm256_or_si256(hi, _mm256_and_si256(to_hi, fifth));
            }
            (lo, hi)
        }
    }

    /// Group g (< 4) of one packed Q6_K unit: its 6-bit values 4g + b (low) and
    /// 16 + 4g + b (high) as bytes 0..63: the nibbles, with the top 2 bits (bits 2g of the
    /// unit's two high-bit groups) moved to bits 4..6.
    ///
    /// # Safety
    /// `unit` points at a whole packed Q6_K unit (192 bytes).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn q6k_values(unit: *const u8, g: usize) -> (__m256i, __m256i) {
        let low = _mm256_set1_epi8(0x0F);
        let top = _mm256_set1_epi8(0x30);
        // SAFETY: the caller's contract; the loads are inside the unit.
        let (raw, h0, h1) = unsafe {
            (
                _mm256_loadu_si256(unit.add(32 * g) as *const __m256i),
                _mm256_loadu_si256(unit.add(128) as *const __m256i),
                _mm256_loadu_si256(unit.add(160) as *const __m256i),
            )
        };
        let high = |h: __m256i| {
            let moved = match g {
                0 => _mm256_slli_epi16(h, 4),
                1 => _mm256_slli_epi16(h, 2),
                2 => h,
                _ => _mm256_srli_epi16(h, 2),
            };
            _mm256_and_si256(moved, top)
        };
        let lo = _mm256_or_si256(_mm256_and_si256(raw, low), high(h0));
        let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(raw, 4), low), high(h1));
        (lo, hi)
    }

    /// Q4_K, or Q5_K when FIVE: the same sums with a fifth bit added to every value.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_q4k<const FIVE: bool, const R: usize>(
        w: &[u8],
        xs: [&[BlockQ8K]; R],
    ) -> [[f32; 8]; R] {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            let format = if FIVE { KFormat::Q5K } else { KFormat::Q4K };
            let pbb = format.packed_block_bytes();
            let blocks = w.len() / pbb;
            debug_assert!(xs.iter().all(|x| x.len() >= blocks));
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..blocks {
                let block = w.as_ptr().add(b * pbb);
                let mut sumi = [_mm256_setzero_si256(); R];
                let mut summ = [_mm256_setzero_si256(); R];
                for c in 0..4 {
                    let scales = pair_u8(block.add(Q4K_SCALES + 16 * c));
                    let (sc_lo, sc_hi) = (dup::<true>(scales), dup::<false>(scales));
                    // Nibbles up to 15 times bytes up to 127: 8 groups of pair sums stay below
                    // 8 * 2 * 15 * 127 = 30480, inside i16. Five-bit values (up to 31) go to
                    // i32 after every 4 groups instead.
                    let mut s_lo = [_mm256_setzero_si256(); R];
                    let mut s_hi = [_mm256_setzero_si256(); R];
                    for g in 0..8 {
                        let (lo, hi) = q4k_values::<FIVE>(block, c, g);
                        for j in 0..R {
                            let xb = &xs[j][b];
                            let at = 64 * c + 4 * g;
                            s_lo[j] = _mm256_add_epi16(
                                s_lo[j],
                                _mm256_maddubs_epi16(lo, broadcast4(xb, at)),
                            );
                            s_hi[j] = _mm256_add_epi16(
                                s_hi[j],
                                _mm256_maddubs_epi16(hi, broadcast4(xb, at + 32)),
                            );
                        }
                        if FIVE && g == 3 {
                            for j in 0..R {
                                let p = _mm256_add_epi32(
                                    _mm256_madd_epi16(s_lo[j], sc_lo),
                                    _mm256_madd_epi16(s_hi[j], sc_hi),
                                );
                                sumi[j] = _mm256_add_epi32(sumi[j], p);
                                s_lo[j] = _mm256_setzero_si256();
                                s_hi[j] = _mm256_setzero_si256();
                            }
                        }
                    }
                    let mins = pair_u8(block.add(Q4K_MINS + 16 * c));
                    for j in 0..R {
                        let p = _mm256_add_epi32(
                            _mm256_madd_epi16(s_lo[j], sc_lo),
                            _mm256_madd_epi16(s_hi[j], sc_hi),
                        );
                        sumi[j] = _mm256_add_epi32(sumi[j], p);
                        let m = _mm256_madd_epi16(mins, broadcast_pair(&xs[j][b].bsums32, 2 * c));
                        summ[j] = _mm256_add_epi32(summ[j], m);
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
            store(acc)
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_q6k<const R: usize>(w: &[u8], xs: [&[BlockQ8K]; R]) -> [[f32; 8]; R] {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
            let pbb = KFormat::Q6K.packed_block_bytes();
            let blocks = w.len() / pbb;
            debug_assert!(xs.iter().all(|x| x.len() >= blocks));
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..blocks {
                let block = w.as_ptr().add(b * pbb);
                let mut sumi = [_mm256_setzero_si256(); R];
                // The values are stored plus 32: subtract 32 * sum(scale * activation sum).
                let mut offset = [_mm256_setzero_si256(); R];
                for u in 0..8 {
                    let scales = pair_i8(block.add(Q6K_SCALES + 16 * u));
                    for j in 0..R {
                        let o = _mm256_madd_epi16(scales, broadcast_pair(&xs[j][b].bsums, 2 * u));
                        offset[j] = _mm256_add_epi32(offset[j], o);
                    }
                    let (sc_lo, sc_hi) = (dup::<true>(scales), dup::<false>(scales));
                    let unit = block.add(Q6K_VALUES + Q6K_UNIT * u);
                    // Values up to 63 times bytes up to 127: two groups of pair sums stay below
                    // 2 * 2 * 63 * 127 = 32004, inside i16.
                    for pair in 0..2 {
                        let mut s_lo = [_mm256_setzero_si256(); R];
                        let mut s_hi = [_mm256_setzero_si256(); R];
                        for g in 2 * pair..2 * pair + 2 {
                            let (lo, hi) = q6k_values(unit, g);
                            for j in 0..R {
                                let xb = &xs[j][b];
                                let at = 32 * u + 4 * g;
                                s_lo[j] = _mm256_add_epi16(
                                    s_lo[j],
                                    _mm256_maddubs_epi16(lo, broadcast4(xb, at)),
                                );
                                s_hi[j] = _mm256_add_epi16(
                                    s_hi[j],
                                    _mm256_maddubs_epi16(hi, broadcast4(xb, at + 16)),
                                );
                            }
                        }
                        for j in 0..R {
                            let p = _mm256_add_epi32(
                                _mm256_madd_epi16(s_lo[j], sc_lo),
                                _mm256_madd_epi16(s_hi[j], sc_hi),
                            );
                            sumi[j] = _mm256_add_epi32(sumi[j], p);
                        }
                    }
                }
                let d = _mm256_cvtph_ps(_mm_loadu_si128(block as *const __m128i));
                for j in 0..R {
                    let total = _mm256_sub_epi32(sumi[j], _mm256_slli_epi32(offset[j], 5));
                    let scale = _mm256_mul_ps(_mm256_set1_ps(xs[j][b].d), d);
                    acc[j] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(total), acc[j]);
                }
            }
            store(acc)
        }
    }

    /// Quad `quad` (< 8) of one packed Q2_K unit (values 4 quad + b, 0..3), or with THREE
    /// of a Q3_K unit with the third bits (bit `quad` of the unit's high group) as bit 2
    /// (0..7), as bytes.
    ///
    /// # Safety
    /// `unit` points at a whole packed unit (64 bytes, Q3_K 96).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn q2k3k_values<const THREE: bool>(unit: *const u8, quad: usize) -> __m256i {
        // SAFETY: the caller's contract; the loads are inside the unit.
        let c = unsafe { _mm256_loadu_si256(unit.add(32 * (quad / 4)) as *const __m256i) };
        let shifted = match quad % 4 {
            0 => c,
            1 => _mm256_srli_epi16(c, 2),
            2 => _mm256_srli_epi16(c, 4),
            _ => _mm256_srli_epi16(c, 6),
        };
        let v = _mm256_and_si256(shifted, _mm256_set1_epi8(0x03));
        if !THREE {
            return v;
        }
        // SAFETY: as above.
        let high = unsafe { _mm256_loadu_si256(unit.add(64) as *const __m256i) };
        let moved = match quad {
            0 => _mm256_slli_epi16(high, 2),
            1 => _mm256_slli_epi16(high, 1),
            2 => high,
            3 => _mm256_srli_epi16(high, 1),
            4 => _mm256_srli_epi16(high, 2),
            5 => _mm256_srli_epi16(high, 3),
            6 => _mm256_srli_epi16(high, 4),
            _ => _mm256_srli_epi16(high, 5),
        };
        _mm256_or_si256(v, _mm256_and_si256(moved, _mm256_set1_epi8(0x04)))
    }

    /// Q2_K, or Q3_K when THREE.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_q2k3k<const THREE: bool, const R: usize>(
        w: &[u8],
        xs: [&[BlockQ8K]; R],
    ) -> [[f32; 8]; R] {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
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
                let block = w.as_ptr().add(b * pbb);
                let mut sumi = [_mm256_setzero_si256(); R];
                // Q2_K: sum(minimum x activation sums); Q3_K: sum(scale x activation sums),
                // as the values are stored plus 4.
                let mut side = [_mm256_setzero_si256(); R];
                for u in 0..8 {
                    let scales = if THREE {
                        pair_i8(block.add(Q3K_SCALES + 16 * u))
                    } else {
                        let both = pair_u8(block.add(Q2K_SCALES + 16 * u));
                        let mins = _mm256_srli_epi16(both, 4);
                        for j in 0..R {
                            let m = _mm256_madd_epi16(mins, broadcast_pair(&xs[j][b].bsums, 2 * u));
                            side[j] = _mm256_add_epi32(side[j], m);
                        }
                        _mm256_and_si256(both, nibble16)
                    };
                    if THREE {
                        for j in 0..R {
                            let o =
                                _mm256_madd_epi16(scales, broadcast_pair(&xs[j][b].bsums, 2 * u));
                            side[j] = _mm256_add_epi32(side[j], o);
                        }
                    }
                    let (sc_lo, sc_hi) = (dup::<true>(scales), dup::<false>(scales));
                    let unit = block.add(values + unit_bytes * u);
                    // Values up to 7 times bytes up to 127: four quads of pair sums stay below
                    // 4 * 2 * 7 * 127 = 7112, inside i16.
                    let mut s_lo = [_mm256_setzero_si256(); R];
                    let mut s_hi = [_mm256_setzero_si256(); R];
                    for quad in 0..8 {
                        let v = q2k3k_values::<THREE>(unit, quad);
                        for j in 0..R {
                            let p =
                                _mm256_maddubs_epi16(v, broadcast4(&xs[j][b], 32 * u + 4 * quad));
                            if quad < 4 {
                                s_lo[j] = _mm256_add_epi16(s_lo[j], p);
                            } else {
                                s_hi[j] = _mm256_add_epi16(s_hi[j], p);
                            }
                        }
                    }
                    for j in 0..R {
                        let p = _mm256_add_epi32(
                            _mm256_madd_epi16(s_lo[j], sc_lo),
                            _mm256_madd_epi16(s_hi[j], sc_hi),
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
                        let dmin =
                            _mm256_cvtph_ps(_mm_loadu_si128(block.add(16) as *const __m128i));
                        let pos = _mm256_mul_ps(_mm256_mul_ps(xd, d), _mm256_cvtepi32_ps(sumi[j]));
                        let neg =
                            _mm256_mul_ps(_mm256_mul_ps(xd, dmin), _mm256_cvtepi32_ps(side[j]));
                        acc[j] = _mm256_add_ps(acc[j], _mm256_sub_ps(pos, neg));
                    }
                }
            }
            store(acc)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store<const R: usize>(acc: [__m256; R]) -> [[f32; 8]; R] {
        // SAFETY: the caller upholds this function's contract (its doc and its
        // `target_feature`s); every pointer and unchecked access below relies on it.
        unsafe {
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

    /// Random row-major ggml blocks: n rows of k / 256, some with extreme bytes.
    pub(crate) fn weights(rng: &mut impl Rng, format: KFormat, n: usize, k: usize) -> Vec<u8> {
        let mut w = Vec::new();
        for i in 0..n * k / QK_K {
            // Every fifth block extreme: alternately every bit set (all values and scales
            // at their top: the largest sums) and a mix of 0xFF, 0x00, 0x80 bytes.
            let (extreme, top) = (i % 5 == 0, i % 10 == 0);
            let byte = |rng: &mut dyn rand::RngCore, j: usize| match (extreme, top) {
                (true, true) => 0xFF,
                (true, false) => [0xFF, 0x00, 0x80][j % 3],
                _ => rng.random::<u8>(),
            };
            match format {
                KFormat::Q2K | KFormat::Q3K => {
                    let d_at = format.block_bytes() - if format == KFormat::Q2K { 4 } else { 2 };
                    for j in 0..d_at {
                        w.push(byte(rng, j));
                    }
                    w.extend(f16::from_f32(rng.random_range(0.0..0.01)).to_le_bytes());
                    if format == KFormat::Q2K {
                        w.extend(f16::from_f32(rng.random_range(0.0..0.01)).to_le_bytes());
                    }
                }
                KFormat::Q4K | KFormat::Q5K => {
                    w.extend(f16::from_f32(rng.random_range(0.0..0.01)).to_le_bytes());
                    w.extend(f16::from_f32(rng.random_range(0.0..0.01)).to_le_bytes());
                    for j in 4..format.block_bytes() {
                        w.push(byte(rng, j));
                    }
                }
                KFormat::Q6K => {
                    for j in 0..208 {
                        w.push(byte(rng, j));
                    }
                    w.extend(f16::from_f32(rng.random_range(0.0..0.001)).to_le_bytes());
                }
            }
        }
        w
    }

    pub(crate) fn activations(rng: &mut impl Rng, m: usize, k: usize) -> Vec<f32> {
        (0..m * k)
            .map(|i| match (i / QK_K % 3, i % 11) {
                // Every third block constant: all its bytes 127, the largest sums.
                (1, _) => 1.5,
                (_, 0) => 0.0,
                (_, 1) => 1e4,
                _ => rng.random_range(-2.0..2.0),
            })
            .collect()
    }

    fn row_dot_ref(format: KFormat, row: &[u8], x: &[BlockQ8K]) -> f32 {
        match format {
            KFormat::Q2K => q3_k::vec_dot_ref_q2_k(row, x),
            KFormat::Q3K => q3_k::vec_dot_ref_q3_k(row, x),
            KFormat::Q4K => q4_k::vec_dot_ref(row, x),
            KFormat::Q5K => q5_k::vec_dot_ref(row, x),
            KFormat::Q6K => q6_k::vec_dot_ref(row, x),
        }
    }

    const FORMATS: [KFormat; 5] = [
        KFormat::Q2K,
        KFormat::Q3K,
        KFormat::Q4K,
        KFormat::Q5K,
        KFormat::Q6K,
    ];

    #[test]
    fn packing_keeps_every_row() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for format in FORMATS {
            for &(n, k) in &[(1, 256), (8, 512), (13, 256), (17, 768)] {
                let w = weights(&mut rng, format, n, k);
                let p = PackedKMatrix::pack(format, &w, n, k).unwrap();
                let rb = k / QK_K * format.block_bytes();
                let mut row = vec![0f32; k];
                let mut want = vec![0f32; k];
                for r in 0..n {
                    p.dequantize_row(r, &mut row);
                    for (b, out) in w[r * rb..(r + 1) * rb]
                        .chunks_exact(format.block_bytes())
                        .zip(want.chunks_exact_mut(QK_K))
                    {
                        match format {
                            KFormat::Q2K => q3_k::dequantize_block_q2_k(b, out),
                            KFormat::Q3K => q3_k::dequantize_block_q3_k(b, out),
                            KFormat::Q4K => q4_k::dequantize_block(b, out),
                            KFormat::Q5K => q5_k::dequantize_block(b, out),
                            KFormat::Q6K => q6_k::dequantize_block(b, out),
                        }
                    }
                    assert_eq!(row, want, "{format:?} ({n},{k}) row {r}");
                }
            }
        }
    }

    #[test]
    fn rejects_a_wrong_size() {
        assert!(PackedKMatrix::pack(KFormat::Q4K, &[0; 143], 1, 256).is_err());
        assert!(PackedKMatrix::pack(KFormat::Q6K, &[0; 210], 1, 128).is_err());
    }

    #[test]
    fn simd_tile_matches_plain_reference() {
        if !crate::simd_test_runs("simd_tile_matches_plain_reference") {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for format in FORMATS {
            for &k in &[256, 768] {
                let w = weights(&mut rng, format, 8, k);
                let p = PackedKMatrix::pack(format, &w, 8, k).unwrap();
                let xs: Vec<Vec<BlockQ8K>> = (0..4)
                    .map(|_| {
                        let mut q = vec![BlockQ8K::default(); k / QK_K];
                        quantize_row_q8_k(&activations(&mut rng, 1, k), &mut q);
                        q
                    })
                    .collect();
                let four = tile(format, p.group(0), [&xs[0][..], &xs[1], &xs[2], &xs[3]]);
                for (j, x) in xs.iter().enumerate() {
                    let want = tile_ref(format, p.group(0), x);
                    let [one] = tile(format, p.group(0), [&x[..]]);
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

    /// The VNNI tiles against the AVX2 ones: the same bits, for one and four rows.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vnni_tile_gives_the_avx2_tiles_bits() {
        if !crate::avx512_vnni_test_runs("packed_k vnni_tile_gives_the_avx2_tiles_bits") {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        for format in FORMATS {
            for &k in &[256, 768, 1536] {
                let w = weights(&mut rng, format, 8, k);
                let p = PackedKMatrix::pack(format, &w, 8, k).unwrap();
                let xs: Vec<Vec<BlockQ8K>> = (0..4)
                    .map(|_| {
                        let mut q = vec![BlockQ8K::default(); k / QK_K];
                        quantize_row_q8_k(&activations(&mut rng, 1, k), &mut q);
                        q
                    })
                    .collect();
                let g = p.group(0);
                let four = [&xs[0][..], &xs[1], &xs[2], &xs[3]];
                // SAFETY: the CPU has every feature both tiles need (checked above).
                let (vnni, avx2) = unsafe {
                    (
                        crate::packed_k_vnni::tile(format, g, four),
                        match format {
                            KFormat::Q4K => avx2::tile_q4k::<false, 4>(g, four),
                            KFormat::Q5K => avx2::tile_q4k::<true, 4>(g, four),
                            KFormat::Q6K => avx2::tile_q6k::<4>(g, four),
                            KFormat::Q2K => avx2::tile_q2k3k::<false, 4>(g, four),
                            KFormat::Q3K => avx2::tile_q2k3k::<true, 4>(g, four),
                        },
                    )
                };
                assert_eq!(vnni, avx2, "{format:?} k {k}");
                for (j, x) in xs.iter().enumerate() {
                    // SAFETY: as above.
                    let [one] = unsafe { crate::packed_k_vnni::tile(format, g, [&x[..]]) };
                    assert_eq!(one, vnni[j], "{format:?} k {k} row {j} alone");
                }
            }
        }
    }

    #[test]
    fn matmul_matches_row_by_row_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for format in FORMATS {
            for &(n, k, m) in &[(1, 256, 1), (37, 512, 1), (17, 256, 9), (24, 768, 37)] {
                let w = weights(&mut rng, format, n, k);
                let p = PackedKMatrix::pack(format, &w, n, k).unwrap();
                let x = activations(&mut rng, m, k);
                let mut y = vec![f32::NAN; m * n];
                p.matmul(&x, m, &mut y);
                let rb = k / QK_K * format.block_bytes();
                for t in 0..m {
                    let mut xq = vec![BlockQ8K::default(); k / QK_K];
                    quantize_row_q8_k(&x[t * k..(t + 1) * k], &mut xq);
                    for o in 0..n {
                        let want = row_dot_ref(format, &w[o * rb..(o + 1) * rb], &xq);
                        let got = y[t * n + o];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{format:?} ({n},{k},{m}) [{t},{o}]: {got} vs {want}"
                        );
                    }
                }
                // One activation row alone gives the same numbers as within the batch.
                let mut one = vec![0f32; n];
                p.matmul(&x[(m - 1) * k..], 1, &mut one);
                assert_eq!(one, y[(m - 1) * n..], "{format:?} batch independence");
            }
        }
    }
}
