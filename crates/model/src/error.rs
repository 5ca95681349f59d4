//! Errors of loading and running a model.

/// A model error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] ferrollama_gguf::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The file holds a model this crate cannot run, or its hyper-parameters disagree.
    #[error("{file}: {msg}")]
    Unsupported { file: String, msg: String },
    /// A file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A tensor's shape is not what the configuration calls for.
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        file: String,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// A set of weights lacks a tensor the configuration calls for.
    #[error("the weights lack tensor `{name}`")]
    MissingTensor { name: String },
    /// A set of weights holds a tensor the configuration has no place for.
    #[error("the weights hold tensor `{name}`, which this model shape has no place for")]
    UnexpectedTensor { name: String },
    /// A model shape that cannot be built, said with what is wrong.
    #[error("invalid model shape: {0}")]
    Config(String),
    /// More tokens than the model (or its cache) has positions for.
    #[error("{tokens} tokens exceed the context of {limit}")]
    ContextExceeded { tokens: usize, limit: usize },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfVocabulary { id: u32, vocab: usize },
    /// A request the model cannot serve (too many tokens, an id outside the vocabulary).
    #[error("{0}")]
    Input(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
