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
    /// Generation or a chat format failed (sampling for rejection sampling or PPO, a
    /// template that does not render).
    #[error(transparent)]
    Generate(#[from] ferrollama_generate::Error),
    /// A file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Settings that cannot run, said with what to change.
    #[error("{0}")]
    Config(String),
    /// The model trained from does not fit the run (its vocabulary, its context).
    #[error("{0}")]
    ModelMismatch(String),
    /// A run that cannot be resumed as asked (other settings, a damaged optimizer state).
    #[error("{0}")]
    Resume(String),
    /// The loss stopped being a number.
    #[error("loss became {loss} at step {step}; lower --lr or raise --warmup (the last checkpoint is intact)")]
    Diverged { step: u64, loss: f64 },
    /// Too few tokens for one training sequence.
    #[error("{file}: {tokens} tokens do not fill one sequence of {seq_len}; use more data or a shorter --seq-len")]
    TooLittleData {
        file: String,
        tokens: usize,
        seq_len: usize,
    },
    /// The process group could not be formed.
    #[error("{0}")]
    Collective(String),
    /// Something that cannot happen did (a bug): said rather than panicking.
    #[error("internal error: {0}")]
    Internal(String),
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
