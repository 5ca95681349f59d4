//! Sentence embeddings as sentence-transformers computes them: a BERT-family encoder
//! ([`bert`]), its WordPiece tokenizer (Hugging Face's `tokenizers`, the library its
//! Python package wraps), the pooling of its `1_Pooling/config.json` (mean over the real
//! tokens by default) and, when the model lists a `Normalize` module, unit length.

pub mod bert;
pub mod cluster;
pub mod error;
pub mod fused;
pub mod gguf;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use bert::{BertConfig, BertEncoder};
pub use error::{Error, Result};

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the real tokens ([CLS] and [SEP] included, padding not).
    Mean,
    /// The [CLS] token's state.
    Cls,
    /// The element-wise maximum over the real tokens.
    Max,
    /// The last real token's state (for decoders, the one that has read the whole text).
    Last,
}

/// A sentence encoder opened from a sentence-transformers directory.
pub struct Embedder {
    pub encoder: BertEncoder,
    tokenizer: tokenizers::Tokenizer,
    /// The same tokenizer without truncation, for splitting long documents.
    splitter: tokenizers::Tokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Tokens per text at most, [CLS] and [SEP] included (`max_seq_length`).
    pub max_tokens: usize,
    name: String,
}

impl Embedder {
    /// Opens `dir`: `config.json`, `model.safetensors`, `tokenizer.json`, and where
    /// present `1_Pooling/config.json`, `modules.json` and `sentence_bert_config.json`;
    /// or, when `dir` is a file, a BERT GGUF (see [`gguf`]).
    pub fn open(dir: &Path) -> Result<Self> {
        if dir.is_file() {
            return Self::open_gguf(dir);
        }
        let encoder = BertEncoder::open(dir)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        let json = |name: &str| -> Result<Option<serde_json::Value>> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::Format {
                    file: p.display().to_string(),
                    msg: e.to_string(),
                })
        };
        let flag =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_bool()) == Some(true);
        let pooling = match json("1_Pooling/config.json")? {
            Some(v) if flag(&v, "pooling_mode_cls_token") => Pooling::Cls,
            Some(v) if flag(&v, "pooling_mode_max_tokens") => Pooling::Max,
            _ => Pooling::Mean,
        };
        let normalize = json("modules.json")?.is_some_and(|v| {
            v.as_array().is_some_and(|m| {
                m.iter().any(|x| {
                    x.get("type")
                        .and_then(|t| t.as_str())
                        .is_some_and(|t| t.ends_with("Normalize"))
                })
            })
        });
        let limit = encoder.config.max_position_embeddings;
        let max_tokens = json("sentence_bert_config.json")?
            .and_then(|v| v.get("max_seq_length").and_then(|x| x.as_u64()))
            .map_or(limit, |m| (m as usize).min(limit));
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        Self::assemble(encoder, tokenizer, pooling, normalize, max_tokens, name)
    }

    /// The embedder of an encoder and its tokenizer: padding is ours (to the longest text
    /// of a batch), truncation at `max_tokens` with the special tokens counted, and a copy
    /// without truncation (a tokenizer.json may carry its own: all-MiniLM's 128) for
    /// cutting long documents.
    fn assemble(
        encoder: BertEncoder,
        mut tokenizer: tokenizers::Tokenizer,
        pooling: Pooling,
        normalize: bool,
        max_tokens: usize,
        name: String,
    ) -> Result<Self> {
        tokenizer.with_padding(None);
        let mut splitter = tokenizer.clone();
        splitter
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Self {
            encoder,
            tokenizer,
            splitter,
            pooling,
            normalize,
            max_tokens,
            name,
        })
    }

    /// A BERT GGUF as llama.cpp's converter writes it: its pooling (`bert.pooling_type`),
    /// unit-length vectors (as llama.cpp's embedding tools give by default; GGUF records
    /// no `Normalize` module), texts truncated at `bert.context_length` (GGUF records no
    /// `max_seq_length` either: all-MiniLM-L6-v2 reads 512 tokens from GGUF, 256 from its
    /// sentence-transformers directory).
    fn open_gguf(path: &Path) -> Result<Self> {
        let parts = gguf::read(path)?;
        let file = path.display().to_string();
        let encoder = BertEncoder::from_tensors(parts.config, parts.tensors, &file)?;
        let tokenizer: tokenizers::Tokenizer = parts
            .tokenizer_json
            .parse()
            .map_err(|e| Error::Tokenizer(format!("{file}: {e}")))?;
        let max_tokens = encoder.config.max_position_embeddings;
        let name = path
            .file_stem()
            .map_or_else(|| file.clone(), |n| n.to_string_lossy().into_owned());
        Self::assemble(encoder, tokenizer, parts.pooling, true, max_tokens, name)
    }

    /// The token ids of `text` as the encoder reads it ([CLS] ... [SEP], truncated).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The byte ranges in `text` of its word pieces, without [CLS]/[SEP] and without
    /// truncation: where a long document may be cut into chunks the encoder reads whole.
    pub fn piece_offsets(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        let enc = self
            .splitter
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_offsets().to_vec())
    }

    /// A name for the encoder: its directory's name (what a store records, so that a
    /// query is never embedded by another model than the documents were).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One vector per text, in order, `batch` texts per forward pass. Texts are batched by
    /// length, longest first (as sentence-transformers does), so a batch pads little.
    pub fn embed(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(batch.max(1)) {
            let group: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            for (&i, v) in chunk.iter().zip(self.embed_ids(&group)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// One vector per token-id list (each non-empty), padded together into one batch.
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let t = ids.iter().map(Vec::len).max().unwrap_or(0);
        if ids.is_empty() || t == 0 {
            return Ok(vec![Vec::new(); ids.len()]);
        }
        let b = ids.len();
        let mut flat = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t];
        for (r, row) in ids.iter().enumerate() {
            flat[r * t..r * t + row.len()].copy_from_slice(row);
            mask[r * t..r * t + row.len()].fill(1.0);
        }
        let x = Tensor::from_vec(flat, (b, t), &Device::Cpu)?;
        let m = Tensor::from_vec(mask, (b, t), &Device::Cpu)?;
        let states = self.encoder.forward(&x, &m)?;
        let states: Vec<Vec<f32>> = states.to_dtype(DType::F32)?.flatten_to(1)?.to_vec2()?;
        let h = self.encoder.config.hidden_size;
        Ok(ids
            .iter()
            .enumerate()
            .map(|(r, row)| {
                let rows: Vec<&[f32]> = (0..row.len()).map(|i| &states[r * t + i][..h]).collect();
                let mut v = pool(&rows, self.pooling);
                if self.normalize {
                    normalize(&mut v);
                }
                v
            })
            .collect())
    }
}

/// The pooled vector of token states `rows` (at least one).
pub fn pool(rows: &[&[f32]], pooling: Pooling) -> Vec<f32> {
    let Some(first) = rows.first() else {
        return Vec::new();
    };
    match pooling {
        Pooling::Cls => first.to_vec(),
        Pooling::Last => rows[rows.len() - 1].to_vec(),
        Pooling::Mean => {
            let mut sum = vec![0f64; first.len()];
            for r in rows {
                sum.iter_mut()
                    .zip(r.iter())
                    .for_each(|(s, &x)| *s += x as f64);
            }
            sum.iter().map(|s| (s / rows.len() as f64) as f32).collect()
        }
        Pooling::Max => {
            let mut m = first.to_vec();
            for r in &rows[1..] {
                m.iter_mut().zip(r.iter()).for_each(|(a, &x)| *a = a.max(x));
            }
            m
        }
    }
}

/// Scales `v` to unit length (left alone when it is zero), as torch's `normalize` with
/// its 1e-12 floor does.
pub fn normalize(v: &mut [f32]) {
    let n = v
        .iter()
        .map(|&x| (x as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    v.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
}

/// The cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += (x as f64).powi(2);
        bb += (y as f64).powi(2);
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (ab / (aa.sqrt() * bb.sqrt())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_and_cosine_by_hand() {
        let (a, b) = ([1.0f32, -2.0], [3.0f32, 4.0]);
        let rows: Vec<&[f32]> = vec![&a, &b];
        assert_eq!(pool(&rows, Pooling::Mean), [2.0, 1.0]);
        assert_eq!(pool(&rows, Pooling::Cls), [1.0, -2.0]);
        assert_eq!(pool(&rows, Pooling::Max), [3.0, 4.0]);
        assert_eq!(pool(&rows, Pooling::Last), [3.0, 4.0]);
        let mut v = vec![3.0f32, 4.0];
        normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut zero = vec![0.0f32; 2];
        normalize(&mut zero);
        assert_eq!(zero, [0.0, 0.0]);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }
}
