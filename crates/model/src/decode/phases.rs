//! The products of a block as pool phases: the input rows (normalized or gathered when
//! asked) are prepared for the matrices' kinds, by every thread for itself when there are
//! few rows, by all threads together (each its share of the rows, in a phase of its own)
//! when there are many; then each thread computes its share of the row groups, its
//! results going through a callback that stores them, adds them to the residual, or
//! combines gate and up.

use std::ops::Range;

use ferrollama_kernels::partial::{ActivationKind, Prepared, PreparedRows};
use ferrollama_kernels::pool::{self, split};

use super::buffers::{PerThread, Shared};
use crate::linear::QuantMatrix;
use crate::ops::silu_gate::silu_gate_in_place;

/// Rows from which the activations are prepared once, by all threads together, in a
/// phase of their own; below, each thread prepares all of them itself (a few hundred
/// values: cheaper than one more barrier).
pub(super) const SHARED_PREPARATION_FROM: usize = 5;

/// Where a product's input rows come from.
#[derive(Clone, Copy)]
pub(super) struct Input<'a> {
    pub buf: Shared,
    /// Values per row.
    pub width: usize,
    /// An RMSNorm weight and epsilon applied to each row first.
    pub norm: Option<(&'a [f32], f32)>,
    /// Input row j is row `picks[j]` of `buf`; None: rows 0.. in order.
    pub picks: Option<&'a [usize]>,
}

impl Input<'_> {
    /// Calls `f` with input rows `rows`, normalized or gathered into `scratch` when asked.
    ///
    /// # Safety
    /// No thread writes `buf` during the phase.
    unsafe fn with_rows(&self, rows: Range<usize>, scratch: &mut [f32], f: impl FnOnce(&[f32])) {
        let w = self.width;
        if self.norm.is_none() && self.picks.is_none() {
            // SAFETY: not written during the phase (the caller's contract).
            return f(unsafe { self.buf.read(rows.start * w..rows.end * w) });
        }
        let out = &mut scratch[..rows.len() * w];
        for (j, o) in rows.zip(out.chunks_exact_mut(w)) {
            let r = self.picks.map_or(j, |p| p[j]);
            // SAFETY: as above.
            let x = unsafe { self.buf.read(r * w..(r + 1) * w) };
            match self.norm {
                Some((weight, eps)) => rms_norm(x, weight, eps, o),
                None => o.copy_from_slice(x),
            }
        }
        f(out)
    }
}

/// RMSNorm of one row with candle's arithmetic (`candle_nn::ops::rms_norm`): the sum of
/// squares in order, then x / rms * weight.
pub(super) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum2 = x.iter().map(|&v| v * v).sum::<f32>();
    let m = (sum2 / x.len() as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v / m * w;
    }
}

/// The distinct activation kinds of `matrices`, each with one matrix of that kind.
fn kinds<'a>(matrices: &[&'a QuantMatrix]) -> [Option<(ActivationKind, &'a QuantMatrix)>; 3] {
    let mut out = [None; 3];
    for &m in matrices {
        let kind = m.activation_kind();
        if out.iter().flatten().any(|&(k, _)| k == kind) {
            continue;
        }
        if let Some(slot) = out.iter_mut().find(|s| s.is_none()) {
            *slot = Some((kind, m));
        }
    }
    out
}

/// One product over `m` input rows: the activations prepared for every kind among
/// `matrices`, then `work(thread, prepared)` on every thread of the pool.
pub(super) fn product(
    scratch: &PerThread,
    shared: &mut Prepared,
    input: Input,
    m: usize,
    matrices: &[&QuantMatrix],
    work: &(dyn Fn(usize, &Prepared) + Sync),
) {
    let pool = pool::global();
    let threads = pool.threads();
    let kinds = kinds(matrices);
    if m < SHARED_PREPARATION_FROM {
        pool.run(&|t| {
            // SAFETY: one call per thread index; `input` is not written in this phase.
            let s = unsafe { scratch.get(t) };
            let prepared = &mut s.prepared;
            unsafe {
                input.with_rows(0..m, &mut s.rows, |x| {
                    for (_, matrix) in kinds.iter().flatten() {
                        matrix.prepare(x, m, prepared);
                    }
                })
            };
            work(t, &s.prepared);
        });
        return;
    }
    let targets: [Option<PreparedRows>; 3] =
        kinds.map(|k| k.map(|(kind, _)| shared.begin(kind, m, input.width)));
    pool.run(&|t| {
        let rows = split(m, threads, t);
        if rows.is_empty() {
            return;
        }
        // SAFETY: one call per thread index; `input` is not written in this phase; each
        // thread fills its own rows of `shared`, which nothing else touches until the
        // phase ends.
        let s = unsafe { scratch.get(t) };
        let first = rows.start;
        unsafe {
            input.with_rows(rows, &mut s.rows, |x| {
                for target in targets.iter().flatten() {
                    target.fill(x, first);
                }
            })
        };
    });
    let shared = &*shared;
    pool.run(&|t| work(t, shared));
}

/// `y += input W^T` for thread `t`'s share of W's row groups (`n` outputs per row).
pub(super) fn add_product(w: &QuantMatrix, p: &Prepared, m: usize, t: usize, y: Shared, n: usize) {
    let groups = split(w.groups(), pool::global().threads(), t);
    w.tiles(p, m, groups, &mut |r, c, v| {
        // SAFETY: the columns of this thread's groups; y is not read in this phase.
        let out = unsafe { y.part(r * n + c..r * n + c + v.len()) };
        for (o, &v) in out.iter_mut().zip(v) {
            *o += v;
        }
    });
}

/// A part of a projection: rows `first..first + rows` of `matrix`, written from output
/// column `col` on.
pub(super) struct Piece {
    pub matrix: std::sync::Arc<QuantMatrix>,
    pub first: usize,
    pub rows: usize,
    pub col: usize,
}

impl Piece {
    /// Its row groups in the matrix.
    pub fn groups(&self) -> Range<usize> {
        let lanes = self.matrix.lanes();
        self.first / lanes..(self.first + self.rows).div_ceil(lanes)
    }

    /// Whether it starts and ends on group boundaries (or at the matrix's end), so its
    /// groups hold its rows and no other.
    pub fn aligned(&self) -> bool {
        let lanes = self.matrix.lanes();
        self.first.is_multiple_of(lanes)
            && (self.rows.is_multiple_of(lanes) || self.first + self.rows == self.matrix.shape().0)
    }
}

/// Thread `t`'s share of the groups of every piece (counted over all of them), stored at
/// the pieces' columns of `out` (rows of `width`).
pub(super) fn pieces_product(
    pieces: &[Piece],
    p: &Prepared,
    m: usize,
    t: usize,
    out: Shared,
    width: usize,
) {
    let total: usize = pieces.iter().map(|p| p.groups().len()).sum();
    let mine = split(total, pool::global().threads(), t);
    let mut at = 0;
    for piece in pieces {
        let groups = piece.groups();
        let n = groups.len();
        let lo = mine.start.clamp(at, at + n) - at;
        let hi = mine.end.clamp(at, at + n) - at;
        at += n;
        if lo == hi {
            continue;
        }
        let range = groups.start + lo..groups.start + hi;
        piece.matrix.tiles(p, m, range, &mut |r, c, v| {
            let o = r * width + piece.col + c - piece.first;
            // SAFETY: the columns of this thread's groups; `out` is not read in this phase.
            unsafe { out.part(o..o + v.len()) }.copy_from_slice(v);
        });
    }
}

/// Columns of the SwiGLU split: whole groups of both 8- and 16-row layouts.
pub(super) const FFN_UNIT: usize = 16;

/// Thread `t`'s share of the feed-forward columns: gate, then up combined with it by
/// SwiGLU as silu(g) * u (by the function the candle path uses, so with its bits), into
/// `hidden` (rows of `f`); `ups` holds each thread's buffer of [`SWIGLU_COLUMNS`] x
/// max_rows values (the most rows a step of the run state takes).
#[allow(clippy::too_many_arguments)]
pub(super) fn swiglu_product(
    gate: &Piece,
    up: &Piece,
    p: &Prepared,
    m: usize,
    t: usize,
    hidden: Shared,
    f: usize,
    ups: &PerThread<Vec<f32>>,
) {
    let units = split(f / FFN_UNIT, pool::global().threads(), t);
    let cols = units.start * FFN_UNIT..units.end * FFN_UNIT;
    if cols.is_empty() {
        return;
    }
    // SAFETY: one call per thread index.
    let ups = unsafe { ups.get(t) };
    // A slice of columns at a time: the gate into `hidden`, the up values beside it, then
    // SwiGLU row by row over the slice. A slice is as wide as the buffer takes at m rows
    // (multiples of 16 columns): 64 at the most rows, so the gate values wait in L2 (all of
    // a thread's columns at 512 rows were 1.5 MiB, read back from L3), and SwiGLU's
    // exponentials run over 64 values at a time instead of one tile's 16, which left them
    // waiting on the latency of one polynomial; a thread's whole share at a decode step's
    // few rows, so gate and up are one long stream each, not 2.6 KB runs alternating
    // between the two matrices (tg128 of the default model's q4_0 file 1.07x faster).
    let width = (ups.len() / m.max(1) / FFN_UNIT * FFN_UNIT).max(SWIGLU_COLUMNS);
    for start in cols.clone().step_by(width) {
        let cols = start..cols.end.min(start + width);
        let w = cols.len();
        for (piece, is_up) in [(gate, false), (up, true)] {
            let lanes = piece.matrix.lanes();
            let groups = (piece.first + cols.start) / lanes..(piece.first + cols.end) / lanes;
            piece.matrix.tiles(p, m, groups, &mut |r, c, v| {
                let c = c - piece.first;
                if is_up {
                    let o = r * w + c - cols.start;
                    ups[o..o + v.len()].copy_from_slice(v);
                } else {
                    let o = r * f + c;
                    // SAFETY: this thread's columns; `hidden` is not read by others in this
                    // phase.
                    unsafe { hidden.part(o..o + v.len()) }.copy_from_slice(v);
                }
            });
        }
        for r in 0..m {
            // SAFETY: as above.
            let g = unsafe { hidden.part(r * f + cols.start..r * f + cols.end) };
            silu_gate_in_place(g, &ups[r * w..(r + 1) * w]);
        }
    }
}

/// Columns of the SwiGLU split that one pass of gate, up and SwiGLU covers at the most rows
/// (more at fewer): 64 columns of 512 rows are 128 KiB of gate values and as many up values.
pub(super) const SWIGLU_COLUMNS: usize = 4 * FFN_UNIT;
