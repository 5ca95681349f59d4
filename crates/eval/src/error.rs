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
    /// (The cause is in the message, not chained, so it is printed once.)
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    /// A data file that cannot be read as documents.
    #[error("{path}: {msg}")]
    Data { path: String, msg: String },
    /// A task definition that cannot be used, or a document it cannot format.
    #[error("task {task}: {msg}")]
    Task { task: String, msg: String },
    /// A continuation longer than the model's context.
    #[error("a continuation of {tokens} tokens does not fit the context of {max_len}")]
    ContinuationTooLong { tokens: usize, max_len: usize },
    /// The decode engine refused or failed a generation.
    #[error("generation: {0}")]
    Generation(String),
    /// The run was told to stop before it finished.
    #[error("interrupted")]
    Interrupted,
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
