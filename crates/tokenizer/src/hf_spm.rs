//! A Hugging Face directory whose tokenizer is a SentencePiece `tokenizer.model` (no
//! `tokenizer.json`), read as llama.cpp's converter reads one (`convert_hf_to_gguf.py`
//! `_create_vocab_sentencepiece` and `LlamaModel.set_vocab`, gguf-py `SpecialVocab`): the
//! model's pieces, resized to `config.json`'s `vocab_size`, then `added_tokens.json` and
//! `tokenizer_config.json`'s `added_tokens_decoder` on top.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::hf_json::looks_special;
use crate::vocab::{TokenType, Vocab};

/// The JSON files of the directory that adjust a `tokenizer.model`, each `Null` if absent.
pub(crate) struct HfFiles {
    /// `tokenizer_config.json`.
    pub config: Value,
    /// `config.json` (the model's).
    pub model_config: Value,
    /// `added_tokens.json`.
    pub added_tokens: Value,
}

impl HfFiles {
    /// Reads the files that exist in `dir`.
    pub fn read(dir: &Path) -> Result<HfFiles> {
        let read = |name: &str| -> Result<Value> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => serde_json::from_str(&text).map_err(|source| Error::Json {
                    file: name.into(),
                    source,
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Null),
                Err(source) => Err(Error::Io {
                    file: path.display().to_string(),
                    source,
                }),
            }
        };
        Ok(HfFiles {
            config: read("tokenizer_config.json")?,
            model_config: read("config.json")?,
            added_tokens: read("added_tokens.json")?,
        })
    }
}

/// Applies the directory's JSON files to the vocabulary of its `tokenizer.model`.
pub(crate) fn apply(mut v: Vocab, files: &HfFiles) -> Result<Vocab> {
    let mc = &files.model_config;
    let size = ["vocab_size_per_layer_input", "vocab_size"]
        .iter()
        .find_map(|k| mc[k].as_u64().or_else(|| mc["text_config"][k].as_u64()));
    if let Some(size) = size {
        resize(&mut v, size)?;
    }
    let n = v.tokens.len();
    let mut types = v
        .token_types
        .take()
        .unwrap_or_else(|| vec![TokenType::Normal; n]);
    let mut scores = v.scores.take().unwrap_or_else(|| vec![0.0; n]);
    let mut set = |id: usize, text: String, ty: TokenType| {
        if id < n {
            v.tokens[id] = text;
            types[id] = ty;
            scores[id] = -1000.0;
        }
    };
    for (text, id) in files.added_tokens.as_object().into_iter().flatten() {
        if let Some(id) = id.as_u64() {
            set(id as usize, text.clone(), TokenType::UserDefined);
        }
    }
    let cfg = &files.config;
    for (id, data) in cfg["added_tokens_decoder"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let (Ok(id), Some(content)) = (id.parse::<usize>(), data["content"].as_str()) else {
            continue;
        };
        if data["special"].as_bool() == Some(true) || looks_special(content) {
            set(id, content.to_string(), TokenType::Control);
        } else {
            // llama.cpp stores user-defined tokens pre-normalized, with real spaces.
            set(id, content.replace('\u{2581}', " "), TokenType::UserDefined);
        }
    }
    v.token_types = Some(types);
    v.scores = Some(scores);
    v.add_bos = cfg["add_bos_token"].as_bool().or(v.add_bos);
    v.add_eos = cfg["add_eos_token"].as_bool().or(v.add_eos);
    v.add_space_prefix = cfg["add_prefix_space"].as_bool().or(v.add_space_prefix);
    // SpecialVocab takes `*_token_id` from config.json (the token texts of
    // tokenizer_config.json need tokenizer.json to resolve).
    let special = &mut v.special;
    for (key, slot) in [
        ("bos", &mut special.bos),
        ("eos", &mut special.eos),
        ("unk", &mut special.unk),
        ("sep", &mut special.sep),
        ("pad", &mut special.pad),
        ("mask", &mut special.mask),
    ] {
        let key = format!("{key}_token_id");
        let id = mc[&key]
            .as_u64()
            .or_else(|| mc["text_config"][&key].as_u64());
        if let Some(id) = id.filter(|&id| (id as usize) < n) {
            *slot = Some(id as u32);
        }
    }
    Ok(v)
}

/// Pads with `[PAD{i}]` (unused, score -10000) or cuts the vocabulary to `size` tokens, as
/// the converter sizes its token list by the model's `vocab_size`.
fn resize(v: &mut Vocab, size: u64) -> Result<()> {
    let n = v.tokens.len();
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s > 0 && s <= 2 * n + 65_536);
    let Some(size) = size else {
        return Err(Error::HfFormat {
            file: "config.json".into(),
            msg: format!("vocab_size is 0 or far beyond the {n} pieces of tokenizer.model"),
        });
    };
    let types = v
        .token_types
        .get_or_insert_with(|| vec![TokenType::Normal; n]);
    let scores = v.scores.get_or_insert_with(|| vec![0.0; n]);
    v.tokens.truncate(size);
    types.truncate(size);
    scores.truncate(size);
    for i in n..size {
        v.tokens.push(format!("[PAD{i}]"));
        types.push(TokenType::Unused);
        scores.push(-10000.0);
    }
    Ok(())
}
