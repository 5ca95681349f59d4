//! A BERT encoder (Devlin et al. 2019) as Hugging Face's `BertModel` computes it: word,
//! absolute position and token-type embeddings, then post-norm blocks of self-attention
//! and a GELU (erf) feed-forward, each LayerNorm after its residual. The weights are a
//! `model.safetensors` with Hugging Face's names (an optional `bert.` prefix is accepted).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};
use crate::fused;

/// The encoder's shape, from `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
    /// `bert`; RoBERTa, XLM-R and the rotary/ALiBi BERTs differ in ways this encoder does
    /// not build (position offsets, other position schemes), so they are refused.
    #[serde(default = "bert")]
    pub model_type: String,
}

fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}
fn bert() -> String {
    "bert".into()
}
fn absolute() -> String {
    "absolute".into()
}

struct Linear {
    /// The weight transposed once at load, (in, out), contiguous.
    wt: Tensor,
    b: Tensor,
    /// The bias as plain values, for the fused passes.
    bias: Vec<f32>,
    /// `wt` as plain values, for products split over threads by rows.
    w: Vec<f32>,
}

impl Linear {
    /// `x` (rows, in) times the weight, without the bias. Each thread runs `gemm` alone on
    /// its own rows (candle's threading inside `gemm` scales worse on these shapes).
    fn product(&self, x: &[f32]) -> Result<Vec<f32>> {
        let (inp, out) = self.wt.dims2()?;
        let rows = x.len() / inp.max(1);
        Ok(ferrollama_model::ops::matmul::matmul_strided(
            x,
            (inp, 1),
            &self.w,
            (out, 1),
            rows,
            inp,
            out,
            1.0,
        )?)
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
    eps: f64,
    /// The same gain and shift as plain values, for the fused pass.
    wv: Vec<f32>,
    bv: Vec<f32>,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&self.w)?.broadcast_add(&self.b)?)
    }
}

struct Block {
    /// The query, key and value projections as one (hidden, 3 x hidden) product.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// The encoder with its weights.
pub struct BertEncoder {
    pub config: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: Norm,
    blocks: Vec<Block>,
}

impl BertEncoder {
    /// Reads `config.json` and `model.safetensors` of a Hugging Face BERT directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| Error::Format {
            file: cfg_path.display().to_string(),
            msg: e.to_string(),
        })?;
        let weights_path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| {
            Error::Format {
                file: weights_path.display().to_string(),
                msg: e.to_string(),
            }
        })?;
        Self::from_tensors(config, tensors, &weights_path.display().to_string())
    }

    /// The encoder of `config` from its weights under Hugging Face's names (an optional
    /// `bert.` prefix accepted); `file` names their source in errors.
    pub(crate) fn from_tensors(
        config: BertConfig,
        mut tensors: HashMap<String, Tensor>,
        file: &str,
    ) -> Result<Self> {
        if config.model_type != "bert" {
            return Err(Error::Format {
                file: file.to_string(),
                msg: format!(
                    "model_type {:?}: only BERT is built (not RoBERTa, XLM-R or the rotary/ALiBi variants)",
                    config.model_type
                ),
            });
        }
        if config.hidden_act != "gelu" || config.position_embedding_type != "absolute" {
            return Err(Error::Format {
                file: file.to_string(),
                msg: format!(
                    "hidden_act {:?} with {:?} positions: only BERT's gelu and absolute positions are built",
                    config.hidden_act, config.position_embedding_type
                ),
            });
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(Error::Format {
                file: file.to_string(),
                msg: "hidden_size must be a multiple of num_attention_heads".into(),
            });
        }
        let h = config.hidden_size;
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors
                .remove(name)
                .or_else(|| tensors.remove(&format!("bert.{name}")))
                .ok_or_else(|| Error::Format {
                    file: file.into(),
                    msg: format!("missing tensor `{name}`"),
                })?;
            if t.dims() != shape {
                return Err(Error::Format {
                    file: file.into(),
                    msg: format!("`{name}` has shape {:?}, expected {shape:?}", t.dims()),
                });
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        let linear = |take: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
                      name: &str,
                      out: usize,
                      inp: usize|
         -> Result<Linear> {
            let b = take(&format!("{name}.bias"), &[out])?;
            let wt = take(&format!("{name}.weight"), &[out, inp])?
                .t()?
                .contiguous()?;
            Ok(Linear {
                w: wt.flatten_all()?.to_vec1()?,
                wt,
                bias: b.to_vec1()?,
                b,
            })
        };
        let eps = config.layer_norm_eps;
        let norm =
            |take: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>, name: &str| -> Result<Norm> {
                let w = take(&format!("{name}.weight"), &[h])?;
                let b = take(&format!("{name}.bias"), &[h])?;
                Ok(Norm {
                    wv: w.to_vec1()?,
                    bv: b.to_vec1()?,
                    w,
                    b,
                    eps,
                })
            };
        let word = take("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position = take(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let token_type = take(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let embed_norm = norm(&mut take, "embeddings.LayerNorm")?;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        let inter = config.intermediate_size;
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let q = linear(&mut take, &format!("{p}.attention.self.query"), h, h)?;
            let k = linear(&mut take, &format!("{p}.attention.self.key"), h, h)?;
            let v = linear(&mut take, &format!("{p}.attention.self.value"), h, h)?;
            let b = Tensor::cat(&[&q.b, &k.b, &v.b], 0)?;
            let wt = Tensor::cat(&[&q.wt, &k.wt, &v.wt], 1)?.contiguous()?;
            blocks.push(Block {
                qkv: Linear {
                    w: wt.flatten_all()?.to_vec1()?,
                    wt,
                    bias: b.to_vec1()?,
                    b,
                },
                attn_out: linear(&mut take, &format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: norm(&mut take, &format!("{p}.attention.output.LayerNorm"))?,
                up: linear(&mut take, &format!("{p}.intermediate.dense"), inter, h)?,
                down: linear(&mut take, &format!("{p}.output.dense"), h, inter)?,
                out_norm: norm(&mut take, &format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            config,
            word,
            position,
            token_type,
            embed_norm,
            blocks,
        })
    }

    /// The last hidden states (b, t, hidden) of token ids (b, t), `mask` (b, t) 1 for real
    /// tokens and 0 for padding (attended by nothing); token type 0 throughout.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.config.max_position_embeddings {
            return Err(Error::TooLong {
                tokens: t,
                limit: self.config.max_position_embeddings,
            });
        }
        let h = self.config.hidden_size;
        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let positions = self.position.narrow(0, 0, t)?;
        let types = self.token_type.narrow(0, 0, 1)?;
        let x = words.broadcast_add(&positions)?.broadcast_add(&types)?;
        let mut x: Vec<f32> = self.embed_norm.forward(&x)?.flatten_all()?.to_vec1()?;
        // Padding gets a large negative score before the softmax, as BertModel's extended
        // attention mask does (the dtype's minimum there; any value that underflows works).
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e30)?.reshape((b, 1, 1, t))?;
        let heads = self.config.num_attention_heads;
        let hd = h / heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let cpu = Device::Cpu;
        for block in &self.blocks {
            // (rows, 3h) -> (3, b, heads, t, hd): queries, keys and values by head.
            let mut qkv = block.qkv.product(&x)?;
            let three = block.qkv.bias.len();
            qkv.chunks_mut(three)
                .for_each(|r| r.iter_mut().zip(&block.qkv.bias).for_each(|(v, b)| *v += b));
            let qkv = Tensor::from_vec(qkv, (b, t, 3, heads, hd), &cpu)?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?;
            let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = p
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let mut a = block.attn_out.product(&ctx)?;
            let n = &block.attn_norm;
            fused::bias_residual_layer_norm(&mut a, &block.attn_out.bias, &x, &n.wv, &n.bv, n.eps);
            x = a;
            let mut u = block.up.product(&x)?;
            fused::bias_gelu(&mut u, &block.up.bias);
            let mut m = block.down.product(&u)?;
            let n = &block.out_norm;
            fused::bias_residual_layer_norm(&mut m, &block.down.bias, &x, &n.wv, &n.bv, n.eps);
            x = m;
        }
        Ok(Tensor::from_vec(x, (b, t, h), &cpu)?)
    }
}
