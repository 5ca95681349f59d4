//! LoRA adapters on the inference path, unmerged: each adapted projection adds
//! s · (x Aᵀ) Bᵀ to the frozen (quantized) projection's output. Adapters either apply to
//! every sequence (`--lora`) or are selected per sequence (a server's requests naming
//! one), several in one batched pass ([`RowSelection`]).
//!
//! A decode step adds a few rows through each of up to seven projections per block; as
//! candle products (two matmuls, a scale and an add per projection, each with its own
//! dispatch) that cost more than the quantized projections themselves: the default model
//! served 4 streams at 0.39x its plain speed with a rank-16 adapter. So rows up to
//! [`FUSED_ROWS`] go through one fused pass ([`add_rows`]: the rank-r vector, then r
//! scaled rows of Bᵀ added in place), and longer inputs (prompts) through candle's
//! blocked, threaded products.

use std::ops::Range;
use std::path::Path;

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Shape, Tensor};

use crate::error::Result;
use crate::layout::Part;
use crate::lora::{read_peft_dir, take_matrices};

/// Inputs of at most this many rows take the fused pass.
pub const FUSED_ROWS: usize = 16;

/// One adapted projection: A (r, in) and Bᵀ (r, out), row-major, and the scale s.
#[derive(Debug, Clone)]
pub struct Delta {
    a: Vec<f32>,
    b_t: Vec<f32>,
    rank: usize,
    inp: usize,
    out: usize,
    scale: f32,
}

impl Delta {
    /// From A (r, in) and B (out, r) in the row order of the weights it adds to.
    pub fn new(a: &Tensor, b: &Tensor, scale: f64) -> Result<Self> {
        let (rank, inp) = a.dims2()?;
        let (out, rank_b) = b.dims2()?;
        if rank_b != rank {
            return Err(crate::error::Error::Config(format!(
                "LoRA matrices of ranks {rank} and {rank_b}"
            )));
        }
        Ok(Self {
            a: a.flatten_all()?.to_vec1()?,
            b_t: b.t()?.flatten_all()?.to_vec1()?,
            rank,
            inp,
            out,
            scale: scale as f32,
        })
    }

    /// `y` (.., out) plus the update from `x` (.., in) on `rows` of them (None: all).
    pub fn add_to(
        &self,
        y: Tensor,
        x: &Tensor,
        rows: Option<&[u32]>,
    ) -> candle_core::Result<Tensor> {
        let n = rows.map_or(x.elem_count() / self.inp.max(1), <[u32]>::len);
        if n <= FUSED_ROWS {
            let (y, x) = (y.contiguous()?, x.contiguous()?);
            return y.apply_op2_no_bwd(&x, &AddDelta { delta: self, rows });
        }
        let dev = &Device::Cpu;
        let a = Tensor::from_slice(&self.a, (self.rank, self.inp), dev)?;
        let b_t = Tensor::from_slice(&self.b_t, (self.rank, self.out), dev)?;
        let (y_dims, x_rows) = (y.dims().to_vec(), x.reshape(((), self.inp))?);
        let y = y.reshape(((), self.out))?;
        let update = |x: &Tensor| x.matmul(&a.t()?)?.matmul(&b_t)? * self.scale as f64;
        let y = match rows {
            None => (y + update(&x_rows)?)?,
            Some(r) => {
                let idx = Tensor::from_slice(r, r.len(), dev)?;
                y.index_add(&idx, &update(&x_rows.index_select(&idx, 0)?)?, 0)?
            }
        };
        y.reshape(y_dims)
    }
}

/// Σ a·b in 16 lanes (independent sums the compiler can keep in vector registers),
/// added up at the end.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (a, b) in ca.zip(cb) {
        for j in 0..16 {
            lanes[j] += a[j] * b[j];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(a, b)| a * b).sum();
    lanes.iter().sum::<f32>() + tail
}

/// The update of the ranks `ks` for every selected row of `x` (rows of `d.inp`), added
/// into `acc` (one row of `d.out` per selected row). Each row of A and of Bᵀ is read once
/// for all rows (while it is in cache): row-at-a-time loops read the adapter once per
/// sequence of a decode step.
#[inline(always)]
fn partial_body(d: &Delta, x: &[f32], rows: &[usize], ks: Range<usize>, acc: &mut [f32]) {
    // t[i * rank + k] = s · A_k · x_rows[i]
    let mut t = vec![0f32; rows.len() * d.rank];
    for k in ks.clone() {
        let a = &d.a[k * d.inp..(k + 1) * d.inp];
        for (i, &r) in rows.iter().enumerate() {
            t[i * d.rank + k] = d.scale * dot(a, &x[r * d.inp..(r + 1) * d.inp]);
        }
    }
    for k in ks {
        let b = &d.b_t[k * d.out..(k + 1) * d.out];
        for (i, acc) in acc.chunks_exact_mut(d.out).enumerate() {
            let tk = t[i * d.rank + k];
            for (y, &b) in acc.iter_mut().zip(b) {
                *y += tk * b;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn partial_avx2(d: &Delta, x: &[f32], rows: &[usize], ks: Range<usize>, acc: &mut [f32]) {
    partial_body(d, x, rows, ks, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn partial_avx512(d: &Delta, x: &[f32], rows: &[usize], ks: Range<usize>, acc: &mut [f32]) {
    partial_body(d, x, rows, ks, acc)
}

fn partial(d: &Delta, x: &[f32], rows: &[usize], ks: Range<usize>, acc: &mut [f32], isa: Isa) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is only ever a set of features this CPU has (Isa::best, or a
        // caller's choice checked with Isa::available).
        Isa::Avx512 if Isa::Avx512.available() => unsafe { partial_avx512(d, x, rows, ks, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 if Isa::Avx2.available() => unsafe { partial_avx2(d, x, rows, ks, acc) },
        _ => partial_body(d, x, rows, ks, acc),
    }
}

/// Which compilation of the fused pass runs: the widest the CPU has, or one named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Plain,
    Avx2,
    Avx512,
}

impl Isa {
    /// The widest this CPU runs.
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Plain
    }

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        match self {
            Isa::Plain => true,
            Isa::Avx2 => matches!(Self::best(), Isa::Avx2 | Isa::Avx512),
            Isa::Avx512 => Self::best() == Isa::Avx512,
        }
    }
}

/// The fused pass over `y` (rows of `d.out`) and `x` (rows of `d.inp`) on the given rows,
/// compiled for `isa` (used only where the CPU has it). The ranks are split in two halves
/// summed apart, on two threads of the pool when there are two: the adapter's weights are
/// read from memory at every step, and one core reads them at half the speed of two.
/// The split does not depend on the rows or the threads, so neither changes a result.
pub fn add_rows(d: &Delta, x: &[f32], y: &mut [f32], rows: Option<&[u32]>, isa: Isa) {
    let rows: Vec<usize> = match rows {
        Some(r) => r.iter().map(|&r| r as usize).collect(),
        None => (0..x.len() / d.inp.max(1)).collect(),
    };
    let half = d.rank / 2;
    let (mut lo, mut hi) = (
        vec![0f32; rows.len() * d.out],
        vec![0f32; rows.len() * d.out],
    );
    let run_lo = |acc: &mut [f32]| partial(d, x, &rows, 0..half, acc, isa);
    let run_hi = |acc: &mut [f32]| partial(d, x, &rows, half..d.rank, acc, isa);
    if rayon::current_num_threads() > 1 {
        rayon::join(|| run_lo(&mut lo), || run_hi(&mut hi));
    } else {
        run_lo(&mut lo);
        run_hi(&mut hi);
    }
    for (i, &r) in rows.iter().enumerate() {
        let (lo, hi) = (
            &lo[i * d.out..(i + 1) * d.out],
            &hi[i * d.out..(i + 1) * d.out],
        );
        for ((y, &l), &h) in y[r * d.out..(r + 1) * d.out].iter_mut().zip(lo).zip(hi) {
            *y += l + h;
        }
    }
}

/// y + update(x) on some rows, as a candle op (inference only, no gradient).
struct AddDelta<'a> {
    delta: &'a Delta,
    rows: Option<&'a [u32]>,
}

impl CustomOp2 for AddDelta<'_> {
    fn name(&self) -> &'static str {
        "lora-add"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.delta;
        let (CpuStorage::F32(y), CpuStorage::F32(x)) = (ys, xs) else {
            candle_core::bail!("lora-add expects f32")
        };
        let (Some((y0, y1)), Some((x0, x1))) = (yl.contiguous_offsets(), xl.contiguous_offsets())
        else {
            candle_core::bail!("lora-add expects contiguous inputs")
        };
        let (y, x) = (&y[y0..y1], &x[x0..x1]);
        let n = x.len() / d.inp.max(1);
        if x.len() != n * d.inp || y.len() != n * d.out {
            candle_core::bail!(
                "lora-add: {} inputs and {} outputs for a ({}, {}) update",
                x.len(),
                y.len(),
                d.inp,
                d.out
            )
        }
        if self
            .rows
            .is_some_and(|r| r.iter().any(|&r| r as usize >= n))
        {
            candle_core::bail!("lora-add: a selected row is outside the {n} given")
        }
        let mut out = y.to_vec();
        add_rows(d, x, &mut out, self.rows, Isa::best());
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }
}

/// The adapter in `dir` as inference deltas for each block of a model of shape `cfg`,
/// its update scaled by `extra` beyond its own alpha / r (`--lora DIR:SCALE`); Q and K
/// rows of B reordered into GGUF's pair order, which the inference path computes in.
pub fn inference_deltas(
    cfg: &crate::Config,
    dir: &Path,
    extra: f64,
) -> Result<Vec<Vec<(Part, Delta)>>> {
    let (lora, tensors) = read_peft_dir(dir)?;
    let matrices = take_matrices(
        &lora,
        cfg.num_hidden_layers,
        |_, part| {
            let s = crate::layout::shape(cfg, part);
            (s[0], s[1])
        },
        tensors,
    )?;
    let mut layers = vec![Vec::new(); cfg.num_hidden_layers];
    for (l, part, a, b) in matrices {
        let b = match crate::layout::rotary_heads(cfg, part) {
            Some(heads) => {
                // GGUF row g holds rotate-half row inv[g].
                let map = crate::ops::frozen_quant::rope_row_map(b.dims()[0], heads);
                let mut inv = vec![0u32; map.len()];
                for (hf, &g) in map.iter().enumerate() {
                    inv[g as usize] = hf as u32;
                }
                let idx = Tensor::from_vec(inv, map.len(), &Device::Cpu)?;
                b.index_select(&idx, 0)?
            }
            None => b,
        };
        layers[l].push((part, Delta::new(&a, &b, lora.scale() * extra)?));
    }
    Ok(layers)
}

/// One adapter's updates for one block: each adapted projection with its delta.
pub type BlockDeltas = Vec<(Part, Delta)>;

/// Which rows of a batched pass each selectable adapter applies to (a server's requests
/// each naming an adapter, or none): built once per pass from the sequences' choices, used
/// by every block. Each adapter's rows go through its low-rank pair together and are
/// added in place, so a pass mixing adapters costs each adapter's rows, not each
/// sequence's.
pub struct RowSelection {
    /// (adapter id, its rows; None when every row of the pass has it).
    groups: Vec<(usize, Option<Vec<u32>>)>,
}

impl RowSelection {
    /// Sequence i holds `lens[i]` consecutive rows and wants adapter `chosen[i]`.
    pub fn new(lens: &[usize], chosen: &[Option<usize>]) -> Self {
        let mut rows: std::collections::BTreeMap<usize, Vec<u32>> = Default::default();
        let mut start = 0usize;
        for (&n, &c) in lens.iter().zip(chosen) {
            if let Some(id) = c {
                rows.entry(id)
                    .or_default()
                    .extend((start..start + n).map(|r| r as u32));
            }
            start += n;
        }
        let groups = rows
            .into_iter()
            .map(|(id, r)| (id, (r.len() != start).then_some(r)))
            .collect();
        Self { groups }
    }

    /// No sequence chose an adapter.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// `y` (1, rows, out) plus, on each chosen adapter's rows, that adapter's update of
    /// `part` from the same rows of `x` (1, rows, in); `sets[id]` are adapter id's
    /// updates of this block.
    pub fn add(
        &self,
        y: Tensor,
        x: &Tensor,
        sets: &[BlockDeltas],
        part: Part,
    ) -> candle_core::Result<Tensor> {
        let mut y = y;
        for (id, rows) in &self.groups {
            let Some(set) = sets.get(*id) else {
                candle_core::bail!("adapter {id} is not loaded")
            };
            for (_, d) in set.iter().filter(|(p, _)| *p == part) {
                y = d.add_to(y, x, rows.as_deref())?;
            }
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{add_rows, Delta, Isa};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 31 + seed * 17) % 97) as f32 / 97.0 - 0.5) * 0.3)
            .collect()
    }

    /// The update as plain products: y + s (x Aᵀ) Bᵀ.
    fn reference(a: &Tensor, b: &Tensor, s: f64, x: &Tensor, y: &Tensor) -> Vec<f32> {
        let u = (x
            .matmul(&a.t().unwrap())
            .unwrap()
            .matmul(&b.t().unwrap())
            .unwrap()
            * s)
            .unwrap();
        (y + u).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Each compilation of the fused pass (those this CPU runs) and the long-input path
    /// give the plain products' result, on all rows and on a selection.
    #[test]
    fn fused_and_blocked_updates_match_the_plain_products() {
        let dev = &Device::Cpu;
        let (r, inp, out) = (5, 37, 23);
        let a = Tensor::from_vec(values(r * inp, 1), (r, inp), dev).unwrap();
        let b = Tensor::from_vec(values(out * r, 2), (out, r), dev).unwrap();
        let d = Delta::new(&a, &b, 1.75).unwrap();
        for n in [1, 3, super::FUSED_ROWS, 40] {
            let x = Tensor::from_vec(values(n * inp, 3), (n, inp), dev).unwrap();
            let y = Tensor::from_vec(values(n * out, 4), (n, out), dev).unwrap();
            let want = reference(&a, &b, 1.75, &x, &y);
            let close = |got: &[f32]| got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-5);
            let got: Vec<f32> = d
                .add_to(y.clone(), &x, None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(close(&got), "n = {n}");
            let (xv, yv): (Vec<f32>, Vec<f32>) = (values(n * inp, 3), values(n * out, 4));
            for isa in [Isa::Plain, Isa::Avx2, Isa::Avx512]
                .into_iter()
                .filter(|i| i.available())
            {
                let mut got = yv.clone();
                add_rows(&d, &xv, &mut got, None, isa);
                assert!(close(&got), "{isa:?}, n = {n}");
            }
            // Only the selected rows change, each as the full update has it.
            let picked: Vec<u32> = (0..n as u32).filter(|i| i % 3 != 1).collect();
            let got: Vec<f32> = d
                .add_to(y.clone(), &x, Some(&picked))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for row in 0..n {
                let (g, w, y0) = (
                    &got[row * out..][..out],
                    &want[row * out..][..out],
                    &yv[row * out..][..out],
                );
                let expect = if picked.contains(&(row as u32)) {
                    w
                } else {
                    y0
                };
                assert!(
                    g.iter().zip(expect).all(|(g, e)| (g - e).abs() < 1e-5),
                    "row {row} of {n}"
                );
            }
        }
    }
}
