//! The Llama decoder: its configuration, weights and forward pass, with a KV cache.
//! One model definition for every user: its layout (names and shapes of the weights), the
//! inference path (`Llama`, quantized weights and a KV cache) and the training path
//! (`TrainableLlama`, f32 variables and fused ops with their backward passes).

pub mod adapters;
pub mod attention;
pub mod config;
pub mod convert;
pub mod decode;
pub mod error;
pub mod export;
pub mod hf;
pub mod huge_pages;
pub mod kv;
pub mod layout;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod mlp;
pub mod nf4;
pub mod ops;
pub mod pack_cache;
pub mod packing;
pub mod rope;
pub mod trainable;
pub mod weights;

pub use config::Config;
pub use error::{Error, Result};
pub use llama::Llama;
pub use packing::Packing;
pub use trainable::TrainableLlama;
pub use weights::{GgufWeights, WeightSource};
