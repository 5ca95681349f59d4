//! Writing a tokenizer as Hugging Face `tokenizer.json` + `tokenizer_config.json`, in the
//! shapes `hf_json.rs` reads back to the same encoder: byte-level BPE with the matching
//! pre-tokenizer, or (for SPM) Llama-2-style BPE with byte fallback whose merges list every
//! split of every token, ordered by the token's score.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::bytes;
use crate::error::{Error, Result};
use crate::pretokenize::{Splitter, DEFAULT_PATTERNS, LLAMA3_PATTERN};
use crate::resolve::attr;
use crate::tokenizer::Tokenizer;
use crate::vocab::ModelKind;

impl Tokenizer {
    /// The text of a `tokenizer.json` describing this tokenizer.
    ///
    /// Lossy in rare cases: tokens of type unused/undefined come back as normal tokens, a
    /// repeated token text keeps only its last id, and SPM merge ties of equal scores are
    /// broken by id.
    pub fn to_tokenizer_json(&self) -> String {
        let spm = self.vocab.model == ModelKind::Spm;
        let (vocab, added) = self.hf_vocab();
        let mut model = json!({
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": spm,
            "byte_fallback": spm,
            "ignore_merges": self.pre.is_some_and(|p| p.ignore_merges),
            "vocab": vocab,
            "merges": if spm { self.spm_merges() } else { self.vocab.merges.clone() },
        });
        if let (true, Some(unk)) = (spm, self.ids.unk.and_then(|id| self.piece(id))) {
            model["unk_token"] = json!(unk);
        }
        let tj = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": if spm { self.spm_normalizer() } else { Value::Null },
            "pre_tokenizer": self.pre.map(|p| pre_tokenizer(p.splitter)).unwrap_or(Value::Null),
            "post_processor": self.post_processor(),
            "decoder": if spm { self.spm_decoder() } else { byte_level(true) },
            "model": model,
        });
        serde_json::to_string_pretty(&tj).unwrap_or_default()
    }

    /// The text of a `tokenizer_config.json`: BOS/EOS flags, special tokens, space clean-up.
    pub fn to_tokenizer_config_json(&self, chat_template: Option<&str>) -> String {
        let mut cfg = Map::new();
        cfg.insert("add_bos_token".into(), json!(self.add_bos));
        cfg.insert("add_eos_token".into(), json!(self.add_eos));
        for (key, id) in [
            ("bos_token", self.ids.bos),
            ("eos_token", self.ids.eos),
            ("unk_token", self.ids.unk),
            ("pad_token", self.ids.pad),
        ] {
            if let Some(text) = id.and_then(|id| self.piece(id)) {
                cfg.insert(key.into(), json!(text));
            }
        }
        cfg.insert(
            "clean_up_tokenization_spaces".into(),
            json!(self.clean_spaces),
        );
        cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        if let Some(t) = chat_template {
            cfg.insert("chat_template".into(), json!(t));
        }
        serde_json::to_string_pretty(&Value::Object(cfg)).unwrap_or_default()
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (with the model's chat template,
    /// if it has one) into `dir` (created if needed).
    pub fn write_hf_dir(&self, dir: &Path, chat_template: Option<&str>) -> Result<()> {
        let io = |path: &Path, source| Error::Io {
            file: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        for (name, text) in [
            ("tokenizer.json", self.to_tokenizer_json()),
            (
                "tokenizer_config.json",
                self.to_tokenizer_config_json(chat_template),
            ),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        }
        Ok(())
    }

    /// `model.vocab` (text → id) and `added_tokens`. Control/unknown tokens are added as
    /// special, user-defined ones as not special; the vocab key of a user-defined token is
    /// its text in the model's alphabet (it is stored decoded), or a placeholder if taken.
    fn hf_vocab(&self) -> (Map<String, Value>, Vec<Value>) {
        let n = self.vocab_size() as u32;
        let mut used: HashSet<String> = HashSet::new();
        let mut keys: HashMap<u32, String> = HashMap::new();
        // Last id first, so that a repeated text keeps the id llama.cpp looks it up as.
        for id in (0..n).rev().filter(|&id| !self.is_user_defined(id)) {
            let text = self.piece(id).unwrap_or_default().to_string();
            let key = if used.contains(&text) {
                format!("[DUP{id}]")
            } else {
                text
            };
            used.insert(key.clone());
            keys.insert(id, key);
        }
        let table = bytes::byte_table();
        let mut added = Vec::new();
        for id in 0..n {
            let a = self.attr(id);
            let text = self.piece(id).unwrap_or_default();
            if self.is_user_defined(id) {
                let alphabet = match self.vocab.model {
                    ModelKind::Bpe => bytes::encode_bytes(&table, text.as_bytes()),
                    ModelKind::Spm => text.replace(' ', "\u{2581}"),
                };
                let key = [alphabet, text.to_string()]
                    .into_iter()
                    .find(|k| !used.contains(k))
                    .unwrap_or_else(|| format!("[ADDED{id}]"));
                used.insert(key.clone());
                keys.insert(id, key);
            }
            if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
                let special = a & (attr::CONTROL | attr::UNKNOWN) != 0;
                added.push(json!({
                    "id": id,
                    "content": text,
                    "single_word": false,
                    "lstrip": a & attr::LSTRIP != 0,
                    "rstrip": a & attr::RSTRIP != 0,
                    "normalized": !special,
                    "special": special,
                }));
            }
        }
        let mut vocab = Map::new();
        for id in 0..n {
            if let Some(key) = keys.remove(&id) {
                vocab.insert(key, json!(id));
            }
        }
        (vocab, added)
    }

    /// Every way to build each token from two tokens, best score first (ties by id, then
    /// by split point), as `"left right"`; splits with a space are left out.
    fn spm_merges(&self) -> Vec<String> {
        let mut found: Vec<(f32, u32, usize, String)> = Vec::new();
        for (id, text) in self.vocab.tokens.iter().enumerate() {
            for (k, _) in text.char_indices().skip(1) {
                let (a, b) = text.split_at(k);
                if !a.contains(' ')
                    && !b.contains(' ')
                    && self.token_to_id.contains_key(a)
                    && self.token_to_id.contains_key(b)
                {
                    found.push((self.scores[id], id as u32, k, format!("{a} {b}")));
                }
            }
        }
        found.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        found.into_iter().map(|f| f.3).collect()
    }

    fn spm_normalizer(&self) -> Value {
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        if self.add_space_prefix {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
        } else {
            replace
        }
    }

    fn spm_decoder(&self) -> Value {
        let mut steps = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.add_space_prefix {
            steps.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        json!({"type": "Sequence", "decoders": steps})
    }

    /// `TemplateProcessing` adding BOS/EOS when the tokenizer adds them.
    fn post_processor(&self) -> Value {
        let bos = self
            .ids
            .bos
            .filter(|_| self.add_bos)
            .and_then(|id| Some((id, self.piece(id)?)));
        let eos = self
            .ids
            .eos
            .filter(|_| self.add_eos)
            .and_then(|id| Some((id, self.piece(id)?)));
        if bos.is_none() && eos.is_none() {
            return if self.vocab.model == ModelKind::Bpe {
                byte_level(false)
            } else {
                Value::Null
            };
        }
        let tok = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
        let seq = |s: &str| json!({"Sequence": {"id": s, "type_id": 0}});
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = Map::new();
        for (id, text) in bos.iter() {
            single.push(tok(text));
            pair.push(tok(text));
            specials.insert(
                text.to_string(),
                json!({"id": text, "ids": [id], "tokens": [text]}),
            );
        }
        single.push(seq("A"));
        pair.push(seq("A"));
        pair.extend(bos.iter().map(|(_, t)| tok(t)));
        pair.push(seq("B"));
        for (id, text) in eos.iter() {
            single.push(tok(text));
            pair.push(tok(text));
            specials.insert(
                text.to_string(),
                json!({"id": text, "ids": [id], "tokens": [text]}),
            );
        }
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
    }
}

/// HF's `ByteLevel` (pre-tokenizer, post-processor or decoder).
fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

fn pre_tokenizer(s: Splitter) -> Value {
    match s {
        Splitter::Gpt2 => byte_level(true),
        Splitter::Llama3 => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]})
        }
        Splitter::DigitsGpt2 => {
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]})
        }
        Splitter::Default => {
            let mut steps: Vec<Value> = DEFAULT_PATTERNS.iter().map(|p| split(p)).collect();
            steps.push(byte_level(false));
            json!({"type": "Sequence", "pretokenizers": steps})
        }
    }
}

/// The chat template in a Hugging Face `tokenizer_config.json` (a string, or a list of
/// named templates of which `default` is taken), if any.
pub fn chat_template_from_config(json: &str) -> Option<String> {
    let v: Value = serde_json::from_str(json).ok()?;
    match &v["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .or_else(|| list.first())
            .and_then(|t| t["template"].as_str().map(String::from)),
        _ => None,
    }
}
