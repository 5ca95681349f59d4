//! Multi-head self-attention with grouped-query heads (Ainslie et al. 2023): each KV head
//! serves `n_rep` consecutive query heads, as in llama.cpp's broadcast.

use candle_core::{DType, Device, Module, Tensor};
use ferrollama_kernels::attention::{decode_attention_with, Heads, Probabilities};
use rayon::prelude::*;

use crate::adapters::{BlockDeltas, Delta, RowSelection};
use crate::config::Config;
use crate::error::Result;
use crate::kv::LayerKv;
use crate::layout::{layer_name, Part};
use crate::linear::{Linear, Stacked};
use crate::rope::Rope;
use crate::weights::WeightSource;

/// Where attention rounds its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// As llama.cpp: queries, keys and values rounded to f16 (the cache's type), and the
    /// softmax probabilities too.
    #[default]
    LlamaCpp,
    /// Everything in f32: what the training path computes, for checks and rollouts that
    /// must score as the trained model does.
    F32,
}

/// Attention weights of one block.
pub struct Attention {
    /// The query, key and value projections, stacked.
    pub(crate) qkv: Stacked,
    pub(crate) o_proj: Linear,
    pub(crate) n_head: usize,
    pub(crate) n_kv_head: usize,
    pub(crate) head_dim: usize,
    pub precision: Precision,
    /// LoRA updates added to the Q, K, V and output projections (unmerged adapters).
    pub lora: Vec<(Part, Delta)>,
    /// Adapters that sequences select one by one (`SeqBatch::adapter`), by id.
    pub adapters: Vec<BlockDeltas>,
}

impl Attention {
    /// Loads the attention weights of block `layer`.
    pub fn load(w: &dyn WeightSource, layer: usize, cfg: &Config) -> Result<Self> {
        let h = cfg.hidden_size;
        let (q, kv) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        let names = [Part::Query, Part::Key, Part::Value].map(|p| layer_name(layer, p));
        Ok(Self {
            qkv: Stacked::load(w, &names, &[q, kv, kv], h)?,
            o_proj: Linear::load(w, &layer_name(layer, Part::AttnOutput), (h, q))?,
            n_head: cfg.num_attention_heads,
            n_kv_head: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            precision: Precision::default(),
            lora: Vec::new(),
            adapters: Vec::new(),
        })
    }

    /// Several sequences in one pass: `x` (1, total, hidden) holds `lens[i]` consecutive
    /// rows for sequence i, which follow what `caches[i]` holds. The projections run
    /// batched (the weights are read once for every sequence); attention runs per sequence
    /// over its own cache, causally within its rows; `chosen` adds each sequence's
    /// selected adapter to its rows.
    pub fn forward_multi(
        &self,
        x: &Tensor,
        rope: &Rope,
        lens: &[usize],
        caches: &mut [&mut LayerKv],
        chosen: &RowSelection,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project(x, chosen)?;
        let mut offset = 0;
        let mut outs = Vec::with_capacity(lens.len());
        for (&n, cache) in lens.iter().zip(caches.iter_mut()) {
            let rows = |t: &Tensor| t.narrow(1, offset, n);
            let pos = cache.len();
            outs.push(self.attend(rows(&q)?, rows(&k)?, rows(&v)?, rope, pos, cache)?);
            offset += n;
        }
        // One sequence (a prompt, single-sequence decoding) needs no concatenation copy.
        let out = match <[Tensor; 1]>::try_from(outs) {
            Ok([one]) => one,
            Err(outs) => Tensor::cat(&outs, 1)?,
        };
        let mut y = self.o_proj.forward(&out)?;
        for (_, d) in self.lora.iter().filter(|(p, _)| *p == Part::AttnOutput) {
            y = d.add_to(y, &out, None)?;
        }
        Ok(chosen.add(y, &out, &self.adapters, Part::AttnOutput)?)
    }

    /// Q, K and V projections, each (1, seq_len, heads * head_dim).
    fn project(&self, x: &Tensor, chosen: &RowSelection) -> Result<(Tensor, Tensor, Tensor)> {
        let [mut q, mut k, mut v] = <[Tensor; 3]>::try_from(self.qkv.forward(x)?)
            .map_err(|_| crate::error::Error::Internal("Q/K/V projection lost a part".into()))?;
        for (part, d) in &self.lora {
            match part {
                Part::Query => q = d.add_to(q, x, None)?,
                Part::Key => k = d.add_to(k, x, None)?,
                Part::Value => v = d.add_to(v, x, None)?,
                _ => {}
            }
        }
        let add = |t, part| chosen.add(t, x, &self.adapters, part);
        Ok((
            add(q, Part::Query)?,
            add(k, Part::Key)?,
            add(v, Part::Value)?,
        ))
    }

    /// Attention of projected queries (1, seq_len, n_head * head_dim) over the cache plus
    /// the new keys and values; returns (1, seq_len, n_head * head_dim), before the output
    /// projection. RoPE and the cache append are tensor operations; scores, softmax and the
    /// weighted sum run fused in [`decode_attention_into`], one query row at a time, so a row's
    /// result does not depend on how many rows came with it: a prompt read back from a
    /// prefix cache continues exactly as one computed whole.
    ///
    /// llama.cpp keeps K and V in f16 and multiplies them with Q and the attention
    /// probabilities rounded to f16; rounding at the same places keeps our activations
    /// closest to its own.
    fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rope: &Rope,
        index_pos: usize,
        cache: &mut LayerKv,
    ) -> Result<Tensor> {
        let (_, seq_len, _) = q.dims3()?;
        let (n_head, n_kv_head, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        // (1, seq_len, n * hd) -> (1, n, seq_len, hd), as RoPE and the cache want them; for
        // a single token that is a reshape, no copy.
        let by_head = |t: Tensor, n: usize| -> Result<Tensor> {
            if seq_len == 1 {
                return Ok(t.reshape((1, n, 1, hd))?);
            }
            Ok(t.reshape((1, seq_len, n, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let exact = self.precision == Precision::F32;
        let f16_round = |t: Tensor| {
            if exact {
                Ok(t)
            } else {
                t.to_dtype(DType::F16)?.to_dtype(DType::F32)
            }
        };
        let probs = if exact {
            Probabilities::F32
        } else {
            Probabilities::F16
        };
        let q = rope.apply(&by_head(q, n_head)?, index_pos)?;
        let k = rope.apply(&by_head(k, n_kv_head)?, index_pos)?;
        cache.append(&f16_round(k)?, &f16_round(by_head(v, n_kv_head)?)?)?;
        // Back to one row of n_head * hd per query.
        let q = f16_round(q)?;
        let q = if seq_len == 1 {
            q
        } else {
            q.transpose(1, 2)?.contiguous()?
        };
        let q: Vec<f32> = q.flatten_all()?.to_vec1()?;
        let heads = Heads {
            n_head,
            n_kv_head,
            head_dim: hd,
        };
        let width = n_head * hd;
        let mut out = vec![0f32; seq_len * width];
        let attend_row = |k: &[f32], v: &[f32], cap: usize, i: usize, row: &mut [f32]| {
            let q_i = &q[i * width..(i + 1) * width];
            decode_attention_with(heads, probs, q_i, k, v, index_pos + i + 1, cap, row);
        };
        cache.with_data(|k, v, _, cap| {
            if seq_len == 1 {
                attend_row(k, v, cap, 0, &mut out);
            } else {
                out.par_chunks_mut(width)
                    .enumerate()
                    .for_each(|(i, row)| attend_row(k, v, cap, i, row));
            }
        })?;
        Ok(Tensor::from_vec(out, (1, seq_len, width), &Device::Cpu)?)
    }
}
