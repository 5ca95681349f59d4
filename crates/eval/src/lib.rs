//! Evaluating a model: perplexity over a text and a model's distance from a base model
//! (KL divergence, top-token agreement), comparable with llama.cpp's figures; and
//! benchmarks scored as lm-evaluation-harness scores them ([`harness`]).

pub mod code;
pub mod error;
pub mod harness;
pub mod kl;
pub mod perplexity;

pub use error::{Error, Result};
pub use kl::{kl_divergence, KlReport};
pub use perplexity::{perplexity, PerplexityReport};
