//! Choosing the next token from logits: penalties, truncation (top-k, top-p, min-p),
//! temperature, and a seeded draw. Same seed, same choices.

pub mod params;
pub mod penalties;
pub mod sampler;

pub use params::{InvalidSetting, SamplingParams};
pub use sampler::Sampler;
