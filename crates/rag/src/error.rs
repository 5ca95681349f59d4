//! Errors of indexing and retrieval.

/// A retrieval error; each names the store, file or limit involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store {store}: {msg}")]
    Store { store: String, msg: String },
    /// The store was built with another encoder than the one asked to search it.
    #[error("the store {store} holds embeddings of {stored} ({stored_dim} dimensions); the encoder given is {given} ({given_dim}): index again, or search with the store's encoder")]
    ModelMismatch {
        store: String,
        stored: String,
        stored_dim: usize,
        given: String,
        given_dim: usize,
    },
    #[error("bad argument: {0}")]
    Argument(String),
    #[error(transparent)]
    Embed(#[from] ferrollama_embed::Error),
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            file: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
