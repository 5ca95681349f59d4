//! Tokenizers that reproduce llama.cpp's exactly: SentencePiece BPE (`llama`) and byte-level
//! BPE (`gpt2`) vocabularies loaded from GGUF metadata, a Hugging Face `tokenizer.json` or a
//! SentencePiece `tokenizer.model`.
//! Reference: llama.cpp `src/llama-vocab.cpp` and `src/unicode.cpp`.

pub mod bytes;
pub mod decode;
pub mod error;
pub mod files;
pub mod hf_json;
pub mod pretokenize;
pub mod tokenizer;
pub mod train;
pub mod unicode;
pub mod vocab;

mod bpe;
mod hf_export;
mod hf_spm;
mod proto;
mod resolve;
mod special;
mod spm;
mod spm_model;
mod unicode_table;

/// The maps that encoding looks pieces and merges up in, on every word: foldhash (seeded
/// at random per process, so a vocabulary cannot be built to collide) instead of std's
/// SipHash, which cost about a fifth of encoding short texts.
pub(crate) type LookupMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use decode::clean_spaces;
pub use error::{Error, Result};
pub use files::TokenizerFiles;
pub use hf_export::chat_template_from_config;
pub use pretokenize::Splitter;
pub use tokenizer::Tokenizer;
pub use vocab::{ModelKind, SpecialIds, TokenType, Vocab};
