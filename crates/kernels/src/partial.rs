//! Matrix products in parts, for callers that split the work themselves (the decode path's
//! thread pool, [`crate::pool`]): the activations are prepared once per caller into
//! buffers it keeps ([`Prepared`], sized once, so a step allocates nothing), then any range
//! of row groups is computed with the same tiles as [`crate::PackedMatrix::matmul`] and its
//! siblings, so every output equals theirs bit for bit. Results go to a callback, which
//! stores them or adds them to a residual.

use std::ops::Range;

use crate::packed::{self, LANES};
use crate::packed_bf16::{self, PackedBf16};
use crate::packed_f16::{self, PackedF16};
use crate::packed_k::{self, PackedKMatrix};
use crate::q8_1::{quantize_row_q8_1, BlockQ8_1, QK};
use crate::q8_k::{quantize_row_q8_k, BlockQ8K, QK_K};
use crate::PackedMatrix;

/// Activation rows prepared for the packed products: q8_1 blocks for the 32-value block
/// formats, q8_K blocks for the K-quants, f16-rounded values for f16 weights, pairs of
/// bf16 values for bf16 weights. Only the kind a matrix needs is filled.
#[derive(Default)]
pub struct Prepared {
    q8_1: Vec<BlockQ8_1>,
    q8_k: Vec<BlockQ8K>,
    f16: Vec<f32>,
    bf16: Vec<u32>,
}

impl Prepared {
    /// Buffers for up to `rows` rows of up to `k` values, of every kind.
    pub fn with_capacity(rows: usize, k: usize) -> Self {
        Self {
            q8_1: Vec::with_capacity(rows * k.div_ceil(QK)),
            q8_k: Vec::with_capacity(rows * k.div_ceil(QK_K)),
            f16: Vec::with_capacity(rows * k),
            bf16: Vec::with_capacity(rows * packed_bf16::pairs(k)),
        }
    }
}

/// What activations become for a packed product; matrices of one kind share them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationKind {
    /// q8_1 blocks (the 32-value block formats).
    Q8_1,
    /// q8_K blocks (the K-quants).
    Q8K,
    /// Rounded to f16.
    F16,
    /// Rounded to bf16, in pairs.
    Bf16,
}

impl Prepared {
    /// Sizes the buffer of `kind` for `m` rows of `k` inputs (allocating only past the
    /// capacity) and returns where [`PreparedRows::fill`] writes them: several threads
    /// can then prepare disjoint rows of one input, each its own share.
    pub fn begin(&mut self, kind: ActivationKind, m: usize, k: usize) -> PreparedRows {
        let ptr = match kind {
            ActivationKind::Q8_1 => {
                self.q8_1.clear();
                self.q8_1.resize(m * (k / QK), BlockQ8_1::default());
                self.q8_1.as_mut_ptr().cast()
            }
            ActivationKind::Q8K => {
                self.q8_k.clear();
                self.q8_k.resize(m * (k / QK_K), BlockQ8K::default());
                self.q8_k.as_mut_ptr().cast()
            }
            ActivationKind::F16 => {
                self.f16.clear();
                self.f16.resize(m * k, 0.0);
                self.f16.as_mut_ptr().cast()
            }
            ActivationKind::Bf16 => {
                self.bf16.clear();
                self.bf16.resize(m * packed_bf16::pairs(k), 0);
                self.bf16.as_mut_ptr().cast()
            }
        };
        PreparedRows { kind, ptr, m, k }
    }

    /// Prepares all `m` rows of `x` (m, k) as `kind`, on this thread.
    fn prepare(&mut self, kind: ActivationKind, x: &[f32], m: usize, k: usize) {
        assert_eq!(x.len(), m * k, "activations of the wrong size");
        let rows = self.begin(kind, m, k);
        // SAFETY: `self` is borrowed mutably for the whole fill, the one fill there is.
        unsafe { rows.fill(x, 0) };
    }
}

/// The rows of a [`Prepared`] buffer being filled by several threads ([`Prepared::begin`]).
#[derive(Clone, Copy)]
pub struct PreparedRows {
    kind: ActivationKind,
    ptr: *mut u8,
    m: usize,
    k: usize,
}

// SAFETY: a plain pointer into the buffer; `fill`'s contract keeps writers disjoint.
unsafe impl Send for PreparedRows {}
unsafe impl Sync for PreparedRows {}

impl PreparedRows {
    /// Prepares `x` (whole rows of k inputs) as rows `first..` of the buffer.
    ///
    /// # Safety
    /// The [`Prepared`] this came from is neither moved, read nor changed until every
    /// fill has returned, and fills that may run at the same time write disjoint rows.
    pub unsafe fn fill(&self, x: &[f32], first: usize) {
        let k = self.k;
        let rows = x.len() / k.max(1);
        assert!(
            x.len() == rows * k && first + rows <= self.m,
            "rows outside the buffer"
        );
        // SAFETY: rows first..first + rows lie inside the buffer `begin` sized for m rows
        // (asserted), which the caller keeps alive and untouched, and no other fill writes
        // them (the caller's contract).
        unsafe {
            match self.kind {
                ActivationKind::Q8_1 => {
                    let blocks = k / QK;
                    let base = self.ptr.cast::<BlockQ8_1>().add(first * blocks);
                    let out = std::slice::from_raw_parts_mut(base, rows * blocks);
                    for (q, row) in out.chunks_exact_mut(blocks).zip(x.chunks_exact(k)) {
                        quantize_row_q8_1(row, q);
                    }
                }
                ActivationKind::Q8K => {
                    let blocks = k / QK_K;
                    let base = self.ptr.cast::<BlockQ8K>().add(first * blocks);
                    let out = std::slice::from_raw_parts_mut(base, rows * blocks);
                    for (q, row) in out.chunks_exact_mut(blocks).zip(x.chunks_exact(k)) {
                        quantize_row_q8_k(row, q);
                    }
                }
                ActivationKind::F16 => {
                    let out = std::slice::from_raw_parts_mut(
                        self.ptr.cast::<f32>().add(first * k),
                        rows * k,
                    );
                    out.copy_from_slice(x);
                    packed_f16::round_to_f16(out);
                }
                ActivationKind::Bf16 => {
                    let pairs = packed_bf16::pairs(k);
                    let out = std::slice::from_raw_parts_mut(
                        self.ptr.cast::<u32>().add(first * pairs),
                        rows * pairs,
                    );
                    if k > 0 {
                        for (o, row) in out.chunks_exact_mut(pairs).zip(x.chunks_exact(k)) {
                            packed_bf16::round_to_bf16_pairs(row, o);
                        }
                    }
                }
            }
        }
    }
}

/// Activation rows per block of [`each_tile`]: a block's prepared rows stay in L1 while
/// the groups of a chunk meet them.
const ROW_BLOCK: usize = 32;
/// Row groups per chunk of [`each_tile`]: a chunk's weights (16 x 8 rows) stay in L2
/// while every row block meets them, so a product over many rows reads its weights from
/// memory once.
const GROUP_BLOCK: usize = 16;

/// Calls `emit(row, first_output, sums)` for every activation row and every row group
/// in `groups` (`sums` holding that group's outputs, the last group's cut at n): chunks of
/// [`GROUP_BLOCK`] groups, in each blocks of [`ROW_BLOCK`] rows, R rows at a time (R
/// dividing [`ROW_BLOCK`]) and a block's last 1..R one by one. Every row is computed alike
/// in a tile of one or R, so the outputs equal the whole products'.
fn each_tile<const W: usize, const R: usize>(
    n: usize,
    m: usize,
    groups: Range<usize>,
    mut tile_r: impl FnMut(usize, usize) -> [[f32; W]; R],
    mut tile1: impl FnMut(usize, usize) -> [f32; W],
    emit: &mut impl FnMut(usize, usize, &[f32]),
) {
    let mut chunk = groups.start;
    while chunk < groups.end {
        let chunk_end = groups.end.min(chunk + GROUP_BLOCK);
        for block in (0..m).step_by(ROW_BLOCK) {
            let end = m.min(block + ROW_BLOCK);
            for g in chunk..chunk_end {
                let (first, width) = (g * W, W.min(n - g * W));
                // A whole group passes W values, a length the compiler sees: the callback's
                // stores become vector moves instead of calls to memmove.
                let mut out = |t: usize, s: &[f32; W]| {
                    if width == W {
                        emit(t, first, s)
                    } else {
                        emit(t, first, &s[..width])
                    }
                };
                let mut t = block;
                while t + R <= end {
                    for (j, s) in tile_r(g, t).iter().enumerate() {
                        out(t + j, s);
                    }
                    t += R;
                }
                for t in t..end {
                    out(t, &tile1(g, t));
                }
            }
        }
        chunk = chunk_end;
    }
}

impl PackedMatrix {
    /// Row groups of [`LANES`] outputs.
    pub fn groups(&self) -> usize {
        self.shape().0.div_ceil(LANES)
    }

    /// Quantizes `m` activation rows `x` (m, k) for [`PackedMatrix::tiles`].
    pub fn prepare(&self, x: &[f32], m: usize, p: &mut Prepared) {
        p.prepare(ActivationKind::Q8_1, x, m, self.shape().1);
    }

    /// The outputs of row groups `groups` for the `m` rows last prepared in `p`.
    pub fn tiles(
        &self,
        p: &Prepared,
        m: usize,
        groups: Range<usize>,
        emit: &mut impl FnMut(usize, usize, &[f32]),
    ) {
        let blocks = self.shape().1 / QK;
        let row = |t: usize| &p.q8_1[t * blocks..(t + 1) * blocks];
        let f = self.format();
        each_tile(
            self.shape().0,
            m,
            groups,
            |g, t| {
                packed::tile(
                    f,
                    self.group(g),
                    [row(t), row(t + 1), row(t + 2), row(t + 3)],
                )
            },
            |g, t| packed::tile(f, self.group(g), [row(t)])[0],
            emit,
        );
    }
}

impl PackedKMatrix {
    /// Row groups of [`LANES`] outputs.
    pub fn groups(&self) -> usize {
        self.shape().0.div_ceil(LANES)
    }

    /// Quantizes `m` activation rows `x` (m, k) for [`PackedKMatrix::tiles`].
    pub fn prepare(&self, x: &[f32], m: usize, p: &mut Prepared) {
        p.prepare(ActivationKind::Q8K, x, m, self.shape().1);
    }

    /// The outputs of row groups `groups` for the `m` rows last prepared in `p`.
    pub fn tiles(
        &self,
        p: &Prepared,
        m: usize,
        groups: Range<usize>,
        emit: &mut impl FnMut(usize, usize, &[f32]),
    ) {
        let blocks = self.shape().1 / QK_K;
        let row = |t: usize| &p.q8_k[t * blocks..(t + 1) * blocks];
        let f = self.format();
        each_tile(
            self.shape().0,
            m,
            groups,
            |g, t| {
                packed_k::tile(
                    f,
                    self.group(g),
                    [row(t), row(t + 1), row(t + 2), row(t + 3)],
                )
            },
            |g, t| packed_k::tile(f, self.group(g), [row(t)])[0],
            emit,
        );
    }
}

/// The 16-row tiles of f16 and bf16 weights, for any number of prepared rows.
trait HalfTiles {
    /// One prepared activation row.
    type Row: ?Sized;
    fn tile<const R: usize>(&self, g: usize, rows: [&Self::Row; R]) -> [[f32; 16]; R];
}

impl HalfTiles for PackedF16 {
    type Row = [f32];
    fn tile<const R: usize>(&self, g: usize, rows: [&[f32]; R]) -> [[f32; 16]; R] {
        packed_f16::tile(self.group(g), rows)
    }
}

impl HalfTiles for PackedBf16 {
    type Row = [u32];
    fn tile<const R: usize>(&self, g: usize, rows: [&[u32]; R]) -> [[f32; 16]; R] {
        packed_bf16::tile(self.group(g), rows)
    }
}

/// [`each_tile`] over 16-row groups with tiles of eight prepared rows (`eight`: the 512-bit
/// kernels' 32 registers hold their accumulators) or four.
fn half_tiles<'a, T: HalfTiles>(
    w: &T,
    eight: bool,
    n: usize,
    m: usize,
    groups: Range<usize>,
    row: impl Fn(usize) -> &'a T::Row,
    emit: &mut impl FnMut(usize, usize, &[f32]),
) where
    T::Row: 'a,
{
    let one = |g: usize, t: usize| w.tile(g, [row(t)])[0];
    if eight {
        let rows = |t: usize| std::array::from_fn::<_, 8, _>(|j| row(t + j));
        each_tile(n, m, groups, |g, t| w.tile(g, rows(t)), one, emit);
    } else {
        let rows = |t: usize| std::array::from_fn::<_, 4, _>(|j| row(t + j));
        each_tile(n, m, groups, |g, t| w.tile(g, rows(t)), one, emit);
    }
}

impl PackedF16 {
    /// Row groups of [`packed_f16::LANES`] outputs.
    pub fn groups(&self) -> usize {
        self.shape().0.div_ceil(packed_f16::LANES)
    }

    /// Rounds `m` activation rows `x` (m, k) to f16 for [`PackedF16::tiles`].
    pub fn prepare(&self, x: &[f32], m: usize, p: &mut Prepared) {
        p.prepare(ActivationKind::F16, x, m, self.shape().1);
    }

    /// The outputs of row groups `groups` for the `m` rows last prepared in `p`.
    pub fn tiles(
        &self,
        p: &Prepared,
        m: usize,
        groups: Range<usize>,
        emit: &mut impl FnMut(usize, usize, &[f32]),
    ) {
        let k = self.shape().1;
        let rows = |t: usize| &p.f16[t * k..(t + 1) * k];
        let eight = packed_f16::prompt_tile_rows() == 8;
        half_tiles(self, eight, self.shape().0, m, groups, rows, emit);
    }
}

impl PackedBf16 {
    /// Row groups of [`packed_bf16::LANES`] outputs.
    pub fn groups(&self) -> usize {
        self.shape().0.div_ceil(packed_bf16::LANES)
    }

    /// Rounds `m` activation rows `x` (m, k) to bf16 pairs for [`PackedBf16::tiles`].
    pub fn prepare(&self, x: &[f32], m: usize, p: &mut Prepared) {
        p.prepare(ActivationKind::Bf16, x, m, self.shape().1);
    }

    /// The outputs of row groups `groups` for the `m` rows last prepared in `p`.
    pub fn tiles(
        &self,
        p: &Prepared,
        m: usize,
        groups: Range<usize>,
        emit: &mut impl FnMut(usize, usize, &[f32]),
    ) {
        let pairs = packed_bf16::pairs(self.shape().1);
        let rows = |t: usize| &p.bf16[t * pairs..(t + 1) * pairs];
        let eight = packed_bf16::prompt_tile_rows() == 8;
        half_tiles(self, eight, self.shape().0, m, groups, rows, emit);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::{KFormat, WeightFormat};

    /// The parts, over split group ranges, put together.
    fn in_parts(
        m: usize,
        n: usize,
        groups: usize,
        parts: usize,
        mut run: impl FnMut(Range<usize>, &mut dyn FnMut(usize, usize, &[f32])),
    ) -> Vec<f32> {
        let mut y = vec![f32::NAN; m * n];
        for i in 0..parts {
            run(crate::pool::split(groups, parts, i), &mut |t, c, s| {
                y[t * n + c..t * n + c + s.len()].copy_from_slice(s)
            });
        }
        y
    }

    /// `x` (m rows of k) prepared by [`PreparedRows::fill`] in two parts, as two threads
    /// would.
    fn filled_in_parts(kind: ActivationKind, x: &[f32], m: usize, k: usize) -> Prepared {
        let mut p = Prepared::default();
        let target = p.begin(kind, m, k);
        let half = m / 2;
        // SAFETY: p is not touched until both fills return; they write disjoint rows.
        unsafe {
            target.fill(&x[half * k..], half);
            target.fill(&x[..half * k], 0);
        }
        p
    }

    #[test]
    fn parts_give_the_whole_products_bits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // n past one chunk of groups, m past one block of rows.
        let (n, k) = (140, 512);
        for m in [1, 3, 4, 9, 37] {
            let x = packed::tests::activations(&mut rng, m, k);
            for format in [
                WeightFormat::Q4_0,
                WeightFormat::Q4_1,
                WeightFormat::Q5_0,
                WeightFormat::Q5_1,
                WeightFormat::Q8_0,
            ] {
                let bytes = packed::tests::weights(&mut rng, format, n, k);
                let w = PackedMatrix::pack(format, &bytes, n, k).unwrap();
                let mut whole = vec![0f32; m * n];
                w.matmul(&x, m, &mut whole);
                let mut p = Prepared::with_capacity(m, k);
                w.prepare(&x, m, &mut p);
                let parts = in_parts(m, n, w.groups(), 3, |g, e| {
                    w.tiles(&p, m, g, &mut |t, c, s| e(t, c, s))
                });
                assert_eq!(parts, whole, "{format:?}, m = {m}");
                let p = filled_in_parts(ActivationKind::Q8_1, &x, m, k);
                let parts = in_parts(m, n, w.groups(), 2, |g, e| {
                    w.tiles(&p, m, g, &mut |t, c, s| e(t, c, s))
                });
                assert_eq!(parts, whole, "{format:?}, m = {m}, filled in parts");
            }
            let x = packed_k::tests::activations(&mut rng, m, k);
            for format in [
                KFormat::Q2K,
                KFormat::Q3K,
                KFormat::Q4K,
                KFormat::Q5K,
                KFormat::Q6K,
            ] {
                let bytes = packed_k::tests::weights(&mut rng, format, n, k);
                let w = PackedKMatrix::pack(format, &bytes, n, k).unwrap();
                let mut whole = vec![0f32; m * n];
                w.matmul(&x, m, &mut whole);
                let mut p = Prepared::with_capacity(m, k);
                w.prepare(&x, m, &mut p);
                let parts = in_parts(m, n, w.groups(), 4, |g, e| {
                    w.tiles(&p, m, g, &mut |t, c, s| e(t, c, s))
                });
                assert_eq!(parts, whole, "{format:?}, m = {m}");
                let p = filled_in_parts(ActivationKind::Q8K, &x, m, k);
                let parts = in_parts(m, n, w.groups(), 2, |g, e| {
                    w.tiles(&p, m, g, &mut |t, c, s| e(t, c, s))
                });
                assert_eq!(parts, whole, "{format:?}, m = {m}, filled in parts");
            }
            let halves: Vec<u8> = (0..n * k)
                .flat_map(|i| {
                    half::f16::from_f32(((i * 13 % 17) as f32 - 8.0) * 0.01).to_le_bytes()
                })
                .collect();
            let w = PackedF16::pack(&halves, n, k).unwrap();
            let mut whole = vec![0f32; m * n];
            w.matmul(&x, m, &mut whole);
            let mut p = Prepared::default();
            w.prepare(&x, m, &mut p);
            let parts = in_parts(m, n, w.groups(), 2, |g, e| {
                w.tiles(&p, m, g, &mut |t, c, s| e(t, c, s))
            });
            assert_eq!(parts, whole, "f16, m = {m}");
            let p = filled_in_parts(ActivationKind::F16, &x, m, k);
            let parts = in_parts(m, n, w.groups(), 3, |g, e| {
                w.tiles(&p, m, g, &mut |t, c, s| e(t, c, s))
            });
            assert_eq!(parts, whole, "f16, m = {m}, filled in parts");
            let w = PackedBf16::pack(&halves, n, k).unwrap();
            let mut whole = vec![0f32; m * n];
            w.matmul(&x, m, &mut whole);
            let mut p = Prepared::default();
            w.prepare(&x, m, &mut p);
            let parts = in_parts(m, n, w.groups(), 2, |g, e| {
                w.tiles(&p, m, g, &mut |t, c, s| e(t, c, s))
            });
            assert_eq!(parts, whole, "bf16, m = {m}");
            let p = filled_in_parts(ActivationKind::Bf16, &x, m, k);
            let parts = in_parts(m, n, w.groups(), 3, |g, e| {
                w.tiles(&p, m, g, &mut |t, c, s| e(t, c, s))
            });
            assert_eq!(parts, whole, "bf16, m = {m}, filled in parts");
        }
    }
}
