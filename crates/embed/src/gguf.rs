//! BERT-family encoders from GGUF files as llama.cpp's `convert_hf_to_gguf.py` writes them
//! (`general.architecture = bert`): the hyperparameters from `bert.*`, the weights under
//! llama.cpp's names mapped back to Hugging Face's, and the WordPiece tokenizer rebuilt
//! from `tokenizer.ggml.tokens`. llama.cpp stores that vocabulary in "phantom space" form
//! (a word-initial piece gets a leading `▁`, a continuation loses its `##`, control tokens
//! stay as they are); the inverse gives the original vocabulary back. The file is read by
//! our own GGUF reader, which bounds every size and offset before use.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use ferrollama_gguf::{GgmlType, GgufFile};

use crate::bert::BertConfig;
use crate::error::{Error, Result};
use crate::Pooling;

/// What a BERT GGUF holds besides the weights.
pub struct GgufParts {
    pub config: BertConfig,
    pub tensors: HashMap<String, Tensor>,
    /// The tokenizer as `tokenizer.json` text.
    pub tokenizer_json: String,
    pub pooling: Pooling,
}

/// llama.cpp's token type of control tokens ([CLS], [SEP], [PAD], ...).
const CONTROL: i64 = 3;

/// Reads a BERT GGUF.
pub fn read(path: &Path) -> Result<GgufParts> {
    let file = path.display().to_string();
    let bad = |msg: String| Error::Format {
        file: file.clone(),
        msg,
    };
    let g = GgufFile::open(path).map_err(|e| bad(e.to_string()))?;
    let h = &g.header;
    let arch = h
        .get_str("general.architecture")
        .map_err(|e| bad(e.to_string()))?;
    if arch != "bert" {
        return Err(bad(format!(
            "architecture `{arch}`: only `bert` is read as a sentence encoder"
        )));
    }
    let num = |k: &str| -> Result<usize> {
        h.get_u64(&format!("bert.{k}"))
            .map(|v| v as usize)
            .map_err(|e| bad(e.to_string()))
    };
    let tokens = h
        .get_str_array("tokenizer.ggml.tokens")
        .map_err(|e| bad(e.to_string()))?;
    let types = h
        .get_i64_array("tokenizer.ggml.token_type")
        .unwrap_or_default();
    let config = BertConfig {
        vocab_size: tokens.len(),
        hidden_size: num("embedding_length")?,
        num_hidden_layers: num("block_count")?,
        num_attention_heads: num("attention.head_count")?,
        intermediate_size: num("feed_forward_length")?,
        max_position_embeddings: num("context_length")?,
        type_vocab_size: h
            .get_u64("tokenizer.ggml.token_type_count")
            .map_or(2, |v| v as usize),
        layer_norm_eps: h
            .get_f32("bert.attention.layer_norm_epsilon")
            .map_or(1e-12, |v| v as f64),
        hidden_act: "gelu".into(),
        position_embedding_type: "absolute".into(),
        model_type: "bert".into(),
    };
    let pooling = match h.get_u64("bert.pooling_type").unwrap_or(1) {
        1 => Pooling::Mean,
        2 => Pooling::Cls,
        3 => Pooling::Last,
        other => {
            return Err(bad(format!(
                "pooling type {other} is not a sentence pooling"
            )))
        }
    };

    // The weights, under Hugging Face's names.
    let mut names: Vec<(String, String)> = vec![
        (
            "token_embd.weight".into(),
            "embeddings.word_embeddings.weight".into(),
        ),
        (
            "position_embd.weight".into(),
            "embeddings.position_embeddings.weight".into(),
        ),
        (
            "token_types.weight".into(),
            "embeddings.token_type_embeddings.weight".into(),
        ),
        (
            "token_embd_norm.weight".into(),
            "embeddings.LayerNorm.weight".into(),
        ),
        (
            "token_embd_norm.bias".into(),
            "embeddings.LayerNorm.bias".into(),
        ),
    ];
    for l in 0..config.num_hidden_layers {
        for (ours, theirs) in [
            ("attn_q", "attention.self.query"),
            ("attn_k", "attention.self.key"),
            ("attn_v", "attention.self.value"),
            ("attn_output", "attention.output.dense"),
            ("attn_output_norm", "attention.output.LayerNorm"),
            ("ffn_up", "intermediate.dense"),
            ("ffn_down", "output.dense"),
            ("layer_output_norm", "output.LayerNorm"),
        ] {
            for part in ["weight", "bias"] {
                names.push((
                    format!("blk.{l}.{ours}.{part}"),
                    format!("encoder.layer.{l}.{theirs}.{part}"),
                ));
            }
        }
    }
    let mut tensors = HashMap::new();
    for (gguf_name, hf_name) in names {
        let (info, bytes) = g.tensor(&gguf_name).map_err(|e| bad(e.to_string()))?;
        let values: Vec<f32> = match info.ggml_type {
            GgmlType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            GgmlType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            GgmlType::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(bad(format!(
                    "`{gguf_name}` is {}: BERT weights are read as f32, f16 or bf16",
                    other.name()
                )))
            }
        };
        let t = Tensor::from_vec(values, info.shape(), &Device::Cpu)?;
        tensors.insert(hf_name, t);
    }

    // The tokenizer, rebuilt as Hugging Face's tokenizer.json for BERT.
    let id = |k: &str| h.get_u64(&format!("tokenizer.ggml.{k}")).ok();
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        let control = types.get(i) == Some(&CONTROL);
        let original = if control {
            added.push(serde_json::json!({
                "id": i, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true,
            }));
            tok.to_string()
        } else if let Some(word) = tok.strip_prefix('\u{2581}') {
            word.to_string()
        } else {
            format!("##{tok}")
        };
        vocab.insert(original, i.into());
    }
    let name_of = |id: Option<u64>, fallback: &str| -> String {
        id.and_then(|i| tokens.get(i as usize))
            .map_or_else(|| fallback.to_string(), |t| t.to_string())
    };
    let (cls, sep) = (
        id("bos_token_id").unwrap_or(101),
        id("seperator_token_id")
            .or(id("eos_token_id"))
            .unwrap_or(102),
    );
    let lowercase = h
        .get_bool("tokenizer.ggml.normalizer.lowercase")
        .unwrap_or(true);
    let tokenizer_json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null,
                       "lowercase": lowercase},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing",
                           "sep": [name_of(Some(sep), "[SEP]"), sep],
                           "cls": [name_of(Some(cls), "[CLS]"), cls]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": name_of(id("unknown_token_id"), "[UNK]"),
                  "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                  "vocab": vocab},
    })
    .to_string();
    Ok(GgufParts {
        config,
        tensors,
        tokenizer_json,
        pooling,
    })
}
