//! Errors of fetching the default model and vocab files.

/// A fetch error; messages say what to install or check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A helper program could not be run or failed.
    #[error("{0}")]
    Fetch(String),
    /// A downloaded archive is not what was expected.
    #[error("{path}: {msg}")]
    Archive { path: String, msg: String },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
