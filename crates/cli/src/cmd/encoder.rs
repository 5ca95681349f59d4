//! What `embed` and `similar` embed with: a BERT-family sentence encoder (a
//! sentence-transformers directory), or a decoder (a Llama-family GGUF file or Hugging
//! Face directory) pooled over its final hidden states (after the last RMSNorm), as the
//! server's `/v1/embeddings` does for the chat model.

use std::path::Path;

use anyhow::{bail, Result};
use ferrollama_embed::{Embedder, Pooling};
use ferrollama_generate::Bundle;

use crate::args::ModelArgs;

pub enum Encoder {
    // Both boxed: each is a large value (weights, tokenizer, caches' shapes).
    Sentence(Box<Embedder>),
    Decoder {
        bundle: Box<Bundle>,
        pooling: Pooling,
        normalize: bool,
    },
}

/// Whether `dir` holds a BERT-family encoder (its `config.json` says `bert`).
fn is_bert_dir(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let bert = |s: &str| s.to_ascii_lowercase().contains("bert");
    v.get("model_type")
        .and_then(|t| t.as_str())
        .is_some_and(bert)
        || v.get("architectures")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().filter_map(|x| x.as_str()).any(bert))
}

/// Whether `file` is a GGUF of a BERT-family encoder (`general.architecture = bert`).
fn is_bert_gguf(file: &Path) -> bool {
    ferrollama_gguf::GgufFile::open(file).is_ok_and(|g| {
        g.header
            .get_str("general.architecture")
            .is_ok_and(|a| a == "bert")
    })
}

impl Encoder {
    /// The encoder `model` names (default: all-MiniLM-L6-v2, fetched on first use).
    pub fn open(model: Option<&Path>) -> Result<Self> {
        match model {
            None => Ok(Self::Sentence(Box::new(Embedder::open(
                &ferrollama_assets::default_embedding_model()?,
            )?))),
            Some(p) if (p.is_dir() && is_bert_dir(p)) || (p.is_file() && is_bert_gguf(p)) => {
                Ok(Self::Sentence(Box::new(Embedder::open(p)?)))
            }
            Some(p) => {
                let bundle = crate::load::load(&ModelArgs {
                    model: Some(p.to_path_buf()),
                    ctx: None,
                    no_pack_cache: false,
                    map_weights: false,
                    lora: Vec::new(),
                })?;
                Ok(Self::Decoder {
                    bundle: Box::new(bundle),
                    pooling: Pooling::Mean,
                    normalize: true,
                })
            }
        }
    }

    pub fn set_pooling(&mut self, p: Pooling) {
        match self {
            Self::Sentence(e) => e.pooling = p,
            Self::Decoder { pooling, .. } => *pooling = p,
        }
    }

    pub fn set_normalize(&mut self, n: bool) {
        match self {
            Self::Sentence(e) => e.normalize = n,
            Self::Decoder { normalize, .. } => *normalize = n,
        }
    }

    /// The token ids `text` is read as: [CLS] ... [SEP] for an encoder; for a decoder
    /// with its BOS and special tokens parsed, as `/v1/embeddings` reads it.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Sentence(e) => Ok(e.token_ids(text)?),
            Self::Decoder { bundle, .. } => Ok(bundle.tokenizer.encode(text, true, true)),
        }
    }

    /// One vector per text, in order.
    pub fn embed(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
        let (bundle, pooling, normalize) = match self {
            Self::Sentence(e) => return Ok(e.embed(texts, batch)?),
            Self::Decoder {
                bundle,
                pooling,
                normalize,
            } => (bundle, *pooling, *normalize),
        };
        let mut out = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let ids = self.token_ids(t)?;
            if ids.is_empty() || ids.len() > bundle.n_ctx {
                bail!(
                    "text {} is {} tokens; the model reads 1 to {}",
                    i + 1,
                    ids.len(),
                    bundle.n_ctx
                );
            }
            let mut cache = bundle.model.new_cache(ids.len());
            let h = bundle.model.hidden_states_with(&ids, &mut cache, None)?;
            let rows: Vec<&[f32]> = (0..h.rows()).map(|r| h.row(r)).collect();
            let mut v = ferrollama_embed::pool(&rows, pooling);
            if normalize {
                ferrollama_embed::normalize(&mut v);
            }
            out.push(v);
        }
        Ok(out)
    }
}
