//! Errors of preparing data for and running a training job.

/// A training error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] ferrollama_model::Error),
    #[error(transparent)]
    Tokenizer(#[from] ferrollama_tokenizer::Error),
    /// A file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A configuration that cannot run, said with what to change.
    #[error("{0}")]
    Config(String),
    /// A data file, shard or checkpoint whose content is not what it should be.
    #[error("{file}: {msg}")]
    Invalid { file: String, msg: String },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// An I/O error naming the file it happened on.
pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Error {
    Error::Io {
        file: path.display().to_string(),
        source,
    }
}
