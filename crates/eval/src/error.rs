//! Errors of evaluating a model.

/// An evaluation error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Model(#[from] ferrollama_model::Error),
    /// A context too small to score anything.
    #[error("context {0} is too small to score (at least 4)")]
    ContextTooSmall(usize),
    /// Two models compared token by token must share their vocabulary.
    #[error("the base model has {base} tokens in its vocabulary, the model {model}")]
    VocabularyMismatch { base: usize, model: usize },
    /// A text too short for two chunks of the context.
    #[error("the text has {tokens} tokens; at least {needed} (2 x context {n_ctx}) are needed")]
    TextTooShort {
        tokens: usize,
        needed: usize,
        n_ctx: usize,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
