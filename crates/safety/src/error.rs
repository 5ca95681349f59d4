use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A data file that does not read as its format says.
    #[error("{path}: {msg}")]
    Data { path: PathBuf, msg: String },
    #[error(transparent)]
    Generate(#[from] ferrollama_generate::Error),
    #[error(transparent)]
    Eval(#[from] ferrollama_eval::Error),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn read(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn bad(path: &std::path::Path, msg: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}
