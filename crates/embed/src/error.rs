//! Errors of loading an encoder and embedding text.

use std::path::Path;

/// An embedding error; each names the file or the limit involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A model file is not what a BERT-family encoder needs.
    #[error("{file}: {msg}")]
    Format { file: String, msg: String },
    #[error("the tokenizer: {0}")]
    Tokenizer(String),
    #[error("{tokens} tokens exceed the encoder's {limit} positions")]
    TooLong { tokens: usize, limit: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            file: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
