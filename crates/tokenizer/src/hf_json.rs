//! Loading a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) onto the same
//! [`Vocab`] a GGUF file gives, following llama.cpp's converter (`convert_hf_to_gguf.py`
//! `get_vocab_base`, gguf-py `SpecialVocab`). Two shapes of `"type": "BPE"` are understood:
//! byte-level (GPT-2 / Llama 3 / SmolLM, a `ByteLevel` pre-tokenizer, optionally after a
//! `Split` regex or `Digits`) and SentencePiece-style (Llama 2: `byte_fallback`, `▁` via a
//! normalizer or `Metaspace`), which becomes an SPM vocabulary scored by merge rank.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::hf_spm;
use crate::pretokenize::{DEFAULT_PATTERNS, GPT2_PATTERN, LLAMA3_PATTERN};
use crate::tokenizer::Tokenizer;
use crate::vocab::{ModelKind, SpecialIds, TokenType, Vocab};

/// HF's spelling of the GPT-2 pattern inside `ByteLevel` (with a final `|\s+`).
const HF_GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

impl Tokenizer {
    /// Loads `tokenizer.json` and, if present, `tokenizer_config.json` from a directory.
    ///
    /// Without `tokenizer.json` a SentencePiece `tokenizer.model` is loaded instead, as
    /// llama.cpp's converter reads it: with `config.json`'s `vocab_size` and special ids,
    /// `added_tokens.json`, and `tokenizer_config.json`'s `added_tokens_decoder`,
    /// `add_bos_token`, `add_eos_token` and `add_prefix_space`.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        let spm_model = dir.join("tokenizer.model");
        if !dir.join("tokenizer.json").exists() && spm_model.exists() {
            let bytes = std::fs::read(&spm_model).map_err(|source| Error::Io {
                file: spm_model.display().to_string(),
                source,
            })?;
            let vocab = hf_spm::apply(
                Vocab::from_sentencepiece_bytes(&bytes)?,
                &hf_spm::HfFiles::read(dir)?,
            )?;
            return Tokenizer::from_vocab(vocab);
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| Error::Io {
                file: path.display().to_string(),
                source,
            })
        };
        let config = match read("tokenizer_config.json") {
            Ok(s) => Some(s),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Tokenizer::from_hf_json(&read("tokenizer.json")?, config.as_deref())
    }

    /// Loads from the text of `tokenizer.json` and optionally `tokenizer_config.json`.
    pub fn from_hf_json(
        tokenizer_json: &str,
        tokenizer_config_json: Option<&str>,
    ) -> Result<Tokenizer> {
        let parse = |text: &str, file: &str| {
            serde_json::from_str::<Value>(text).map_err(|source| Error::Json {
                file: file.into(),
                source,
            })
        };
        let tj = parse(tokenizer_json, "tokenizer.json")?;
        let config = tokenizer_config_json
            .map(|c| parse(c, "tokenizer_config.json"))
            .transpose()?;
        Tokenizer::from_vocab(vocab_from_hf(&tj, config.as_ref())?)
    }
}

fn format_err(msg: impl Into<String>) -> Error {
    Error::HfFormat {
        file: "tokenizer.json".into(),
        msg: msg.into(),
    }
}

/// Maps a parsed `tokenizer.json` (and config) onto a [`Vocab`].
pub fn vocab_from_hf(tj: &Value, config: Option<&Value>) -> Result<Vocab> {
    let model = &tj["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(format_err(format!(
            "model.type is {}, only \"BPE\" is supported",
            model["type"]
        )));
    }
    let byte_level = mentions_type(&tj["pre_tokenizer"], "ByteLevel")
        || mentions_type(&tj["decoder"], "ByteLevel");
    let spm_like = !byte_level
        && (model["byte_fallback"].as_bool() == Some(true)
            || mentions_type(&tj["pre_tokenizer"], "Metaspace")
            || has_prepend(&tj["normalizer"]));
    let kind = match (byte_level, spm_like) {
        (true, _) => ModelKind::Bpe,
        (false, true) => ModelKind::Spm,
        _ => return Err(format_err(
            "model is neither byte-level (ByteLevel) nor SentencePiece-style (byte_fallback / ▁)",
        )),
    };
    let vocab_map = model["vocab"]
        .as_object()
        .ok_or_else(|| format_err("model.vocab is not an object"))?;
    let added = tj["added_tokens"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut entries: Vec<(u32, &str)> = Vec::with_capacity(vocab_map.len());
    for (text, id) in vocab_map {
        entries.push((json_id(id, "model.vocab")?, text));
    }
    let added_ids = added
        .iter()
        .map(|a| json_id(&a["id"], "added_tokens[].id"))
        .collect::<Result<Vec<u32>>>()?;
    let n = entries
        .iter()
        .map(|e| e.0)
        .chain(added_ids.iter().copied())
        .map(|id| id as usize + 1)
        .max()
        .unwrap_or(0);
    // Ids may leave gaps (filled with "[PAD{i}]" below), but not absurd ones.
    if n > 2 * (entries.len() + added.len()) + 65_536 {
        return Err(format_err(format!(
            "token id {} is far beyond the {} tokens given",
            n - 1,
            entries.len() + added.len()
        )));
    }
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![TokenType::Normal; n];
    for &(id, text) in &entries {
        tokens[id as usize] = Some(text.to_string());
        if kind == ModelKind::Spm && is_byte_token(text) {
            types[id as usize] = TokenType::Byte;
        }
    }
    let unk_text = model["unk_token"].as_str();
    for a in added {
        let id = json_id(&a["id"], "added_tokens[].id")? as usize;
        let content = a["content"]
            .as_str()
            .ok_or_else(|| format_err("added_tokens[].content is not a string"))?;
        let special = a["special"].as_bool().unwrap_or(false);
        if special || looks_special(content) {
            tokens[id] = Some(content.to_string());
            types[id] = if kind == ModelKind::Spm && Some(content) == unk_text {
                TokenType::Unknown
            } else {
                TokenType::Control
            };
        } else {
            // llama.cpp stores user-defined tokens pre-normalized, with real spaces.
            tokens[id] = Some(content.replace('\u{2581}', " "));
            types[id] = TokenType::UserDefined;
        }
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = TokenType::Unused;
                format!("[PAD{i}]")
            })
        })
        .collect();
    if let (ModelKind::Spm, Some(unk)) = (kind, unk_text) {
        if let Some(i) = tokens.iter().position(|t| t == unk) {
            types[i] = TokenType::Unknown;
        }
    }
    let merges = read_merges(&model["merges"])?;
    let token_to_id: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let lookup = |t: &Value| special_text(t).and_then(|s| token_to_id.get(s).copied());
    let cfg = config.unwrap_or(&Value::Null);
    let template = template_specials(&tj["post_processor"]);
    let special = SpecialIds {
        bos: lookup(&cfg["bos_token"])
            .or_else(|| template.0.and_then(|s| token_to_id.get(s).copied())),
        eos: lookup(&cfg["eos_token"])
            .or_else(|| template.1.and_then(|s| token_to_id.get(s).copied())),
        unk: lookup(&cfg["unk_token"])
            .or_else(|| unk_text.and_then(|s| token_to_id.get(s).copied())),
        pad: lookup(&cfg["pad_token"]),
        ..SpecialIds::default()
    };
    let (pre, scores) = match kind {
        ModelKind::Bpe => (
            Some(detect_pre(&tj["pre_tokenizer"], cfg)?.to_string()),
            None,
        ),
        ModelKind::Spm => (
            Some("default".to_string()),
            Some(scores_from_merges(&tokens, &merges, &token_to_id)),
        ),
    };
    let add_space_prefix = match kind {
        ModelKind::Spm => {
            Some(has_prepend(&tj["normalizer"]) || metaspace_prepends(&tj["pre_tokenizer"]))
        }
        ModelKind::Bpe => None,
    };
    let flag =
        |key: &str, from_template: bool| cfg[key].as_bool().or(from_template.then_some(true));
    Ok(Vocab {
        model: kind,
        pre,
        scores,
        token_types: Some(types),
        merges: if kind == ModelKind::Bpe {
            merges
        } else {
            Vec::new()
        },
        special,
        add_bos: flag("add_bos_token", template.0.is_some()),
        add_eos: flag("add_eos_token", template.1.is_some()),
        add_space_prefix,
        name: None,
        tokens,
    })
}

fn json_id(v: &Value, what: &str) -> Result<u32> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| format_err(format!("{what} holds a non-integer id {v}")))
}

/// Whether a JSON tree has an object with `"type": ty` (inside `Sequence`s and the like).
fn mentions_type(v: &Value, ty: &str) -> bool {
    match v {
        Value::Object(m) => {
            m.get("type").and_then(Value::as_str) == Some(ty)
                || m.values().any(|x| mentions_type(x, ty))
        }
        Value::Array(a) => a.iter().any(|x| mentions_type(x, ty)),
        _ => false,
    }
}

/// A `Prepend` normalizer adding `▁` (Llama 2's way of adding the space prefix).
fn has_prepend(v: &Value) -> bool {
    match v {
        Value::Object(m) => {
            (m.get("type").and_then(Value::as_str) == Some("Prepend")
                && m.get("prepend").and_then(Value::as_str) == Some("\u{2581}"))
                || m.values().any(has_prepend)
        }
        Value::Array(a) => a.iter().any(has_prepend),
        _ => false,
    }
}

/// A `Metaspace` pre-tokenizer that adds the space prefix.
fn metaspace_prepends(v: &Value) -> bool {
    match v {
        Value::Object(m) if m.get("type").and_then(Value::as_str) == Some("Metaspace") => {
            match m.get("prepend_scheme").and_then(Value::as_str) {
                Some(scheme) => scheme != "never",
                None => m
                    .get("add_prefix_space")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            }
        }
        Value::Object(m) => m.values().any(metaspace_prepends),
        Value::Array(a) => a.iter().any(metaspace_prepends),
        _ => false,
    }
}

fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

/// llama.cpp's converter `does_token_look_special`.
pub(crate) fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// A special token as the config writes it: a string or `{"content": ..}`.
fn special_text(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v["content"].as_str())
}

/// Merges as `"left right"` lines, from either the string or the `[left, right]` form.
fn read_merges(v: &Value) -> Result<Vec<String>> {
    let Some(arr) = v.as_array() else {
        return Ok(Vec::new());
    };
    arr.iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                _ => Err(format_err(
                    "model.merges holds a pair that is not two strings",
                )),
            },
            _ => Err(format_err(
                "model.merges holds an entry that is neither \"a b\" nor [a, b]",
            )),
        })
        .collect()
}

/// The special tokens a `TemplateProcessing` post-processor puts before and after a single
/// sequence: `(bos, eos)`.
fn template_specials(v: &Value) -> (Option<&str>, Option<&str>) {
    if v["type"].as_str() == Some("Sequence") {
        let procs = v["processors"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        return procs
            .iter()
            .map(template_specials)
            .find(|t| t.0.is_some() || t.1.is_some())
            .unwrap_or((None, None));
    }
    if v["type"].as_str() != Some("TemplateProcessing") {
        return (None, None);
    }
    let single = v["single"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    (special_in(single.first()), special_in(single.last()))
}

fn special_in(item: Option<&Value>) -> Option<&str> {
    item.and_then(|i| i["SpecialToken"]["id"].as_str())
}

/// The llama.cpp pre-tokenizer name for a byte-level `pre_tokenizer`.
fn detect_pre(pre: &Value, cfg: &Value) -> Result<&'static str> {
    let mut steps = Vec::new();
    collect_steps(pre, &mut steps);
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let clean = cfg["clean_up_tokenization_spaces"]
        .as_bool()
        .unwrap_or(true);
    match steps.as_slice() {
        [GPT2_PATTERN] => Ok("gpt-2"),
        [LLAMA3_PATTERN] => Ok("llama-bpe"),
        ["digits", GPT2_PATTERN] if clean => Ok("starcoder"),
        ["digits", GPT2_PATTERN] => Ok("smollm"),
        s if s == DEFAULT_PATTERNS => Ok("default"),
        _ => Err(format_err(format!(
            "pre_tokenizer splits by {steps:?}, which matches no supported llama.cpp pre-tokenizer"
        ))),
    }
}

/// The splitting steps of a pre-tokenizer: regex patterns (HF's GPT-2 spelling normalized
/// to llama.cpp's) and `"digits"` for `Digits { individual_digits: true }`.
fn collect_steps(v: &Value, out: &mut Vec<String>) {
    match v["type"].as_str() {
        Some("Sequence") => {
            for p in v["pretokenizers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                collect_steps(p, out);
            }
        }
        Some("Split") => {
            let p = v["pattern"]["Regex"]
                .as_str()
                .or_else(|| v["pattern"]["String"].as_str())
                .unwrap_or("");
            out.push(if p == HF_GPT2_PATTERN {
                GPT2_PATTERN.to_string()
            } else {
                p.to_string()
            });
        }
        Some("ByteLevel") if v["use_regex"].as_bool().unwrap_or(true) => {
            out.push(GPT2_PATTERN.to_string())
        }
        Some("Digits") if v["individual_digits"].as_bool() == Some(true) => {
            out.push("digits".to_string())
        }
        Some("Digits") => out.push(r"\p{N}+".to_string()),
        _ => {}
    }
}

/// SPM scores that make llama.cpp's score-ordered merging follow the merge ranks: a token's
/// score is minus the rank of the first merge producing it. Tokens no merge produces get a
/// score below all of those (single characters never need one).
fn scores_from_merges(
    tokens: &[String],
    merges: &[String],
    token_to_id: &HashMap<&str, u32>,
) -> Vec<f32> {
    let mut scores = vec![f32::NAN; tokens.len()];
    for (rank, line) in merges.iter().enumerate() {
        let Some(pos) = line.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
            continue;
        };
        let merged = format!("{}{}", &line[..pos], &line[pos + 1..]);
        if let Some(&id) = token_to_id.get(merged.as_str()) {
            let s = &mut scores[id as usize];
            if s.is_nan() {
                *s = -(rank as f32);
            }
        }
    }
    scores
        .iter()
        .map(|&s| if s.is_nan() { -1e9 } else { s })
        .collect()
}
