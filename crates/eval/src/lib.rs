//! Evaluating a model: perplexity over a text, comparable with llama.cpp's figures.

pub mod error;
pub mod perplexity;

pub use error::{Error, Result};
pub use perplexity::{perplexity, PerplexityReport};
