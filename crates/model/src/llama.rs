//! The Llama decoder (Touvron et al. 2023): embed -> for each block: RMSNorm, attention,
//! residual, RMSNorm, SwiGLU, residual -> RMSNorm -> output projection. Reads top to
//! bottom like llama2.c's `forward()`.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Module, Tensor};

use crate::attention::Attention;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::kv::LayerKv;
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
struct RmsNorm {
    weight: Tensor,
    eps: f32,
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
            weight,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// The token embedding: its own tensor, or, when the output projection is tied to it and
/// repacked for our kernels, that projection's rows (one copy of the weights, not two).
enum Embedding {
    Tensor(Arc<QTensor>),
    Packed(Arc<QuantMatrix>),
}

/// A loaded Llama model. Immutable once loaded: per-sequence state lives in [`Cache`].
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    pub config: Config,
}

/// The KV cache of one sequence, sized for a context of `n_ctx` tokens. Cloning shares
/// the memory until either side appends (a cheap handle, for copying a prefix).
#[derive(Clone)]
pub struct Cache {
    layers: Vec<LayerKv>,
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
            return Err(Error::Input(format!(
                "{upto} positions exceed the context of {}",
                self.n_ctx
            )));
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
            return Err(Error::Input(format!(
                "a context of {max_ctx} tokens is outside what the model was trained for (1 to {})",
                config.max_position_embeddings
            )));
        }
        let embed_name = "model.embed_tokens.weight";
        let tied = !w.contains("lm_head.weight");
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
                let p = format!("model.layers.{i}");
                Ok(DecoderLayer {
                    input_layernorm: RmsNorm::load(
                        w,
                        &format!("{p}.input_layernorm.weight"),
                        &config,
                    )?,
                    self_attn: Attention::load(w, &format!("{p}.self_attn"), &config)?,
                    post_attention_layernorm: RmsNorm::load(
                        w,
                        &format!("{p}.post_attention_layernorm.weight"),
                        &config,
                    )?,
                    mlp: Mlp::load(w, &format!("{p}.mlp"), &config)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (lm_head, embed_tokens) = match (cached, embed) {
            (Some(m), _) => (Linear::Quant(m.clone()), Embedding::Packed(m)),
            (None, Some(embed)) if !tied => {
                let head =
                    Linear::load(w, "lm_head.weight", (config.vocab_size, config.hidden_size))?;
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
        let rope = Rope::new(
            config.head_dim,
            config.rope_theta,
            config.rope_scaling_factor,
            config.rope_freq_factors.as_deref(),
            max_ctx,
            &Device::Cpu,
        )?;
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm::load(w, "model.norm.weight", &config)?,
            lm_head,
            rope,
            config,
        })
    }

    /// The token embedding, checked against the configuration's shape.
    fn load_embedding(w: &dyn WeightSource, config: &Config) -> Result<QTensor> {
        let embed = w.get("model.embed_tokens.weight")?;
        let expected = vec![config.vocab_size, config.hidden_size];
        if embed.shape().dims() != expected.as_slice() {
            return Err(Error::Shape {
                file: w.file().to_string(),
                name: "model.embed_tokens.weight".into(),
                found: embed.shape().dims().to_vec(),
                expected,
            });
        }
        Ok(embed)
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

    /// Runs `tokens` after what `cache` holds. Returns logits (n, vocab) for the last
    /// `n_out` positions (1 for generation, all for scoring). Long inputs run in batches of
    /// [`UBATCH`] tokens so attention scores stay small (as llama.cpp's `n_ubatch`). On
    /// error the cache may hold part of the input: reset it.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache, n_out: usize) -> Result<Tensor> {
        on_pool(|| self.forward_chunks(tokens, cache, n_out))
    }

    fn forward_chunks(&self, tokens: &[u32], cache: &mut Cache, n_out: usize) -> Result<Tensor> {
        let n_out = n_out.clamp(1, tokens.len().max(1));
        if tokens.len() <= UBATCH {
            return self.forward_batch(tokens, cache, n_out);
        }
        let first_out = tokens.len() - n_out;
        let mut outs = Vec::new();
        for (i, chunk) in tokens.chunks(UBATCH).enumerate() {
            let start = i * UBATCH;
            let wanted = (start + chunk.len()).saturating_sub(first_out.max(start));
            // Chunks before the wanted outputs still need one (cheap) row computed.
            let logits = self.forward_batch(chunk, cache, wanted.max(1))?;
            if wanted > 0 {
                outs.push(logits);
            }
        }
        Ok(Tensor::cat(&outs, 0)?)
    }

    fn forward_batch(&self, tokens: &[u32], cache: &mut Cache, n_out: usize) -> Result<Tensor> {
        let x = self.hidden(tokens, cache)?;
        let seq_len = tokens.len();
        let n_out = n_out.clamp(1, seq_len);
        let x = x.narrow(1, seq_len - n_out, n_out)?;
        let x = self.norm.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.squeeze(0)?)
    }

    /// The final hidden states (after the last RMSNorm) of `tokens`, (n, hidden), run
    /// after what `cache` holds: what embeddings are pooled from.
    pub fn hidden_states(&self, tokens: &[u32], cache: &mut Cache) -> Result<Tensor> {
        on_pool(|| self.hidden_states_chunks(tokens, cache))
    }

    fn hidden_states_chunks(&self, tokens: &[u32], cache: &mut Cache) -> Result<Tensor> {
        let parts = tokens
            .chunks(UBATCH)
            .map(|chunk| {
                self.norm
                    .forward(&self.hidden(chunk, cache)?)?
                    .squeeze(0)
                    .map_err(Error::from)
            })
            .collect::<Result<Vec<_>>>()?;
        if parts.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Several sequences in one batched forward (continuous batching): `seqs[i]` follows
    /// what `caches[i]` holds: a prompt chunk or a single generated token. Returns the
    /// logits after the last token of each, (n_seq, vocab). On error the caches may hold
    /// part of the input: reset them.
    pub fn forward_multi(&self, seqs: &[&[u32]], caches: &mut [&mut Cache]) -> Result<Tensor> {
        on_pool(|| self.forward_multi_inner(seqs, caches))
    }

    fn forward_multi_inner(&self, seqs: &[&[u32]], caches: &mut [&mut Cache]) -> Result<Tensor> {
        if seqs.is_empty() || seqs.len() != caches.len() {
            return Err(Error::Input(format!(
                "{} sequences for {} caches",
                seqs.len(),
                caches.len()
            )));
        }
        for (s, c) in seqs.iter().zip(caches.iter()) {
            if s.is_empty() {
                return Err(Error::Input("no tokens to run".into()));
            }
            if c.seq_len() + s.len() > c.n_ctx {
                return Err(Error::Input(format!(
                    "{} tokens exceed the context of {} ({} already held)",
                    c.seq_len() + s.len(),
                    c.n_ctx,
                    c.seq_len()
                )));
            }
        }
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let mut x = self.embed(&seqs.concat())?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(&x)?;
            let mut kvs: Vec<&mut LayerKv> = caches.iter_mut().map(|c| &mut c.layers[i]).collect();
            let h = layer
                .self_attn
                .forward_multi(&h, &self.rope, &lens, &mut kvs)?;
            x = (x + h)?;
            let h = layer.post_attention_layernorm.forward(&x)?;
            x = (&x + layer.mlp.forward(&h)?)?;
        }
        // Only the last row of each sequence needs the output projection.
        let last: Vec<u32> = lens
            .iter()
            .scan(0u32, |end, &n| {
                *end += n as u32;
                Some(*end - 1)
            })
            .collect();
        let last = Tensor::new(last.as_slice(), &Device::Cpu)?;
        let x = self.norm.forward(&x.index_select(&last, 1)?)?;
        Ok(self.lm_head.forward(&x)?.squeeze(0)?)
    }

    /// Checks token ids and embeds them: (1, n, hidden) in f32.
    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
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

    /// Runs every block over `tokens` (at most one micro-batch) after the cache; returns
    /// the residual stream (1, n, hidden) before the final norm.
    fn hidden(&self, tokens: &[u32], cache: &mut Cache) -> Result<Tensor> {
        let index_pos = cache.seq_len();
        let seq_len = tokens.len();
        if seq_len == 0 {
            return Err(Error::Input("no tokens to run".into()));
        }
        if index_pos + seq_len > cache.n_ctx {
            return Err(Error::Input(format!(
                "{} tokens exceed the context of {} ({index_pos} already held)",
                index_pos + seq_len,
                cache.n_ctx
            )));
        }
        let mut x = self.embed(tokens)?;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = layer.input_layernorm.forward(&x)?;
            let h = layer.self_attn.forward(&h, &self.rope, index_pos, kv)?;
            x = (x + h)?;
            let h = layer.post_attention_layernorm.forward(&x)?;
            x = (&x + layer.mlp.forward(&h)?)?;
        }
        Ok(x)
    }
}
