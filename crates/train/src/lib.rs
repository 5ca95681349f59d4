//! Pretraining a Llama model with the Llama 2 recipe (Touvron et al. 2023, 2.2): AdamW
//! (β1 0.9, β2 0.95, eps 1e-5, weight decay 0.1), linear warm-up then cosine decay to 10 %
//! of the peak, clipping at global norm 1.0, a global batch counted in tokens. Data is
//! tokenized once into memory-mapped shards; runs checkpoint atomically and resume bit
//! for bit; the result exports to GGUF and a Hugging Face directory.

pub mod advantage;
pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod data;
pub mod error;
pub mod export;
pub mod finetune;
pub mod optim;
pub mod plot;
pub mod policy;
pub mod ppo;
pub mod preference;
pub mod prefs;
pub mod rejection;
pub mod reward;
pub mod sample;
pub mod schedule;
pub mod sft;
pub mod sft_batches;
pub mod synth;
pub mod tokenizer_file;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Error, Result};
pub use trainer::{Event, StepMetrics, Summary, Trainer};
