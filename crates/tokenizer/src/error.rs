//! Errors of loading, converting and decoding with a tokenizer; each message names the
//! metadata key, JSON field or file involved.

/// A tokenizer error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the GGUF metadata failed (missing or mistyped key).
    #[error(transparent)]
    Gguf(#[from] ferrollama_gguf::Error),
    /// `tokenizer.ggml.model` names a tokenizer this crate does not implement.
    #[error("tokenizer.ggml.model = {0:?} is not supported (only \"llama\" and \"gpt2\")")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not implement.
    #[error("tokenizer.ggml.pre = {0:?} is not supported; supported: {1}")]
    UnsupportedPre(String, String),
    /// A metadata key holds a value this crate cannot use.
    #[error("metadata key `{key}` {msg}")]
    BadKey { key: String, msg: String },
    /// A metadata array is shorter than the token list.
    #[error("metadata key `{key}` has {found} entries but there are {expected} tokens")]
    ShortArray {
        key: String,
        found: usize,
        expected: usize,
    },
    /// The vocabulary holds no tokens.
    #[error("the vocabulary is empty (`tokenizer.ggml.tokens` / `model.vocab`)")]
    EmptyVocab,
    /// A token id that is not in the vocabulary was given to a decoding function.
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    /// A file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{file}: invalid JSON: {source}")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    /// A Hugging Face tokenizer file is valid JSON but not a tokenizer we can map.
    #[error("{file}: {msg}")]
    HfFormat { file: String, msg: String },
    /// A SentencePiece `tokenizer.model` is malformed (truncated, bad wire type, invalid
    /// value) or describes a model this crate does not run; `field` is the protobuf path.
    #[error("tokenizer.model: {field}: {msg}")]
    SpmModel { field: String, msg: String },
    /// The tokenizer cannot be written as a SentencePiece `tokenizer.model`.
    #[error("cannot write a SentencePiece tokenizer.model: {0}")]
    SpmExport(String),
    /// Learning a vocabulary cannot start: no text, or a size too small.
    #[error("tokenizer training: {0}")]
    Training(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
