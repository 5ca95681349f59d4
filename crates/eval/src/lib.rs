//! Evaluating a model: perplexity over a text, comparable with llama.cpp's figures.

pub mod perplexity;

pub use perplexity::{perplexity, PerplexityReport};
