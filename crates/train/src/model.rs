//! The Llama decoder as a differentiable function of its weights, for training: the same
//! layer order and Hugging Face tensor names as `ferrollama_model::Llama`, built from
//! candle's basic operations so that candle's autograd differentiates it. RoPE rotates
//! halves of each head, as Hugging Face checkpoints store Q and K; the inference loader
//! permutes those rows, so an exported model runs unchanged there (the parity test in
//! `tests/parity.rs` holds the two together).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use ferrollama_model::Config;

use crate::error::{Error, Result};
use crate::fused::{CausalAttention, CrossEntropy};

/// A Llama whose weights are candle variables, named as in a Hugging Face checkpoint.
pub struct TrainModel {
    pub config: Config,
    /// Every trainable tensor by name; the map's order is the order gradients are
    /// reduced and the optimizer visits them, so results do not depend on hashing.
    params: BTreeMap<String, Var>,
    /// (seq_len, head_dim), position-major: the cosine and sine of each position's
    /// angles, each half of a head rotated by the same frequencies.
    cos_table: Arc<Vec<f32>>,
    sin_table: Arc<Vec<f32>>,
}

/// Standard deviation of the initial weights (GPT-2's, as llama2.c and nanoGPT use).
const INIT_STD: f64 = 0.02;

impl TrainModel {
    /// A model of shape `config` with weights drawn from N(0, 0.02) by a ChaCha RNG seeded
    /// with `seed` (the output projections of attention and the MLP, which add to the
    /// residual stream, scaled down by sqrt(2 * layers), as GPT-2 does); norms start at 1.
    pub fn init(config: Config, seed: u64, max_seq: usize) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let residual_std = INIT_STD / (2.0 * config.num_hidden_layers as f64).sqrt();
        let mut params = BTreeMap::new();
        for (name, shape) in param_shapes(&config) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else {
                let std = if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                    residual_std
                } else {
                    INIT_STD
                };
                normal_samples(&mut rng, n, std)
            };
            let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
            params.insert(name, Var::from_tensor(&t)?);
        }
        Self::with_params(config, params, max_seq)
    }

    /// A model with the given weights, which must be exactly the tensors `config` calls for.
    pub fn from_tensors(
        config: Config,
        tensors: BTreeMap<String, Tensor>,
        max_seq: usize,
    ) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let mut params = BTreeMap::new();
        let mut tensors = tensors;
        for (name, shape) in param_shapes(&config) {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| Error::Config(format!("weights lack tensor `{name}`")))?;
            if t.dims() != shape.as_slice() {
                return Err(Error::Config(format!(
                    "tensor `{name}` has shape {:?}, the model needs {shape:?}",
                    t.dims()
                )));
            }
            params.insert(name, Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Config(format!(
                "weights hold tensor `{extra}`, which this model shape has no place for"
            )));
        }
        Self::with_params(config, params, max_seq)
    }

    fn with_params(config: Config, params: BTreeMap<String, Var>, max_seq: usize) -> Result<Self> {
        let (cos, sin) = rope_tables(&config, max_seq);
        let (cos_table, sin_table) = (Arc::new(cos), Arc::new(sin));
        Ok(Self {
            config,
            params,
            cos_table,
            sin_table,
        })
    }

    /// Trainable tensors in their fixed order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// The longest sequence the RoPE tables cover.
    pub fn max_seq(&self) -> usize {
        self.cos_table.len() / self.config.head_dim.max(1)
    }

    fn p(&self, name: &str) -> Result<&Tensor> {
        self.params
            .get(name)
            .map(|v| v.as_tensor())
            .ok_or_else(|| Error::Config(format!("model has no tensor `{name}`")))
    }

    /// Logits (b, t, vocab) for token ids (b, t), causal attention within each row.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let x = self.final_hidden(tokens)?;
        Ok(linear(&x, self.head()?)?.reshape((b, t, self.config.vocab_size))?)
    }

    /// Mean next-token loss of token ids (b, t) against `targets` (b * t ids), with the
    /// output projection and the cross-entropy fused (`head_loss`): the same value as
    /// `cross_entropy` of `forward`, without keeping the logits.
    pub fn loss(&self, tokens: &Tensor, targets: &[u32]) -> Result<Tensor> {
        let x = self.final_hidden(tokens)?;
        Ok(crate::head_loss::head_loss(&x, self.head()?, targets)?)
    }

    /// The output projection's weights (the embedding when tied).
    fn head(&self) -> Result<&Tensor> {
        if self.config.tie_word_embeddings {
            self.p("model.embed_tokens.weight")
        } else {
            self.p("lm_head.weight")
        }
    }

    /// The normed last hidden states (b * t, hidden) for token ids (b, t).
    fn final_hidden(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        if t > self.max_seq() {
            return Err(Error::Config(format!(
                "sequence of {t} tokens is longer than the model's {} positions",
                self.max_seq()
            )));
        }
        let cfg = &self.config;
        // (b * t, hidden)
        let mut x = self
            .p("model.embed_tokens.weight")?
            .index_select(&tokens.flatten_all()?, 0)?;
        for l in 0..cfg.num_hidden_layers {
            let pre = format!("model.layers.{l}");
            let n = rms_norm(
                &x,
                self.p(&format!("{pre}.input_layernorm.weight"))?,
                cfg.rms_norm_eps,
            )?;
            let a = self.attention(&n, &pre, b, t)?;
            x = (x + a)?;
            let n = rms_norm(
                &x,
                self.p(&format!("{pre}.post_attention_layernorm.weight"))?,
                cfg.rms_norm_eps,
            )?;
            let gate = linear(&n, self.p(&format!("{pre}.mlp.gate_proj.weight"))?)?;
            let up = linear(&n, self.p(&format!("{pre}.mlp.up_proj.weight"))?)?;
            let m = linear(
                &crate::swiglu::swiglu(&gate, &up)?,
                self.p(&format!("{pre}.mlp.down_proj.weight"))?,
            )?;
            x = (x + m)?;
        }
        rms_norm(&x, self.p("model.norm.weight")?, cfg.rms_norm_eps)
    }

    /// Self-attention of one layer on normed rows `x` (b * t, h), grouped-query heads.
    #[allow(clippy::too_many_arguments)]
    fn attention(&self, x: &Tensor, pre: &str, b: usize, t: usize) -> Result<Tensor> {
        let cfg = &self.config;
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        // (b, heads, t, hd)
        let heads = |w: &str, n: usize| -> Result<Tensor> {
            let y = linear(x, self.p(&format!("{pre}.self_attn.{w}.weight"))?)?;
            Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let rotated = |w: &str, n: usize| -> Result<Tensor> {
            let y = linear(x, self.p(&format!("{pre}.self_attn.{w}.weight"))?)?;
            let op = crate::rope::RopeHeads {
                batch: b,
                heads: n,
                d: hd,
                cos: self.cos_table.clone(),
                sin: self.sin_table.clone(),
            };
            Ok(op.apply(&y)?)
        };
        let q = rotated("q_proj", nh)?;
        let k = rotated("k_proj", nkv)?;
        let v = heads("v_proj", nkv)?;
        let scale = 1.0 / (hd as f32).sqrt();
        // (b, nh, t, hd) -> (b * t, nh * hd)
        let y = q
            .apply_op3(&k, &v, CausalAttention { scale })?
            .transpose(1, 2)?
            .reshape((b * t, nh * hd))?;
        linear(&y, self.p(&format!("{pre}.self_attn.o_proj.weight"))?)
    }
}

/// Names and shapes (rows, columns as stored: out x in) of the weights of `cfg`.
pub fn param_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let mut out = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![cfg.vocab_size, h],
        ),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.extend([
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
            (format!("{p}.mlp.gate_proj.weight"), vec![f, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![f, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, f]),
        ]);
    }
    out
}

/// x (n, in) times w (out, in) transposed: (n, out).
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(crate::matmul::linear(x, w)?)
}

/// RMSNorm over the last dimension, then the learned gain.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(crate::norm::rms_norm(x, w, eps)?)
}

/// Cosine and sine tables (max_seq, head_dim), halves repeated, for rotate-half RoPE.
fn rope_tables(cfg: &Config, max_seq: usize) -> (Vec<f32>, Vec<f32>) {
    let hd = cfg.head_dim;
    let half = hd / 2;
    let mut cos = Vec::with_capacity(max_seq * hd);
    let mut sin = Vec::with_capacity(max_seq * hd);
    for pos in 0..max_seq {
        let row: Vec<f32> = (0..half)
            .map(|i| {
                let inv = 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / hd as f32);
                pos as f32 / cfg.rope_scaling_factor * inv
            })
            .collect();
        for _ in 0..2 {
            cos.extend(row.iter().map(|a| a.cos()));
            sin.extend(row.iter().map(|a| a.sin()));
        }
    }
    (cos, sin)
}

/// `n` samples of N(0, std) by the Box-Muller transform, in a fixed order.
fn normal_samples(rng: &mut ChaCha20Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32);
        if out.len() < n {
            out.push((r * a.sin()) as f32);
        }
    }
    out
}

/// Mean cross-entropy of logits (n, vocab) against target ids (n).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(logits
        .contiguous()?
        .apply_op2(targets, CrossEntropy::default())?)
}
