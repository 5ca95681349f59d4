//! The Llama decoder: its configuration, weights and forward pass, with a KV cache.
//! One model definition for every user (inference, evaluation, later training).

pub mod attention;
pub mod config;
pub mod convert;
pub mod error;
pub mod export;
pub mod hf;
pub mod kv;
pub mod linear;
pub mod llama;
pub mod mlp;
pub mod pack_cache;
pub mod rope;
pub mod weights;

pub use config::Config;
pub use error::{Error, Result};
pub use llama::Llama;
pub use weights::{GgufWeights, WeightSource};
