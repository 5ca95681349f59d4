//! A BERT encoder (Devlin et al. 2019) as Hugging Face's `BertModel` computes it: word,
//! absolute position and token-type embeddings, then post-norm blocks of self-attention
//! and a GELU (erf) feed-forward, each LayerNorm after its residual. The weights are a
//! `model.safetensors` with Hugging Face's names (an optional `bert.` prefix is accepted).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};

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
fn absolute() -> String {
    "absolute".into()
}

struct Linear {
    /// The weight transposed once at load, (in, out), contiguous.
    wt: Tensor,
    b: Tensor,
}

impl Linear {
    /// `x` (..., in) as one (rows, in) product: a 3-d `broadcast_matmul` would run one
    /// small product per batch row.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / inp.max(1);
        let y = x
            .reshape((rows, inp))?
            .matmul(&self.wt)?
            .broadcast_add(&self.b)?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.wt.dims()[1];
        }
        Ok(y.reshape(out)?)
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
    eps: f64,
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
    query: Linear,
    key: Linear,
    value: Linear,
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
        if config.hidden_act != "gelu" || config.position_embedding_type != "absolute" {
            return Err(Error::Format {
                file: cfg_path.display().to_string(),
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
                file: cfg_path.display().to_string(),
                msg: "hidden_size must be a multiple of num_attention_heads".into(),
            });
        }
        let weights_path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| {
            Error::Format {
                file: weights_path.display().to_string(),
                msg: e.to_string(),
            }
        })?;
        Self::from_tensors(config, tensors, &weights_path.display().to_string())
    }

    fn from_tensors(
        config: BertConfig,
        mut tensors: HashMap<String, Tensor>,
        file: &str,
    ) -> Result<Self> {
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
            Ok(Linear {
                wt: take(&format!("{name}.weight"), &[out, inp])?
                    .t()?
                    .contiguous()?,
                b: take(&format!("{name}.bias"), &[out])?,
            })
        };
        let eps = config.layer_norm_eps;
        let norm =
            |take: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>, name: &str| -> Result<Norm> {
                Ok(Norm {
                    w: take(&format!("{name}.weight"), &[h])?,
                    b: take(&format!("{name}.bias"), &[h])?,
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
            blocks.push(Block {
                query: linear(&mut take, &format!("{p}.attention.self.query"), h, h)?,
                key: linear(&mut take, &format!("{p}.attention.self.key"), h, h)?,
                value: linear(&mut take, &format!("{p}.attention.self.value"), h, h)?,
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
        let mut x = self.embed_norm.forward(&x)?;
        // Padding gets a large negative score before the softmax, as BertModel's extended
        // attention mask does (the dtype's minimum there; any value that underflows works).
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e30)?.reshape((b, 1, 1, t))?;
        let heads = self.config.num_attention_heads;
        let hd = h / heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        for block in &self.blocks {
            let q = split(block.query.forward(&x)?)?;
            let k = split(block.key.forward(&x)?)?;
            let v = split(block.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let max = scores.max_keepdim(D::Minus1)?;
            let e = scores.broadcast_sub(&max)?.exp()?;
            let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            let ctx = p
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, h))?;
            let a = block.attn_out.forward(&ctx)?;
            x = block.attn_norm.forward(&(a + &x)?)?;
            let m = block.down.forward(&block.up.forward(&x)?.gelu_erf()?)?;
            x = block.out_norm.forward(&(m + &x)?)?;
        }
        Ok(x)
    }
}
