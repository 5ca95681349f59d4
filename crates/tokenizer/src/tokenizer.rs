//! The tokenizer: a [`Vocab`] with llama.cpp's load-time decisions applied, and `encode`,
//! which equals `llama_tokenize` (`llama_vocab::impl::tokenize`): special tokens are cut out
//! first, then each text fragment goes through SPM or byte-level BPE, then BOS/EOS.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use ferrollama_gguf::{Gguf, GgufFile};

use crate::bpe::{self, BpeRanks, BpeVocab};
use crate::bytes;
use crate::error::{Error, Result};
use crate::pretokenize::{self, PreConfig, Splitter};
use crate::resolve::{self, attr};
use crate::special::{self, Fragment, Specials};
use crate::spm::{self, SpmVocab};
use crate::vocab::{ModelKind, SpecialIds, Vocab};
use crate::LookupMap;

/// A tokenizer that reproduces llama.cpp's for SPM (`llama`) and byte-level BPE (`gpt2`)
/// vocabularies. Immutable after loading, so it can be shared across threads; it holds no
/// caches.
#[derive(Clone)]
pub struct Tokenizer {
    pub(crate) vocab: Vocab,
    pub(crate) token_to_id: LookupMap<String, u32>,
    pub(crate) attrs: Vec<u16>,
    pub(crate) ids: SpecialIds,
    pub(crate) eog: BTreeSet<u32>,
    pub(crate) special_cache: Vec<u32>,
    pub(crate) scores: Vec<f32>,
    pub(crate) ranks: Arc<BpeRanks>,
    /// BPE only: how words are split; `None` for SPM.
    pub(crate) pre: Option<PreConfig>,
    /// Token of each byte: `<0xNN>` (SPM) or the byte's alphabet character (BPE).
    pub(crate) byte_tokens: [Option<u32>; 256],
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
    pub(crate) clean_spaces: bool,
}

impl std::fmt::Debug for Tokenizer {
    /// A summary; the vocabulary itself is too large to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.vocab.model)
            .field("pre", &self.vocab.pre)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.ids.bos)
            .field("eos", &self.ids.eos)
            .field("eot", &self.ids.eot)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        Tokenizer::from_vocab(Vocab::from_gguf(g)?)
    }

    /// Opens a GGUF file (model or vocabulary only) and loads its tokenizer.
    pub fn from_gguf_path(path: impl AsRef<Path>) -> Result<Tokenizer> {
        Tokenizer::from_gguf(&GgufFile::open(path)?.header)
    }

    /// Builds the tokenizer from a vocabulary, applying llama.cpp's defaults for absent
    /// settings: SPM adds BOS and a space prefix; BPE adds BOS only for Llama-3-style
    /// pre-tokenizers; nobody adds EOS.
    pub fn from_vocab(mut vocab: Vocab) -> Result<Tokenizer> {
        let n = vocab.tokens.len();
        if n == 0 {
            return Err(Error::EmptyVocab);
        }
        let short = |key: &str, found: usize| Error::ShortArray {
            key: key.to_string(),
            found,
            expected: n,
        };
        if let Some(s) = vocab.scores.as_ref().filter(|s| s.len() < n) {
            return Err(short("tokenizer.ggml.scores", s.len()));
        }
        if let Some(t) = vocab.token_types.as_ref().filter(|t| t.len() < n) {
            return Err(short("tokenizer.ggml.token_type", t.len()));
        }
        // As llama.cpp: an empty token text becomes "[EMPTY_i]"; a repeated text maps to its last id.
        for (i, t) in vocab.tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
        }
        let token_to_id: LookupMap<String, u32> = vocab
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let pre = match vocab.model {
            ModelKind::Bpe => Some(pretokenize::pre_config(vocab.pre.as_deref())?),
            ModelKind::Spm => None,
        };
        let resolved = resolve::resolve(&vocab, &token_to_id);
        let ranks = match vocab.model {
            ModelKind::Bpe => BpeRanks::new(&vocab.merges, &token_to_id),
            ModelKind::Spm => BpeRanks::new(&[], &token_to_id),
        };
        let byte_tokens = byte_tokens(vocab.model, &token_to_id);
        let (add_bos_default, add_space_default, clean_spaces) = match pre {
            Some(p) => (p.add_bos, false, p.clean_spaces),
            None => (true, true, false),
        };
        Ok(Tokenizer {
            add_bos: vocab.add_bos.unwrap_or(add_bos_default),
            add_eos: vocab.add_eos.unwrap_or(false),
            add_space_prefix: vocab.add_space_prefix.unwrap_or(add_space_default),
            clean_spaces,
            scores: vocab.scores.clone().unwrap_or_else(|| vec![0.0; n]),
            token_to_id,
            attrs: resolved.attrs,
            ids: resolved.ids,
            eog: resolved.eog,
            special_cache: resolved.special_cache,
            ranks: Arc::new(ranks),
            pre,
            byte_tokens,
            vocab,
        })
    }

    /// Token ids of `text`, exactly as `llama_tokenize(vocab, text, add_special, parse_special)`.
    ///
    /// `add_special` adds BOS/EOS as the vocabulary says ([`Tokenizer::add_bos`]);
    /// `parse_special` matches control tokens such as `<|im_end|>` in the text
    /// (user-defined tokens are always matched). Where llama.cpp would throw because an
    /// SPM vocabulary lacks a byte-fallback token, that byte is skipped.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let specials = Specials {
            tokens: &self.vocab.tokens,
            attrs: &self.attrs,
            order: &self.special_cache,
        };
        let fragments = special::partition(&specials, text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.ids.bos);
        }
        match self.pre {
            None => self.encode_spm(text, &fragments, &mut out),
            Some(pre) => self.encode_bpe(text, &fragments, pre, &mut out),
        }
        if add_special && self.add_eos {
            out.extend(self.ids.eos);
        }
        out
    }

    fn encode_spm(&self, text: &str, fragments: &[Fragment], out: &mut Vec<u32>) {
        let v = SpmVocab {
            token_to_id: &self.token_to_id,
            scores: &self.scores,
            byte_tokens: &self.byte_tokens,
        };
        // A fragment at the start or after a special token gets the space prefix.
        let mut prev_special = true;
        for f in fragments {
            match f {
                Fragment::Text(r) => {
                    let mut piece = String::with_capacity(r.len() + 4);
                    if self.add_space_prefix && prev_special {
                        piece.push(' ');
                    }
                    piece.push_str(&text[r.clone()]);
                    spm::tokenize(&v, &piece.replace(' ', "\u{2581}"), out);
                    prev_special = false;
                }
                Fragment::Token(id) => {
                    out.push(*id);
                    prev_special = true;
                }
            }
        }
    }

    fn encode_bpe(&self, text: &str, fragments: &[Fragment], pre: PreConfig, out: &mut Vec<u32>) {
        let v = BpeVocab {
            token_to_id: &self.token_to_id,
            ranks: &self.ranks,
            ignore_merges: pre.ignore_merges,
        };
        let table = bytes::byte_table();
        for f in fragments {
            match f {
                Fragment::Text(r) => {
                    for word in pretokenize::split(&text[r.clone()], pre.splitter) {
                        bpe::tokenize_word(&v, &bytes::encode_bytes(&table, word.as_bytes()), out);
                    }
                }
                Fragment::Token(id) => out.push(*id),
            }
        }
    }

    /// The vocabulary as the file stated it (empty token texts renamed `[EMPTY_i]`).
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab.tokens.len()
    }

    /// SPM or byte-level BPE.
    pub fn model(&self) -> ModelKind {
        self.vocab.model
    }

    /// The pre-tokenizer's splitting (BPE only).
    pub fn splitter(&self) -> Option<Splitter> {
        self.pre.map(|p| p.splitter)
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.ids.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.ids.eos
    }

    /// End-of-turn token (given, or found by llama.cpp's list of texts such as `<|im_end|>`).
    pub fn eot(&self) -> Option<u32> {
        self.ids.eot
    }

    /// Unknown token.
    pub fn unk(&self) -> Option<u32> {
        self.ids.unk
    }

    /// Padding token.
    pub fn pad(&self) -> Option<u32> {
        self.ids.pad
    }

    /// All resolved special ids (bos, eos, eot, fim, ...).
    pub fn special_ids(&self) -> &SpecialIds {
        &self.ids
    }

    /// Whether generation stops at `id`: eos, eot, eom, FIM pad/repo/sep and the tokens
    /// llama.cpp recognises by text (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The end-of-generation set, ascending.
    pub fn eog_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// Whether `encode(.., add_special = true, ..)` adds BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` adds EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether SPM prefixes text with a space (and decoding removes it again).
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Whether decoding tidies spaces before punctuation (llama.cpp's `clean_spaces`).
    pub fn clean_spaces(&self) -> bool {
        self.clean_spaces
    }

    /// The id of a token text (the last id if the text repeats).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The raw vocabulary string of a token (`▁Hello`, `ĠHello`, `<0x0A>`), `None` out of range.
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize).map(String::as_str)
    }

    /// The token standing for one byte: `<0xNN>` (SPM) or the byte's alphabet character
    /// (BPE). `None` if the vocabulary lacks it; such bytes are dropped when encoding, as
    /// llama.cpp does (SmolLM2, for one, has no token for 0xF1 or 0x04).
    pub fn byte_token(&self, b: u8) -> Option<u32> {
        self.byte_tokens[usize::from(b)]
    }

    /// Whether `id` is a control token (rendered only on request, matched only when parsing specials).
    pub fn is_control(&self, id: u32) -> bool {
        self.attr(id) & attr::CONTROL != 0
    }

    /// Whether `id` is a user-defined token (always matched and rendered as is).
    pub fn is_user_defined(&self, id: u32) -> bool {
        self.attr(id) & attr::USER_DEFINED != 0
    }

    /// Whether `id` is a byte-fallback token `<0xNN>`.
    pub fn is_byte(&self, id: u32) -> bool {
        self.attr(id) & attr::BYTE != 0
    }

    pub(crate) fn attr(&self, id: u32) -> u16 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }
}

/// The token of each byte: SPM `<0xNN>` (or the one-byte text), BPE the byte's alphabet character.
fn byte_tokens(model: ModelKind, token_to_id: &LookupMap<String, u32>) -> [Option<u32>; 256] {
    let mut out = [None; 256];
    for (b, slot) in out.iter_mut().enumerate() {
        let b = b as u8;
        *slot = match model {
            ModelKind::Spm => token_to_id
                .get(&format!("<0x{b:02X}>"))
                .or_else(|| {
                    std::str::from_utf8(&[b])
                        .ok()
                        .and_then(|s| token_to_id.get(s))
                })
                .copied(),
            ModelKind::Bpe => token_to_id
                .get(bytes::byte_to_char(b).encode_utf8(&mut [0; 4]) as &str)
                .copied(),
        };
    }
    out
}
