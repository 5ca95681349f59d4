//! Errors of reading a grammar or a schema, and of following one.

/// A grammar error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The GBNF text is malformed: where and why.
    #[error("grammar, line {line} column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed text that is not a usable grammar (an undefined rule, left recursion,
    /// no `root`, too large).
    #[error("grammar: {0}")]
    Invalid(String),
    /// A JSON Schema that cannot be turned into a grammar.
    #[error("JSON schema at {path}: {message}")]
    Schema { path: String, message: String },
    /// Following the grammar would need more parse stacks than allowed: the grammar is
    /// too ambiguous for the text so far.
    #[error("grammar: more than {0} simultaneous parses; the grammar is too ambiguous")]
    TooAmbiguous(usize),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
