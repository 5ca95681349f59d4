//! The tokenizer as stored in a file: tokens, scores, types, merges and the `tokenizer.ggml.*`
//! settings, before llama.cpp's load-time defaults are applied (those live in `resolve.rs`).
//! GGUF and Hugging Face files both map onto this one type. Keys follow llama.cpp
//! `llama-arch.cpp` (including its spelling `seperator_token_id`).

use ferrollama_gguf::{Gguf, Value, ValueType};

use crate::error::{Error, Result};

/// Which tokenization algorithm a vocabulary uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// SentencePiece BPE (`tokenizer.ggml.model = "llama"`): merges by token score, `▁` for
    /// spaces, byte fallback through `<0xNN>` tokens.
    Spm,
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): regex pre-tokenizer, merges by rank.
    Bpe,
}

impl ModelKind {
    /// The `tokenizer.ggml.model` value.
    pub fn gguf_name(self) -> &'static str {
        match self {
            ModelKind::Spm => "llama",
            ModelKind::Bpe => "gpt2",
        }
    }
}

/// llama.cpp's `llama_token_type`, the values of `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum TokenType {
    /// Type 0, and any value llama.cpp does not know.
    Undefined = 0,
    /// Ordinary text.
    Normal = 1,
    /// The unknown token (`<unk>`).
    Unknown = 2,
    /// A control token such as `<s>` or `<|im_end|>`: only matched and rendered on request.
    Control = 3,
    /// An added token that is always matched in text and always rendered.
    UserDefined = 4,
    /// A placeholder.
    Unused = 5,
    /// A byte-fallback token `<0xNN>`.
    Byte = 6,
}

impl TokenType {
    /// The type for a stored value; unknown values become `Undefined` as in llama.cpp.
    pub fn from_i64(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// Special token ids given explicitly by the file; `None` where the key is absent.
/// An id out of the vocabulary is kept here and ignored when the tokenizer is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialIds {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// End of turn (`<|im_end|>`, `<|eot_id|>`).
    pub eot: Option<u32>,
    /// End of message (`<|eom_id|>`).
    pub eom: Option<u32>,
    /// Unknown.
    pub unk: Option<u32>,
    /// Separator.
    pub sep: Option<u32>,
    /// Padding.
    pub pad: Option<u32>,
    /// Mask.
    pub mask: Option<u32>,
    /// Fill-in-the-middle prefix.
    pub fim_pre: Option<u32>,
    /// Fill-in-the-middle suffix.
    pub fim_suf: Option<u32>,
    /// Fill-in-the-middle middle.
    pub fim_mid: Option<u32>,
    /// Fill-in-the-middle padding.
    pub fim_pad: Option<u32>,
    /// Fill-in-the-middle repository name.
    pub fim_rep: Option<u32>,
    /// Fill-in-the-middle file separator.
    pub fim_sep: Option<u32>,
}

impl SpecialIds {
    /// `(gguf key suffix, field)` pairs in llama.cpp's order: the deprecated
    /// `prefix/suffix/middle` keys come last and override the `fim_*` ones.
    fn fields_mut(&mut self) -> [(&'static str, &mut Option<u32>); 14] {
        [
            ("bos_token_id", &mut self.bos),
            ("eos_token_id", &mut self.eos),
            ("eot_token_id", &mut self.eot),
            ("eom_token_id", &mut self.eom),
            ("unknown_token_id", &mut self.unk),
            ("seperator_token_id", &mut self.sep),
            ("padding_token_id", &mut self.pad),
            ("mask_token_id", &mut self.mask),
            ("fim_pre_token_id", &mut self.fim_pre),
            ("fim_suf_token_id", &mut self.fim_suf),
            ("fim_mid_token_id", &mut self.fim_mid),
            ("fim_pad_token_id", &mut self.fim_pad),
            ("fim_rep_token_id", &mut self.fim_rep),
            ("fim_sep_token_id", &mut self.fim_sep),
        ]
    }
}

/// A vocabulary and its settings, as a file states them.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    /// `tokenizer.ggml.model`.
    pub model: ModelKind,
    /// `tokenizer.ggml.pre`; `None` means llama.cpp's "default".
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token texts by id, in the model's alphabet (`▁Hello`, `ĠHello`).
    pub tokens: Vec<String>,
    /// One per token; `None` gives every token score 0.
    pub scores: Option<Vec<f32>>,
    /// One per token; `None` makes every token `Normal`.
    pub token_types: Option<Vec<TokenType>>,
    /// `"left right"` strings, best (lowest rank) first. Empty for SPM.
    pub merges: Vec<String>,
    /// The `tokenizer.ggml.*_token_id` keys.
    pub special: SpecialIds,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `general.name`; llama.cpp gives Phi-3's special tokens `rstrip` by this name.
    pub name: Option<String>,
}

const PREFIX: &str = "tokenizer.ggml.";

impl Vocab {
    /// Reads the `tokenizer.ggml.*` keys (and `general.name`) of a GGUF header.
    pub fn from_gguf(g: &Gguf) -> Result<Vocab> {
        let model = match g.get_str("tokenizer.ggml.model")? {
            "llama" => ModelKind::Spm,
            "gpt2" => ModelKind::Bpe,
            other => return Err(Error::UnsupportedModel(other.to_string())),
        };
        let pre = optional(g, "tokenizer.ggml.pre", |k| {
            g.get_str(k).map(str::to_string)
        })?;
        let tokens: Vec<String> = g
            .get_str_array("tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_string)
            .collect();
        let n = tokens.len();
        let scores = optional(g, "tokenizer.ggml.scores", |k| g.get_f32_array(k))?;
        let types = optional(g, "tokenizer.ggml.token_type", |k| g.get_i64_array(k))?;
        let token_types = types.map(|t| t.into_iter().map(TokenType::from_i64).collect::<Vec<_>>());
        check_len("tokenizer.ggml.scores", scores.as_ref().map(Vec::len), n)?;
        check_len(
            "tokenizer.ggml.token_type",
            token_types.as_ref().map(Vec::len),
            n,
        )?;
        let merges = match model {
            ModelKind::Bpe => g
                .get_str_array("tokenizer.ggml.merges")?
                .into_iter()
                .map(str::to_string)
                .collect(),
            ModelKind::Spm => Vec::new(),
        };
        let mut special = SpecialIds::default();
        for (suffix, slot) in special.fields_mut() {
            *slot = read_id(g, &format!("{PREFIX}{suffix}"))?;
        }
        for (suffix, slot) in [
            ("prefix_token_id", &mut special.fim_pre),
            ("suffix_token_id", &mut special.fim_suf),
            ("middle_token_id", &mut special.fim_mid),
        ] {
            if let Some(id) = read_id(g, &format!("{PREFIX}{suffix}"))? {
                *slot = Some(id);
            }
        }
        let flag = |k: &str| optional(g, k, |k| g.get_bool(k));
        Ok(Vocab {
            model,
            pre,
            tokens,
            scores,
            token_types,
            merges,
            special,
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?,
            name: optional(g, "general.name", |k| g.get_str(k).map(str::to_string))?,
        })
    }

    /// The `tokenizer.ggml.*` metadata entries that [`Vocab::from_gguf`] reads back to this
    /// vocabulary (for writing a GGUF with `ferrollama_gguf::GgufWriter`). `general.name`
    /// is not included.
    pub fn to_gguf_metadata(&self) -> Vec<(String, Value)> {
        let strings = |v: &[String]| {
            Value::Array(
                ValueType::String,
                v.iter().map(|s| Value::String(s.clone())).collect(),
            )
        };
        let mut out = vec![(
            format!("{PREFIX}model"),
            Value::String(self.model.gguf_name().to_string()),
        )];
        if let Some(pre) = &self.pre {
            out.push((format!("{PREFIX}pre"), Value::String(pre.clone())));
        }
        out.push((format!("{PREFIX}tokens"), strings(&self.tokens)));
        if let Some(scores) = &self.scores {
            out.push((
                format!("{PREFIX}scores"),
                Value::Array(
                    ValueType::F32,
                    scores.iter().map(|&s| Value::F32(s)).collect(),
                ),
            ));
        }
        if let Some(types) = &self.token_types {
            out.push((
                format!("{PREFIX}token_type"),
                Value::Array(
                    ValueType::I32,
                    types.iter().map(|&t| Value::I32(t as i32)).collect(),
                ),
            ));
        }
        if self.model == ModelKind::Bpe {
            out.push((format!("{PREFIX}merges"), strings(&self.merges)));
        }
        let mut special = self.special.clone();
        for (suffix, slot) in special.fields_mut() {
            if let Some(id) = *slot {
                out.push((format!("{PREFIX}{suffix}"), Value::U32(id)));
            }
        }
        for (key, flag) in [
            ("add_bos_token", self.add_bos),
            ("add_eos_token", self.add_eos),
            ("add_space_prefix", self.add_space_prefix),
        ] {
            if let Some(b) = flag {
                out.push((format!("{PREFIX}{key}"), Value::Bool(b)));
            }
        }
        out
    }
}

/// Reads a key only if present.
fn optional<T>(
    g: &Gguf,
    key: &str,
    read: impl FnOnce(&str) -> ferrollama_gguf::Result<T>,
) -> Result<Option<T>> {
    match g.get(key) {
        Some(_) => Ok(Some(read(key)?)),
        None => Ok(None),
    }
}

/// A token id key; values that do not fit `u32` become `u32::MAX` (out of any vocabulary).
fn read_id(g: &Gguf, key: &str) -> Result<Option<u32>> {
    let Some(v) = g.get(key) else { return Ok(None) };
    match v.as_int() {
        Some(i) => Ok(Some(u32::try_from(i).unwrap_or(u32::MAX))),
        None => Err(Error::BadKey {
            key: key.to_string(),
            msg: format!("should be an integer token id, found {}", v.describe()),
        }),
    }
}

fn check_len(key: &str, found: Option<usize>, expected: usize) -> Result<()> {
    match found {
        Some(found) if found < expected => Err(Error::ShortArray {
            key: key.to_string(),
            found,
            expected,
        }),
        _ => Ok(()),
    }
}
