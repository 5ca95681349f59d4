//! Errors of loading and running a model.

/// A model error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] ferrollama_gguf::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The file holds a model this crate cannot run, or its hyper-parameters disagree.
    #[error("{file}: {msg}")]
    Unsupported { file: String, msg: String },
    /// A file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A tensor's shape is not what the configuration calls for.
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        file: String,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// A set of weights lacks a tensor the configuration calls for.
    #[error("the weights lack tensor `{name}`")]
    MissingTensor { name: String },
    /// A set of weights holds a tensor the configuration has no place for.
    #[error("the weights hold tensor `{name}`, which this model shape has no place for")]
    UnexpectedTensor { name: String },
    /// A model shape that cannot be built, said with what is wrong.
    #[error("invalid model shape: {0}")]
    Config(String),
    /// More tokens than the model (or its cache) has positions for.
    #[error("{tokens} tokens exceed the context of {limit}")]
    ContextExceeded { tokens: usize, limit: usize },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfVocabulary { id: u32, vocab: usize },
    /// A context size the model cannot run with.
    #[error("a context of {requested} tokens is outside what the model was trained for (1 to {trained})")]
    ContextSize { requested: usize, trained: usize },
    /// A forward pass with nothing to run.
    #[error("no tokens to run")]
    NoTokens,
    /// A training batch whose packing (sample starts) does not fit its rows.
    #[error("packed batch: {0}")]
    Packing(String),
    /// A loss over a selection of tokens that selects none, or one outside the batch.
    #[error("loss: {0}")]
    Scoring(String),
    /// A batched forward pass whose sequences and caches do not pair up.
    #[error("{sequences} sequences for {caches} caches")]
    BatchMismatch { sequences: usize, caches: usize },
    /// A sequence selecting an adapter that was never loaded.
    #[error("adapter {id} is not loaded ({loaded} are)")]
    UnknownAdapter { id: usize, loaded: usize },
    /// A KV cache used in a way it cannot serve (copying past what it holds, ...).
    #[error("KV cache: {0}")]
    Cache(String),
    /// A tensor name outside the Llama layout.
    #[error("`{0}` is not a Llama tensor name")]
    UnknownTensor(String),
    /// A tensor's bytes that do not fit its shape and type.
    #[error("tensor `{name}`: {msg}")]
    TensorData { name: String, msg: String },
    /// A weight type that cannot be read or written here.
    #[error("cannot {action} weights of type {ty}")]
    UnsupportedType { action: &'static str, ty: String },
    /// A weight matrix the kernels cannot take.
    #[error(transparent)]
    Kernel(#[from] ferrollama_kernels::KernelError),
    /// Something that cannot happen did (a bug): said rather than panicking.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
