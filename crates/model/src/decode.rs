//! The decode path: a forward pass of a few rows (a generated token, a handful of
//! sequences' tokens, a short prompt chunk) over buffers allocated once per model and
//! batch size ([`RunState`], as llama2.c's `RunState`), without candle's tensors, on our
//! thread pool ([`ferrollama_kernels::pool`]).
//!
//! A step of the default model is ~150 phases of a few microseconds each; through candle
//! every one of them allocated its output, copied between layouts and woke rayon's
//! threads. Here each block is five phases, one barrier each:
//! 1. every thread normalizes the rows and prepares them for the Q/K/V product (each
//!    thread its own copy: a few hundred values, cheaper than a barrier), then computes
//!    its share of the product's row groups;
//! 2. the caller rotates and stores the new keys and values (a few hundred values);
//!    the threads share the (row, head) pairs of attention;
//! 3. each thread prepares the attention output and computes its share of the output
//!    projection, adding it to the residual;
//! 4. normalization again, then gate and up for a share of the columns, combined by
//!    SwiGLU as they come;
//! 5. the down projection, added to the residual.
//!
//! Every value is computed with the same operations in the same order as the candle path
//! of [`Llama::forward_batch`] (the same tiles, candle's RMSNorm and RoPE arithmetic, the
//! same f16 roundings), so both give the same bits; the tests compare them.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferrollama_kernels::attention::{attend_one_head, Heads, Probabilities};
use ferrollama_kernels::partial::Prepared;
use ferrollama_kernels::pool::{self, split};

use crate::attention::Precision;
use crate::error::{Error, Result};
use crate::linear::{ActivationKind, QuantMatrix};
use crate::llama::{Cache, Embedding, Llama, SeqBatch};

/// Most rows (tokens over every sequence) one step takes; larger batches (prompts) go
/// through the candle path, where the products dominate.
pub const MAX_ROWS: usize = 16;

/// Columns of the SwiGLU split: whole groups of both 8- and 16-row layouts.
const FFN_UNIT: usize = 16;

/// A part of a projection: rows `first..first + rows` of `matrix`, written from output
/// column `col` on.
struct Piece {
    matrix: Arc<QuantMatrix>,
    first: usize,
    rows: usize,
    col: usize,
}

impl Piece {
    /// Its row groups in the matrix.
    fn groups(&self) -> Range<usize> {
        let lanes = self.matrix.lanes();
        self.first / lanes..(self.first + self.rows).div_ceil(lanes)
    }

    /// Whether it starts and ends on group boundaries (or at the matrix's end), so its
    /// groups hold its rows and no other.
    fn aligned(&self) -> bool {
        let lanes = self.matrix.lanes();
        self.first.is_multiple_of(lanes)
            && (self.rows.is_multiple_of(lanes) || self.first + self.rows == self.matrix.shape().0)
    }
}

/// The weights of one block as the decode path reads them.
struct BlockPlan {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    eps: f32,
    qkv: Vec<Piece>,
    o: Arc<QuantMatrix>,
    gate: Piece,
    up: Piece,
    down: Arc<QuantMatrix>,
}

/// One thread's buffers.
struct Scratch {
    prepared: Prepared,
    /// Normalized rows (rows x hidden).
    normed: Vec<f32>,
    /// Attention scores of one head (the context).
    scores: Vec<f32>,
    /// One rotated query head.
    query: Vec<f32>,
}

/// Per-thread scratch, each entry used by one pool thread index at a time.
struct PerThread(Vec<UnsafeCell<Scratch>>);

// SAFETY: entry i is only reached through `get(i)` by the one call of a phase that runs
// as thread index i (the pool runs each index once per phase; serially when busy).
unsafe impl Sync for PerThread {}

impl PerThread {
    /// # Safety
    /// No other live reference to entry `i` may exist (one phase call per index).
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self, i: usize) -> &mut Scratch {
        // SAFETY: upheld by the caller (see above).
        unsafe { &mut *self.0[i].get() }
    }
}

/// A buffer that the threads of a phase write in disjoint parts, or all read.
#[derive(Clone, Copy)]
struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: phases write disjoint ranges only, and never read what another thread of the same
// phase writes (see each phase).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn new(v: &mut [f32]) -> Self {
        Self {
            ptr: v.as_mut_ptr(),
            len: v.len(),
        }
    }

    /// # Safety
    /// No other thread touches `r` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, r: Range<usize>) -> &mut [f32] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "{r:?} outside {}",
            self.len
        );
        // SAFETY: inside the buffer (asserted); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.len()) }
    }

    /// # Safety
    /// No thread writes `r` while the slice lives.
    unsafe fn read(&self, r: Range<usize>) -> &[f32] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "{r:?} outside {}",
            self.len
        );
        // SAFETY: inside the buffer (asserted); not written meanwhile by the contract.
        unsafe { std::slice::from_raw_parts(self.ptr.add(r.start), r.len()) }
    }
}

/// Where a row of the step belongs.
#[derive(Clone, Copy, Default)]
struct Row {
    seq: usize,
    pos: usize,
}

/// The buffers of the decode path for one model and up to `max_rows` rows per step,
/// allocated once: a step allocates nothing (beyond the KV cache's first use, and an
/// embedding that is not on our kernels).
pub struct RunState {
    blocks: Vec<BlockPlan>,
    final_norm: Vec<f32>,
    final_eps: f32,
    head: Arc<QuantMatrix>,
    max_rows: usize,
    x: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    hidden: Vec<f32>,
    logits: Vec<f32>,
    rows: Vec<Row>,
    out_rows: Vec<usize>,
    threads: PerThread,
}

impl RunState {
    /// Buffers for `model` and steps of up to `max_rows` rows. An error when the model
    /// cannot take this path: a weight type off our kernels (candle's products), or a
    /// layout whose parts do not split on group boundaries.
    pub fn new(model: &Llama, max_rows: usize) -> Result<Self> {
        let cfg = &model.config;
        let unsupported = |what: &str| Error::Unsupported {
            file: "model".into(),
            msg: format!("the decode path cannot run it: {what}"),
        };
        let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (q, kv) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        if !f.is_multiple_of(FFN_UNIT) {
            return Err(unsupported("a feed-forward width off 16-column groups"));
        }
        let mut blocks = Vec::with_capacity(model.layers.len());
        for layer in &model.layers {
            let parts = |stacked: &crate::linear::Stacked| {
                stacked
                    .quant_parts()
                    .ok_or_else(|| unsupported("a weight type without our kernels"))
            };
            let mut col = 0;
            let qkv: Vec<Piece> = parts(&layer.self_attn.qkv)?
                .into_iter()
                .map(|(matrix, first, rows)| {
                    col += rows;
                    Piece {
                        matrix,
                        first,
                        rows,
                        col: col - rows,
                    }
                })
                .collect();
            let [gate, up]: [Piece; 2] = parts(&layer.mlp.gate_up)?
                .into_iter()
                .map(|(matrix, first, rows)| Piece {
                    matrix,
                    first,
                    rows,
                    col: 0,
                })
                .collect::<Vec<_>>()
                .try_into()
                .map_err(|_| unsupported("gate and up are not two parts"))?;
            let whole = |l: &crate::linear::Linear| {
                l.quant()
                    .cloned()
                    .ok_or_else(|| unsupported("a weight type without our kernels"))
            };
            let plan = BlockPlan {
                attn_norm: layer.input_layernorm.values.clone(),
                ffn_norm: layer.post_attention_layernorm.values.clone(),
                eps: layer.input_layernorm.eps,
                qkv,
                o: whole(&layer.self_attn.o_proj)?,
                gate,
                up,
                down: whole(&layer.mlp.down_proj)?,
            };
            let aligned = plan.qkv.iter().all(Piece::aligned)
                && col == q + 2 * kv
                && [&plan.gate, &plan.up]
                    .iter()
                    .all(|p| p.aligned() && p.rows == f);
            if !aligned {
                return Err(unsupported("projection parts off group boundaries"));
            }
            if plan.ffn_norm.len() != h || plan.attn_norm.len() != h {
                return Err(Error::Internal("a norm of the wrong width".into()));
            }
            blocks.push(plan);
        }
        let head = model
            .lm_head
            .quant()
            .cloned()
            .ok_or_else(|| unsupported("an output projection without our kernels"))?;
        let widest = h.max(q).max(f);
        let threads = (0..pool::global().threads())
            .map(|_| {
                UnsafeCell::new(Scratch {
                    prepared: Prepared::with_capacity(max_rows, widest),
                    normed: vec![0.0; max_rows * h],
                    scores: Vec::with_capacity(model.max_context()),
                    query: vec![0.0; cfg.head_dim],
                })
            })
            .collect();
        Ok(Self {
            blocks,
            final_norm: model.norm.values.clone(),
            final_eps: model.norm.eps,
            head,
            max_rows,
            x: vec![0.0; max_rows * h],
            qkv: vec![0.0; max_rows * (q + 2 * kv)],
            att: vec![0.0; max_rows * q],
            hidden: vec![0.0; max_rows * f],
            logits: vec![0.0; max_rows * v],
            rows: Vec::with_capacity(max_rows),
            out_rows: Vec::with_capacity(max_rows),
            threads: PerThread(threads),
        })
    }

    /// Most rows a step takes.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
}

/// RMSNorm of one row with candle's arithmetic (`candle_nn::ops::rms_norm`): the sum of
/// squares in order, then x / rms * weight.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum2 = x.iter().map(|&v| v * v).sum::<f32>();
    let m = (sum2 / x.len() as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v / m * w;
    }
}

/// Rounds to the nearest f16 (ties to even), kept as f32: candle's `to_dtype` there and
/// back (IEEE rounding: the vector conversion gives the same bits).
fn round_f16(x: &mut [f32]) {
    ferrollama_kernels::packed_f16::round_to_f16(x);
}

/// Prepares `x` (m rows) for every kind among `matrices`, once per kind.
fn prepare_for<'a>(
    matrices: impl Iterator<Item = &'a QuantMatrix>,
    x: &[f32],
    m: usize,
    p: &mut Prepared,
) {
    let mut done: [Option<ActivationKind>; 3] = [None; 3];
    for matrix in matrices {
        let kind = matrix.activation_kind();
        if done.contains(&Some(kind)) {
            continue;
        }
        matrix.prepare(x, m, p);
        if let Some(slot) = done.iter_mut().find(|s| s.is_none()) {
            *slot = Some(kind);
        }
    }
}

impl Llama {
    /// Whether the decode path can take this batch: no LoRA on the model, no sequence
    /// selecting an adapter.
    pub(crate) fn decode_path_takes(&self, seqs: &[SeqBatch]) -> bool {
        seqs.iter().all(|s| s.adapter.is_none())
            && self
                .layers
                .iter()
                .all(|l| l.self_attn.lora.is_empty() && l.mlp.lora.is_empty())
    }

    /// [`Llama::forward_batch`] on the decode path, into `state`'s buffers: the logits of
    /// the last `seqs[i].outputs` rows of each sequence, in order, `vocab_size` each. The
    /// same bits as `forward_batch`. An error when the batch has more rows than the state
    /// takes or needs what the path lacks (LoRA adapters); on other errors the caches may
    /// hold part of the input: reset them.
    pub fn step<'s>(
        &self,
        state: &'s mut RunState,
        seqs: &[SeqBatch],
        caches: &mut [&mut Cache],
    ) -> Result<&'s [f32]> {
        self.check_batch(seqs, caches)?;
        let m: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if m > state.max_rows {
            return Err(Error::Config(format!(
                "a decode step of {m} rows, the run state takes {}",
                state.max_rows
            )));
        }
        if !self.decode_path_takes(seqs) || state.blocks.len() != self.layers.len() {
            return Err(Error::Config(
                "the decode path runs without LoRA adapters only".into(),
            ));
        }
        let cfg = &self.config;
        let (h, f, vocab) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        state.rows.clear();
        state.out_rows.clear();
        for (i, (s, c)) in seqs.iter().zip(caches.iter()).enumerate() {
            let first = state.rows.len();
            let base = c.seq_len();
            state.rows.extend((0..s.tokens.len()).map(|j| Row {
                seq: i,
                pos: base + j,
            }));
            let n = s.tokens.len();
            state
                .out_rows
                .extend(first + n - s.outputs.clamp(1, n)..first + n);
        }
        self.embed_rows(seqs, &mut state.x[..m * h])?;
        // Clones of one cache share memory: their sequences append and attend one after
        // another, as on the candle path (see `LayerKv`).
        let shared = caches.iter().enumerate().any(|(i, a)| {
            caches[..i]
                .iter()
                .any(|b| a.layers[0].shares_memory_with(&b.layers[0]))
        });
        for (l, plan) in state.blocks.iter().enumerate() {
            let scratch = &state.threads;
            let x = Shared::new(&mut state.x);
            let qkv = Shared::new(&mut state.qkv);
            let att = Shared::new(&mut state.att);
            let hidden = Shared::new(&mut state.hidden);
            qkv_phase(plan, scratch, x, qkv, m, h);
            let rows = &state.rows;
            let attn = &self.layers[l].self_attn;
            if shared {
                let mut start = 0;
                for (i, seq) in seqs.iter().enumerate() {
                    let n = seq.tokens.len();
                    self.store_keys(l, caches[i], qkv, start..start + n)?;
                    self.attention_phase(l, scratch, caches, rows, qkv, att, start..start + n)?;
                    start += n;
                }
            } else {
                let mut start = 0;
                for (i, seq) in seqs.iter().enumerate() {
                    let n = seq.tokens.len();
                    self.store_keys(l, caches[i], qkv, start..start + n)?;
                    start += n;
                }
                self.attention_phase(l, scratch, caches, rows, qkv, att, 0..m)?;
            }
            let q_width = attn.n_head * attn.head_dim;
            residual_phase(&plan.o, scratch, att, x, m, q_width, h);
            ffn_phase(plan, scratch, x, hidden, m, h, f);
            residual_phase(&plan.down, scratch, hidden, x, m, f, h);
        }
        let outs = state.out_rows.len();
        let (x, logits) = (Shared::new(&mut state.x), Shared::new(&mut state.logits));
        let (head, out_rows) = (&state.head, &state.out_rows);
        let (norm, eps, scratch) = (&state.final_norm, state.final_eps, &state.threads);
        let threads = pool::global().threads();
        pool::global().run(&|t| {
            // SAFETY: one call per thread index; x is only read in this phase, and each
            // thread writes its own columns of the logits.
            let s = unsafe { scratch.get(t) };
            for (j, &r) in out_rows.iter().enumerate() {
                let row = unsafe { x.read(r * h..(r + 1) * h) };
                rms_norm(row, norm, eps, &mut s.normed[j * h..(j + 1) * h]);
            }
            head.prepare(&s.normed[..outs * h], outs, &mut s.prepared);
            let groups = split(head.groups(), threads, t);
            head.tiles(&s.prepared, outs, groups, &mut |j, c, v| {
                let at = j * vocab + c;
                unsafe { logits.part(at..at + v.len()) }.copy_from_slice(v);
            });
        });
        Ok(&state.logits[..outs * vocab])
    }

    /// The embeddings of every sequence's tokens, one row each, into `out`.
    fn embed_rows(&self, seqs: &[SeqBatch], out: &mut [f32]) -> Result<()> {
        let h = self.config.hidden_size;
        let tokens = seqs.iter().flat_map(|s| s.tokens.iter().copied());
        if let Some(bad) = tokens
            .clone()
            .find(|&t| t as usize >= self.config.vocab_size)
        {
            return Err(Error::TokenOutOfVocabulary {
                id: bad,
                vocab: self.config.vocab_size,
            });
        }
        match &self.embed_tokens {
            Embedding::Packed(matrix) => {
                for (t, row) in tokens.zip(out.chunks_exact_mut(h)) {
                    matrix.dequantize_row(t as usize, row);
                }
            }
            Embedding::Tensor(_) => {
                // Not on our kernels: candle's lookup (it allocates).
                let all: Vec<u32> = tokens.collect();
                let rows: Vec<f32> = self.embed(&all)?.flatten_all()?.to_vec1()?;
                out.copy_from_slice(&rows);
            }
        }
        Ok(())
    }

    /// Rotates the new keys of `rows` (one sequence's, in order), rounds keys and values
    /// as the attention's precision asks, and appends them to the sequence's cache.
    fn store_keys(
        &self,
        l: usize,
        cache: &mut Cache,
        qkv: Shared,
        rows: Range<usize>,
    ) -> Result<()> {
        let attn = &self.layers[l].self_attn;
        let (n_kv, hd) = (attn.n_kv_head, attn.head_dim);
        let (q, kv) = (attn.n_head * hd, n_kv * hd);
        let width = q + 2 * kv;
        let round = attn.precision == Precision::LlamaCpp;
        let rope = &self.rope;
        cache.layers[l].append_with(rows.len(), n_kv, hd, |ks, vs, at, cap| {
            for (i, r) in rows.enumerate() {
                // SAFETY: no phase runs; the caller alone reads the Q/K/V rows.
                let row = unsafe { qkv.read(r * width..(r + 1) * width) };
                for g in 0..n_kv {
                    let dst = (g * cap + at + i) * hd..(g * cap + at + i + 1) * hd;
                    let k = &mut ks[dst.clone()];
                    k.copy_from_slice(&row[q + g * hd..q + (g + 1) * hd]);
                    rope.rotate(k, at + i);
                    let v = &mut vs[dst];
                    v.copy_from_slice(&row[q + kv + g * hd..q + kv + (g + 1) * hd]);
                    if round {
                        round_f16(k);
                        round_f16(v);
                    }
                }
            }
        })
    }

    /// Attention of `rows` over their caches (keys and values stored), the (row, head)
    /// pairs shared among the threads.
    #[allow(clippy::too_many_arguments)]
    fn attention_phase(
        &self,
        l: usize,
        scratch: &PerThread,
        caches: &[&mut Cache],
        rows: &[Row],
        qkv: Shared,
        att: Shared,
        range: Range<usize>,
    ) -> Result<()> {
        let attn = &self.layers[l].self_attn;
        let heads = Heads {
            n_head: attn.n_head,
            n_kv_head: attn.n_kv_head,
            head_dim: attn.head_dim,
        };
        let (hd, nh) = (attn.head_dim, attn.n_head);
        let (q, width) = (nh * hd, nh * hd + 2 * attn.n_kv_head * hd);
        let (round, probs) = match attn.precision {
            Precision::LlamaCpp => (true, Probabilities::F16),
            Precision::F32 => (false, Probabilities::F32),
        };
        let failed = AtomicBool::new(false);
        let threads = pool::global().threads();
        let tasks = range.len() * nh;
        pool::global().run(&|t| {
            // SAFETY: one call per thread index.
            let s = unsafe { scratch.get(t) };
            for task in split(tasks, threads, t) {
                let (r, head) = (range.start + task / nh, task % nh);
                let Row { seq, pos } = rows[r];
                // SAFETY: Q/K/V are only read in this phase; each (row, head) output part
                // is one task's.
                let q_h = unsafe { qkv.read(r * width + head * hd..r * width + (head + 1) * hd) };
                s.query.copy_from_slice(q_h);
                self.rope.rotate(&mut s.query, pos);
                if round {
                    round_f16(&mut s.query);
                }
                let Ok(kv) = caches[seq].layers[l].read() else {
                    failed.store(true, Ordering::Relaxed);
                    continue;
                };
                let out = unsafe { att.part(r * q + head * hd..r * q + (head + 1) * hd) };
                attend_one_head(
                    heads,
                    probs,
                    &s.query,
                    kv.keys(),
                    kv.values(),
                    head,
                    pos + 1,
                    kv.capacity(),
                    &mut s.scores,
                    out,
                );
            }
        });
        if failed.load(Ordering::Relaxed) {
            return Err(Error::Internal("a KV cache emptied during a step".into()));
        }
        Ok(())
    }
}

/// Phase 1: normalization, then the Q/K/V product over every piece's groups.
fn qkv_phase(plan: &BlockPlan, scratch: &PerThread, x: Shared, qkv: Shared, m: usize, h: usize) {
    let width: usize = plan.qkv.iter().map(|p| p.rows).sum();
    let total: usize = plan.qkv.iter().map(|p| p.groups().len()).sum();
    let threads = pool::global().threads();
    pool::global().run(&|t| {
        // SAFETY: one call per thread index; x is only read in this phase and each thread
        // writes the columns of its own groups.
        let s = unsafe { scratch.get(t) };
        let rows = unsafe { x.read(0..m * h) };
        for (row, out) in rows.chunks_exact(h).zip(s.normed.chunks_exact_mut(h)) {
            rms_norm(row, &plan.attn_norm, plan.eps, out);
        }
        prepare_for(
            plan.qkv.iter().map(|p| &*p.matrix),
            &s.normed[..m * h],
            m,
            &mut s.prepared,
        );
        let mine = split(total, threads, t);
        let mut at = 0;
        for piece in &plan.qkv {
            let groups = piece.groups();
            let n = groups.len();
            let lo = mine.start.clamp(at, at + n) - at;
            let hi = mine.end.clamp(at, at + n) - at;
            at += n;
            if lo == hi {
                continue;
            }
            let range = groups.start + lo..groups.start + hi;
            piece.matrix.tiles(&s.prepared, m, range, &mut |r, c, v| {
                let o = r * width + piece.col + c - piece.first;
                unsafe { qkv.part(o..o + v.len()) }.copy_from_slice(v);
            });
        }
    });
}

/// Phases 3 and 5: `y += input W^T` for m rows of `k` inputs and `n` outputs.
fn residual_phase(
    w: &QuantMatrix,
    scratch: &PerThread,
    input: Shared,
    y: Shared,
    m: usize,
    k: usize,
    n: usize,
) {
    let threads = pool::global().threads();
    pool::global().run(&|t| {
        // SAFETY: one call per thread index; the input is only read in this phase and each
        // thread adds to the columns of its own groups.
        let s = unsafe { scratch.get(t) };
        w.prepare(unsafe { input.read(0..m * k) }, m, &mut s.prepared);
        w.tiles(
            &s.prepared,
            m,
            split(w.groups(), threads, t),
            &mut |r, c, v| {
                let out = unsafe { y.part(r * n + c..r * n + c + v.len()) };
                for (o, &v) in out.iter_mut().zip(v) {
                    *o += v;
                }
            },
        );
    });
}

/// Phase 4: normalization, gate and up for a share of the columns, SwiGLU as
/// silu(g) * u = g / (1 + e^-g) * u, computed as the candle path computes it.
fn ffn_phase(
    plan: &BlockPlan,
    scratch: &PerThread,
    x: Shared,
    hidden: Shared,
    m: usize,
    h: usize,
    f: usize,
) {
    let threads = pool::global().threads();
    pool::global().run(&|t| {
        // SAFETY: one call per thread index; x is only read in this phase and each thread
        // writes its own columns of the hidden rows.
        let s = unsafe { scratch.get(t) };
        let rows = unsafe { x.read(0..m * h) };
        for (row, out) in rows.chunks_exact(h).zip(s.normed.chunks_exact_mut(h)) {
            rms_norm(row, &plan.ffn_norm, plan.eps, out);
        }
        prepare_for(
            [&*plan.gate.matrix, &*plan.up.matrix].into_iter(),
            &s.normed[..m * h],
            m,
            &mut s.prepared,
        );
        let units = split(f / FFN_UNIT, threads, t);
        let cols = units.start * FFN_UNIT..units.end * FFN_UNIT;
        if cols.is_empty() {
            return;
        }
        for (piece, is_up) in [(&plan.gate, false), (&plan.up, true)] {
            let lanes = piece.matrix.lanes();
            let groups = (piece.first + cols.start) / lanes..(piece.first + cols.end) / lanes;
            piece.matrix.tiles(&s.prepared, m, groups, &mut |r, c, v| {
                let o = r * f + c - piece.first;
                let out = unsafe { hidden.part(o..o + v.len()) };
                if is_up {
                    for (o, &u) in out.iter_mut().zip(v) {
                        let g = *o;
                        *o = g / (1.0 + (-g).exp()) * u;
                    }
                } else {
                    out.copy_from_slice(v);
                }
            });
        }
    });
}
