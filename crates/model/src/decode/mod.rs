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

mod buffers;
mod phases;

use std::cell::UnsafeCell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferrollama_kernels::attention::{attend_group, Heads, Probabilities};
use ferrollama_kernels::partial::Prepared;
use ferrollama_kernels::pool;

use buffers::{PerThread, Scratch, Shared};
use phases::{Input, Piece, FFN_UNIT, SHARED_PREPARATION_FROM};

use crate::attention::Precision;
use crate::error::{Error, Result};
use crate::linear::QuantMatrix;
use crate::llama::{Cache, Embedding, Llama, SeqBatch, UBATCH};

/// Most rows (tokens over every sequence) one step takes: a micro-batch.
pub const MAX_ROWS: usize = UBATCH;

/// Rows of logits a run state holds from the start; more grow the buffer once.
const LOGIT_ROWS: usize = 16;

/// (Row, KV head) attention tasks per thread from which a step deals them out whole;
/// with fewer, a thread could be left idle at the end (one decoded row has 3 KV heads for
/// 2 threads), so the step splits the (row, head) pairs evenly instead.
const GROUP_TASKS_PER_THREAD: usize = 4;

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
    /// Each thread's up-projection values of one slice of SwiGLU columns.
    ups: PerThread<Vec<f32>>,
    /// Activations prepared by all threads together (steps of many rows).
    shared: Prepared,
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
            let aligned = plan.qkv.len() == 3
                && plan.qkv.iter().all(Piece::aligned)
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
        let n_threads = pool::global().threads();
        // Query heads per KV head: a thread's attention takes them together.
        let n_rep = (cfg.num_attention_heads / cfg.num_key_value_heads.max(1)).max(1);
        // A thread's input rows: all of them when each prepares its own, its share otherwise.
        let own_rows = max_rows
            .div_ceil(n_threads)
            .max(max_rows.min(SHARED_PREPARATION_FROM - 1));
        let threads = (0..n_threads)
            .map(|_| {
                UnsafeCell::new(Scratch {
                    prepared: Prepared::with_capacity(
                        max_rows.min(SHARED_PREPARATION_FROM - 1),
                        widest,
                    ),
                    rows: vec![0.0; own_rows * widest],
                    scores: Vec::with_capacity(n_rep * model.max_context()),
                    query: vec![0.0; n_rep * cfg.head_dim],
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
            logits: vec![0.0; max_rows.min(LOGIT_ROWS) * v],
            rows: Vec::with_capacity(max_rows),
            out_rows: Vec::with_capacity(max_rows),
            threads: PerThread(threads),
            ups: PerThread(
                (0..n_threads)
                    .map(|_| UnsafeCell::new(vec![0.0; max_rows * phases::SWIGLU_COLUMNS]))
                    .collect(),
            ),
            shared: if max_rows >= SHARED_PREPARATION_FROM {
                Prepared::with_capacity(max_rows, widest)
            } else {
                Prepared::default()
            },
        })
    }

    /// Most rows a step takes.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
}

/// Rounds to the nearest f16 (ties to even), kept as f32: candle's `to_dtype` there and
/// back (IEEE rounding: the vector conversion gives the same bits).
fn round_f16(x: &mut [f32]) {
    ferrollama_kernels::packed_f16::round_to_f16(x);
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
            let shared_prep = &mut state.shared;
            let x = Shared::new(&mut state.x);
            let qkv = Shared::new(&mut state.qkv);
            let att = Shared::new(&mut state.att);
            let hidden = Shared::new(&mut state.hidden);
            let ups = &state.ups;
            let attn = &self.layers[l].self_attn;
            let q_width = attn.n_head * attn.head_dim;
            let qkv_width = q_width + 2 * attn.n_kv_head * attn.head_dim;
            let normed = |weight| Input {
                buf: x,
                width: h,
                norm: Some((weight, plan.eps)),
                picks: None,
            };
            let matrices: [&QuantMatrix; 3] = std::array::from_fn(|i| &*plan.qkv[i].matrix);
            phases::product(
                scratch,
                shared_prep,
                normed(&plan.attn_norm),
                m,
                &matrices,
                &|t, p| phases::pieces_product(&plan.qkv, p, m, t, qkv, qkv_width),
            );
            let rows = &state.rows;
            // Clones of one cache attend right after appending, one sequence at a time.
            let mut start = 0;
            for (i, seq) in seqs.iter().enumerate() {
                let rows_of_seq = start..start + seq.tokens.len();
                self.store_keys(l, caches[i], qkv, rows_of_seq.clone())?;
                if shared {
                    self.attention_phase(l, scratch, caches, rows, qkv, att, rows_of_seq.clone())?;
                }
                start = rows_of_seq.end;
            }
            if !shared {
                self.attention_phase(l, scratch, caches, rows, qkv, att, 0..m)?;
            }
            let plain = |buf, width| Input {
                buf,
                width,
                norm: None,
                picks: None,
            };
            phases::product(
                scratch,
                shared_prep,
                plain(att, q_width),
                m,
                &[&plan.o],
                &|t, p| phases::add_product(&plan.o, p, m, t, x, h),
            );
            let (gate, up) = (&plan.gate, &plan.up);
            phases::product(
                scratch,
                shared_prep,
                normed(&plan.ffn_norm),
                m,
                &[&gate.matrix, &up.matrix],
                &|t, p| phases::swiglu_product(gate, up, p, m, t, hidden, f, ups),
            );
            phases::product(
                scratch,
                shared_prep,
                plain(hidden, f),
                m,
                &[&plan.down],
                &|t, p| phases::add_product(&plan.down, p, m, t, x, h),
            );
        }
        let outs = state.out_rows.len();
        if state.logits.len() < outs * vocab {
            state.logits.resize(outs * vocab, 0.0);
        }
        let logits = Shared::new(&mut state.logits);
        let head = &state.head;
        let input = Input {
            buf: Shared::new(&mut state.x),
            width: h,
            norm: Some((&state.final_norm, state.final_eps)),
            picks: Some(&state.out_rows),
        };
        phases::product(
            &state.threads,
            &mut state.shared,
            input,
            outs,
            &[head],
            &|t, p| {
                let groups = pool::split(head.groups(), pool::global().threads(), t);
                head.tiles(p, outs, groups, &mut |j, c, v| {
                    let at = j * vocab + c;
                    // SAFETY: this thread's columns of the logits, read by no one in this phase.
                    unsafe { logits.part(at..at + v.len()) }.copy_from_slice(v);
                });
            },
        );
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

    /// Attention of `rows` over their caches (keys and values stored), shared among the
    /// threads as (row, KV head) tasks, each taking the query heads that share that KV head
    /// together (they read its keys and values once), or, when there are too few of those
    /// to keep every thread busy (a decode step), as contiguous shares of the (row, head)
    /// pairs. A head's bits are the same either way.
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
        let heads_shape = Heads {
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
        let n_rep = (nh / attn.n_kv_head.max(1)).max(1);
        // Heads `heads` of row `r`, all of one KV head, on the thread with scratch `s`.
        let attend = |s: &mut Scratch, r: usize, heads: Range<usize>| {
            let Row { seq, pos } = rows[r];
            let cols = heads.start * hd..heads.end * hd;
            // SAFETY: Q/K/V are only read in this phase.
            let q_g = unsafe { qkv.read(r * width + cols.start..r * width + cols.end) };
            let query = &mut s.query[..cols.len()];
            query.copy_from_slice(q_g);
            for q_h in query.chunks_exact_mut(hd) {
                self.rope.rotate(q_h, pos);
            }
            if round {
                round_f16(query);
            }
            let Ok(kv) = caches[seq].layers[l].read() else {
                failed.store(true, Ordering::Relaxed);
                return;
            };
            // SAFETY: each (row, heads) output part is one call's, in one thread's share.
            let out = unsafe { att.part(r * q + cols.start..r * q + cols.end) };
            attend_group(
                heads_shape,
                probs,
                query,
                kv.keys(),
                kv.values(),
                heads.start / n_rep,
                pos + 1,
                kv.capacity(),
                &mut s.scores,
                out,
            );
        };
        let groups = range.len() * (nh / n_rep);
        if groups >= GROUP_TASKS_PER_THREAD * threads {
            pool::global().run(&|t| {
                // SAFETY: one call per thread index.
                let s = unsafe { scratch.get(t) };
                // Every threads-th (row, KV head): the rows of a prompt attend over more keys
                // the later they come, so contiguous shares would leave the first thread idle.
                for task in (t..groups).step_by(threads) {
                    let (r, g) = (range.start + task / (nh / n_rep), task % (nh / n_rep));
                    attend(s, r, g * n_rep..(g + 1) * n_rep);
                }
            });
        } else {
            // Few rows (a decode step): each thread a contiguous share of the (row, head)
            // pairs, taken a KV head's run at a time, so a KV head's keys and values are read
            // once per thread that needs them (one row of the default model: heads 0-4 and
            // 5-8, each thread reading two of the three KV heads, not three KV heads for
            // every other head).
            pool::global().run(&|t| {
                // SAFETY: one call per thread index.
                let s = unsafe { scratch.get(t) };
                let mine = pool::split(range.len() * nh, threads, t);
                let mut at = mine.start;
                while at < mine.end {
                    let (r, h) = (range.start + at / nh, at % nh);
                    let end = (h / n_rep + 1) * n_rep;
                    let end = end.min(h + (mine.end - at));
                    attend(s, r, h..end);
                    at += end - h;
                }
            });
        }
        if failed.load(Ordering::Relaxed) {
            return Err(Error::Internal("a KV cache emptied during a step".into()));
        }
        Ok(())
    }
}
