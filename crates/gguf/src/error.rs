//! Errors of GGUF reading and writing; every message names the file and what is wrong.

/// A GGUF error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened, mapped or written.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid GGUF file.
    #[error("{file}: {msg}")]
    Invalid { file: String, msg: String },
    /// A metadata key the caller needs is absent.
    #[error("{file}: metadata key `{key}` is missing")]
    MissingKey { file: String, key: String },
    /// A metadata key holds a value of another type than the caller needs.
    #[error("{file}: metadata key `{key}` should be {expected}, found {found}")]
    WrongType {
        file: String,
        key: String,
        expected: &'static str,
        found: String,
    },
    /// A tensor the caller needs is absent.
    #[error("{file}: tensor `{name}` is missing")]
    MissingTensor { file: String, name: String },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
