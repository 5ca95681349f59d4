//! Errors of the probes.

/// A probe error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A CoNLL-U file that cannot be read as one.
    #[error("CoNLL-U line {line}: {message}")]
    Conllu { line: usize, message: String },
    #[error(transparent)]
    Generate(#[from] ferrollama_generate::Error),
    #[error(transparent)]
    Grammar(#[from] ferrollama_grammar::Error),
    /// Input the probe cannot take (an empty sentence, a sentence too long).
    #[error("{0}")]
    Input(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
