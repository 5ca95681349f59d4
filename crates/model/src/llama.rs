//! The Llama decoder (Touvron et al. 2023): embed -> for each block: RMSNorm, attention,
//! residual, RMSNorm, SwiGLU, residual -> RMSNorm -> output projection. Reads top to
//! bottom like llama2.c's `forward()`.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Module, Tensor};

use crate::adapters::RowSelection;
use crate::attention::Attention;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::kv::LayerKv;
use crate::layout::{global_name, layer_name, Part};
use crate::linear::{Linear, QuantMatrix};
use crate::mlp::Mlp;
use crate::rope::Rope;
use crate::weights::WeightSource;

/// Most tokens run in one forward pass; longer inputs are split.
pub const UBATCH: usize = 512;

/// Runs `f` on a thread of rayon's pool. The matrix products split their rows over the
/// pool; called from a thread outside it, each of the ~200 products of a decode step would
/// hand its work over and sleep until it is done, and those wake-ups cost more than the
/// products themselves (the default model decoded at 11-13 ms a token from outside the
/// pool, 7.3-7.6 ms inside it).
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// An RMSNorm weight (Zhang & Sennrich 2019) with its epsilon.
pub(crate) struct RmsNorm {
    weight: Tensor,
    /// The weight as plain values, for the decode path.
    pub(crate) values: Vec<f32>,
    pub(crate) eps: f32,
}

impl RmsNorm {
    fn load(w: &dyn WeightSource, name: &str, cfg: &Config) -> Result<Self> {
        let weight = w.get(name)?.dequantize(&Device::Cpu)?;
        if weight.dims() != [cfg.hidden_size] {
            return Err(Error::Shape {
                file: w.file().to_string(),
                name: name.into(),
                found: weight.dims().to_vec(),
                expected: vec![cfg.hidden_size],
            });
        }
        Ok(Self {
            values: weight.to_vec1()?,
            weight,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}

pub(crate) struct DecoderLayer {
    pub(crate) input_layernorm: RmsNorm,
    pub(crate) self_attn: Attention,
    pub(crate) post_attention_layernorm: RmsNorm,
    pub(crate) mlp: Mlp,
}

/// The token embedding: its own tensor, or, when the output projection is tied to it and
/// repacked for our kernels, that projection's rows (one copy of the weights, not two).
pub(crate) enum Embedding {
    Tensor(Arc<QTensor>),
    Packed(Arc<QuantMatrix>),
}

/// A loaded Llama model. Immutable once loaded: per-sequence state lives in [`Cache`].
pub struct Llama {
    pub(crate) embed_tokens: Embedding,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: RmsNorm,
    pub(crate) lm_head: Linear,
    pub(crate) rope: Rope,
    pub config: Config,
    /// Run states of the decode path kept between calls of [`Llama::forward_batch`].
    states: std::sync::Mutex<Vec<crate::decode::RunState>>,
    /// Whether [`Llama::forward_batch`] may take the decode path.
    decode_path: std::sync::atomic::AtomicBool,
}

/// The KV cache of one sequence, sized for a context of `n_ctx` tokens. Cloning shares
/// the memory until either side appends (a cheap handle, for copying a prefix).
#[derive(Clone)]
pub struct Cache {
    pub(crate) layers: Vec<LayerKv>,
    n_ctx: usize,
}

impl Cache {
    /// Tokens held so far; the position of the next token.
    pub fn seq_len(&self) -> usize {
        self.layers.first().map_or(0, LayerKv::len)
    }

    /// The context size this cache was made for.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Forgets every token and frees the memory.
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(LayerKv::reset);
    }

    /// Takes positions `seq_len()..upto` from `src`, a cache of a sequence with the same
    /// tokens up to `upto`: the keys and values are copied, not computed again.
    pub fn extend_from(&mut self, src: &Cache, upto: usize) -> Result<()> {
        if upto > self.n_ctx {
            return Err(Error::ContextExceeded {
                tokens: upto,
                limit: self.n_ctx,
            });
        }
        for (dst, s) in self.layers.iter_mut().zip(&src.layers) {
            dst.extend_from(s, upto)?;
        }
        Ok(())
    }

    /// Keeps the first `len` tokens, so that a sequence sharing them continues from there.
    pub fn truncate(&mut self, len: usize) {
        self.layers.iter_mut().for_each(|l| l.truncate(len));
    }
}

impl Llama {
    /// Loads every weight the configuration calls for; `max_ctx` bounds the positions the
    /// RoPE tables cover.
    pub fn load(w: &dyn WeightSource, config: Config, max_ctx: usize) -> Result<Self> {
        if max_ctx == 0 || max_ctx > config.max_position_embeddings {
            return Err(Error::ContextSize {
                requested: max_ctx,
                trained: config.max_position_embeddings,
            });
        }
        let embed_name = global_name(Part::Embedding);
        let embed_name = embed_name.as_str();
        let head_name = global_name(Part::Head);
        let tied = !w.contains(&head_name);
        // A tied embedding packed in the source's cache: its tensor need not be read.
        let cached = tied
            .then(|| crate::linear::cached(w, embed_name, (config.vocab_size, config.hidden_size)))
            .flatten();
        let embed = match &cached {
            Some(_) => None,
            None => Some(Arc::new(Self::load_embedding(w, &config)?)),
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                Ok(DecoderLayer {
                    input_layernorm: RmsNorm::load(w, &layer_name(i, Part::AttnNorm), &config)?,
                    self_attn: Attention::load(w, i, &config)?,
                    post_attention_layernorm: RmsNorm::load(
                        w,
                        &layer_name(i, Part::FfnNorm),
                        &config,
                    )?,
                    mlp: Mlp::load(w, i, &config)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (lm_head, embed_tokens) = match (cached, embed) {
            (Some(m), _) => (Linear::Quant(m.clone()), Embedding::Packed(m)),
            (None, Some(embed)) if !tied => {
                let head = Linear::load(w, &head_name, (config.vocab_size, config.hidden_size))?;
                (head, Embedding::Tensor(embed))
            }
            (None, Some(embed)) => match Linear::from_arc(embed.clone())? {
                Linear::Quant(m) => {
                    w.offer_packed(embed_name, &m);
                    (Linear::Quant(m.clone()), Embedding::Packed(m))
                }
                head => (head, Embedding::Tensor(embed)),
            },
            (None, None) => unreachable!("the embedding is loaded when not cached"),
        };
        let rope = Rope::new(&config, max_ctx, &Device::Cpu)?;
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm::load(w, &global_name(Part::FinalNorm), &config)?,
            lm_head,
            rope,
            config,
            states: std::sync::Mutex::new(Vec::new()),
            decode_path: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Adds the LoRA adapter in `dir` (PEFT's layout), its update scaled by `scale`
    /// beyond its own alpha / r, to every projection it adapts, unmerged: the quantized
    /// weights stay as they are. Several adapters add up. Changing the adapters
    /// invalidates caches made before.
    pub fn attach_lora(&mut self, dir: &std::path::Path, scale: f64) -> Result<()> {
        let deltas = crate::adapters::inference_deltas(&self.config, dir, scale)?;
        for (layer, deltas) in self.layers.iter_mut().zip(deltas) {
            for (part, d) in deltas {
                match part {
                    Part::Gate | Part::Up | Part::Down => layer.mlp.lora.push((part, d)),
                    _ => layer.self_attn.lora.push((part, d)),
                }
            }
        }
        Ok(())
    }

    /// Loads the LoRA adapter in `dir` (PEFT's layout), its update scaled by `scale`, for
    /// the sequences that select it ([`SeqBatch::adapter`]) and only those: a server keeps
    /// several and each request names one. Returns its id (0, 1, ... in load order).
    pub fn load_adapter(&mut self, dir: &std::path::Path, scale: f64) -> Result<usize> {
        let deltas = crate::adapters::inference_deltas(&self.config, dir, scale)?;
        let id = self.adapter_count();
        for (layer, deltas) in self.layers.iter_mut().zip(deltas) {
            let (mlp, attn): (Vec<_>, Vec<_>) = deltas
                .into_iter()
                .partition(|(p, _)| matches!(p, Part::Gate | Part::Up | Part::Down));
            layer.mlp.adapters.push(mlp);
            layer.self_attn.adapters.push(attn);
        }
        Ok(id)
    }

    /// Selectable adapters loaded ([`Llama::load_adapter`]).
    pub fn adapter_count(&self) -> usize {
        self.layers.first().map_or(0, |l| l.mlp.adapters.len())
    }

    /// Sets where attention rounds its numbers (llama.cpp's f16 by default); changing it
    /// invalidates caches made before.
    pub fn set_attention_precision(&mut self, precision: crate::attention::Precision) {
        for layer in &mut self.layers {
            layer.self_attn.precision = precision;
        }
    }

    /// The token embedding, checked against the configuration's shape.
    fn load_embedding(w: &dyn WeightSource, config: &Config) -> Result<QTensor> {
        let name = global_name(Part::Embedding);
        let embed = w.get(&name)?;
        let expected = vec![config.vocab_size, config.hidden_size];
        if embed.shape().dims() != expected.as_slice() {
            return Err(Error::Shape {
                file: w.file().to_string(),
                name,
                found: embed.shape().dims().to_vec(),
                expected,
            });
        }
        Ok(embed)
    }

    /// The longest sequence this model was loaded for (its RoPE table).
    pub fn max_context(&self) -> usize {
        self.rope.max_pos()
    }

    /// An empty cache for a context of `n_ctx` tokens (at most the RoPE table size).
    pub fn new_cache(&self, n_ctx: usize) -> Cache {
        let n_ctx = n_ctx.min(self.rope.max_pos());
        Cache {
            layers: (0..self.layers.len())
                .map(|_| LayerKv::new(n_ctx))
                .collect(),
            n_ctx,
        }
    }

    /// Runs `tokens` after what `cache` holds. Returns logits for the last `n_out`
    /// positions (1 for generation, all for scoring). Long inputs run in batches of
    /// [`UBATCH`] tokens (as llama.cpp's `n_ubatch`). On error the cache may hold part of
    /// the input: reset it.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache, n_out: usize) -> Result<Logits> {
        let n_out = n_out.clamp(1, tokens.len().max(1));
        if tokens.len() <= UBATCH {
            // One micro-batch (every decode step): its logits as they come, no copy.
            let seq = SeqBatch {
                tokens,
                outputs: n_out,
                adapter: None,
            };
            return self.forward_batch(&[seq], &mut [cache]);
        }
        let first_out = tokens.len().saturating_sub(n_out);
        let mut out = Logits {
            data: Vec::new(),
            width: self.config.vocab_size,
        };
        for (i, chunk) in chunks_of(tokens).enumerate() {
            let start = i * UBATCH;
            let wanted = (start + chunk.len()).saturating_sub(first_out.max(start));
            // Chunks before the wanted outputs still need one (cheap) row computed.
            let seq = SeqBatch {
                tokens: chunk,
                outputs: wanted.max(1),
                adapter: None,
            };
            let logits = self.forward_batch(&[seq], &mut [&mut *cache])?;
            if wanted > 0 {
                out.data.extend(logits.data);
            }
        }
        Ok(out)
    }

    /// The final hidden states (after the last RMSNorm) of `tokens`, run after what
    /// `cache` holds: what embeddings are pooled from. Rows of `hidden_size`.
    pub fn hidden_states(&self, tokens: &[u32], cache: &mut Cache) -> Result<Logits> {
        self.hidden_states_with(tokens, cache, None)
    }

    /// [`Llama::hidden_states`] with a selectable adapter ([`Llama::load_adapter`]).
    pub fn hidden_states_with(
        &self,
        tokens: &[u32],
        cache: &mut Cache,
        adapter: Option<usize>,
    ) -> Result<Logits> {
        let mut out = Logits {
            data: Vec::new(),
            width: self.config.hidden_size,
        };
        for chunk in chunks_of(tokens) {
            let seq = SeqBatch {
                tokens: chunk,
                outputs: chunk.len(),
                adapter,
            };
            let hidden = on_pool(|| self.run(&[seq], &mut [&mut *cache], Output::Hidden))?;
            out.data.extend(hidden.data);
        }
        Ok(out)
    }

    /// The one batched forward pass: `seqs[i].tokens` follow what `caches[i]` holds (a
    /// prompt chunk, a single generated token, or a whole text to score), every sequence's
    /// rows through the blocks together (continuous batching; the weights are read once
    /// for all), attention per sequence over its own cache. Returns the logits of the last
    /// `seqs[i].outputs` rows of each sequence, in order. On error the caches may hold part
    /// of the input: reset them.
    pub fn forward_batch(&self, seqs: &[SeqBatch], caches: &mut [&mut Cache]) -> Result<Logits> {
        if let Some(logits) = self.forward_decode_path(seqs, caches)? {
            return Ok(logits);
        }
        on_pool(|| self.run(seqs, caches, Output::Logits))
    }

    /// [`Llama::forward_batch`] through the decode path ([`crate::decode`]) when it can
    /// take the batch (few rows, no LoRA, every weight on our kernels): the same bits,
    /// without candle's tensors in between. None when it cannot.
    fn forward_decode_path(
        &self,
        seqs: &[SeqBatch],
        caches: &mut [&mut Cache],
    ) -> Result<Option<Logits>> {
        let rows: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let enabled = self.decode_path.load(std::sync::atomic::Ordering::Relaxed);
        if !enabled || rows > crate::decode::MAX_ROWS || !self.decode_path_takes(seqs) {
            return Ok(None);
        }
        let kept = self.states.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut state = match kept {
            Some(state) => state,
            None => match crate::decode::RunState::new(self, crate::decode::MAX_ROWS) {
                Ok(state) => state,
                Err(_) => return Ok(None),
            },
        };
        let logits = self.step(&mut state, seqs, caches).map(|l| Logits {
            data: l.to_vec(),
            width: self.config.vocab_size,
        });
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(state);
        logits.map(Some)
    }

    /// Lets [`Llama::forward_batch`] take the decode path for small batches (the
    /// default), or keeps every pass on the candle path: both give the same bits, so this
    /// is for comparing their speed (`ferrollama bench --no-decode-path`) and for tests.
    pub fn set_decode_path(&self, enabled: bool) {
        self.decode_path
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    /// Checks a batch: sequences pair with caches, none empty, adapters loaded, room in
    /// every cache.
    pub(crate) fn check_batch(&self, seqs: &[SeqBatch], caches: &[&mut Cache]) -> Result<()> {
        if seqs.is_empty() || seqs.len() != caches.len() {
            return Err(Error::BatchMismatch {
                sequences: seqs.len(),
                caches: caches.len(),
            });
        }
        let loaded = self.adapter_count();
        for (s, c) in seqs.iter().zip(caches.iter()) {
            if s.tokens.is_empty() {
                return Err(Error::NoTokens);
            }
            if let Some(id) = s.adapter.filter(|&id| id >= loaded) {
                return Err(Error::UnknownAdapter { id, loaded });
            }
            if c.seq_len() + s.tokens.len() > c.n_ctx {
                return Err(Error::ContextExceeded {
                    tokens: c.seq_len() + s.tokens.len(),
                    limit: c.n_ctx,
                });
            }
        }
        Ok(())
    }

    fn run(&self, seqs: &[SeqBatch], caches: &mut [&mut Cache], output: Output) -> Result<Logits> {
        self.check_batch(seqs, caches)?;
        let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        let all: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let chosen: Vec<Option<usize>> = seqs.iter().map(|s| s.adapter).collect();
        let chosen = RowSelection::new(&lens, &chosen);
        let mut x = self.embed(&all)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(&x)?;
            let mut kvs: Vec<&mut LayerKv> = caches.iter_mut().map(|c| &mut c.layers[i]).collect();
            let h = layer
                .self_attn
                .forward_multi(&h, &self.rope, &lens, &mut kvs, &chosen)?;
            x = (x + h)?;
            let h = layer.post_attention_layernorm.forward(&x)?;
            x = (&x + layer.mlp.forward(&h, &chosen)?)?;
        }
        // Only the rows asked for go through the final norm and the output projection.
        let mut rows = Vec::new();
        let mut end = 0u32;
        for (s, &n) in seqs.iter().zip(&lens) {
            end += n as u32;
            let k = s.outputs.clamp(1, n) as u32;
            rows.extend(end - k..end);
        }
        let x = if rows.len() == all.len() {
            x
        } else {
            x.index_select(&Tensor::new(rows.as_slice(), &Device::Cpu)?, 1)?
        };
        let x = self.norm.forward(&x)?;
        let (y, width) = match output {
            Output::Logits => (self.lm_head.forward(&x)?, self.config.vocab_size),
            Output::Hidden => (x, self.config.hidden_size),
        };
        Ok(Logits {
            data: y.flatten_all()?.to_vec1::<f32>()?,
            width,
        })
    }

    /// Checks token ids and embeds them: (1, n, hidden) in f32.
    pub(crate) fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(Error::TokenOutOfVocabulary {
                id: bad,
                vocab: self.config.vocab_size,
            });
        }
        match &self.embed_tokens {
            Embedding::Tensor(t) => {
                let ids = Tensor::new(tokens, &Device::Cpu)?;
                Ok(t.embedding(&ids)?.to_dtype(DType::F32)?.unsqueeze(0)?)
            }
            Embedding::Packed(m) => {
                let hidden = m.shape().1;
                let mut rows = vec![0f32; tokens.len() * hidden];
                for (&t, row) in tokens.iter().zip(rows.chunks_exact_mut(hidden)) {
                    m.dequantize_row(t as usize, row);
                }
                Ok(Tensor::from_vec(
                    rows,
                    (1, tokens.len(), hidden),
                    &Device::Cpu,
                )?)
            }
        }
    }
}

/// What a forward pass hands out.
#[derive(Clone, Copy)]
enum Output {
    Logits,
    /// The final hidden states, after the last RMSNorm.
    Hidden,
}

/// One sequence's part of a batched forward pass.
#[derive(Debug, Clone, Copy)]
pub struct SeqBatch<'a> {
    /// Tokens that follow what the sequence's cache holds.
    pub tokens: &'a [u32],
    /// How many of the last rows need logits (1 for generation; at least 1).
    pub outputs: usize,
    /// The selectable adapter this sequence runs with ([`Llama::load_adapter`]'s id), on
    /// top of those every sequence gets; None for none.
    pub adapter: Option<usize>,
}

/// Rows of a forward pass's output as plain f32 values: logits (`vocab` wide) or hidden
/// states (`hidden_size` wide), in the order the rows were asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    data: Vec<f32>,
    width: usize,
}

impl Logits {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.width.max(1)
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.width..(i + 1) * self.width]
    }

    /// Every row, one after another.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The rows as one vector.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// The rows as vectors of their own.
    pub fn into_rows(self) -> Vec<Vec<f32>> {
        self.data
            .chunks(self.width.max(1))
            .map(<[f32]>::to_vec)
            .collect()
    }

    /// The rows, to be changed in place (a sampler masks and penalises them).
    pub fn rows_mut(&mut self) -> std::slice::ChunksMut<'_, f32> {
        self.data.chunks_mut(self.width.max(1))
    }
}

/// `tokens` in micro-batches of at most [`UBATCH`]; one empty chunk for no tokens, so the
/// forward pass reports the error.
fn chunks_of(tokens: &[u32]) -> impl Iterator<Item = &[u32]> {
    let empty: &[u32] = &[];
    let first = tokens.is_empty().then_some(empty);
    first.into_iter().chain(tokens.chunks(UBATCH))
}
