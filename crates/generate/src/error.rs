//! Errors of generation and chat formatting.

/// A generation error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Model(#[from] ferrollama_model::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Tokenizer(#[from] ferrollama_tokenizer::Error),
    /// A sampling setting outside its range.
    #[error(transparent)]
    Sampling(#[from] ferrollama_sampling::InvalidSetting),
    /// A grammar or JSON Schema that cannot be used, or a grammar the model cannot follow.
    #[error(transparent)]
    Grammar(#[from] ferrollama_grammar::Error),
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A model could not be opened.
    #[error("loading {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<Error>,
    },
    /// The request cannot be served as given.
    #[error("{0}")]
    Input(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
