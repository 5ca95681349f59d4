//! Arguments shared by several subcommands.

use std::path::PathBuf;

use ferrollama_sampling::SamplingParams;

/// Which model to load.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file; the default model (SmolLM2-135M-Instruct Q4_1) is fetched on first use.
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long)]
    pub ctx: Option<usize>,
    /// Repack a GGUF file's weights at every load instead of mapping the packed copy that
    /// the first load writes to the cache (`$FERROLLAMA_HOME/packed`, or
    /// `~/.cache/ferrollama/models/packed`).
    #[arg(long)]
    pub no_pack_cache: bool,
}

/// Sampling settings; the defaults are llama.cpp's.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// 1.0 = off.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// 0.0 = off.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Hugging Face repetition penalty; 1.0 = off.
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the penalties look back over (-1 = all).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    pub repeat_last_n: i64,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Same seed, same text.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampler settings these arguments describe.
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        }
    }
}
