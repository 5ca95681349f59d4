//! Grammar-constrained decoding: llama.cpp's GBNF grammars and JSON Schema compiled to one
//! grammar form, followed token by token to mask what a model may say next.
//!
//! ```text
//! GBNF text ──parse──┐
//!                     ├─> Grammar ─> Constraint (per sequence) ─> TokenMask per step
//! JSON Schema ─to GBNF┘                   ↑
//!                          Vocabulary (the model's tokens as a byte trie)
//! ```

pub mod constraint;
pub mod error;
pub mod grammar;
pub mod json;
pub mod json_schema;
mod matcher;
pub mod parse;
pub mod vocab;

pub use constraint::{matches, Constraint};
pub use error::{Error, Result};
pub use grammar::Grammar;
pub use json::Json;
pub use json_schema::{literal, schema_json_to_gbnf, schema_to_gbnf};
pub use parse::parse;
pub use vocab::{TokenMask, Vocabulary};
