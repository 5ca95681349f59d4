//! A training run's settings, read from TOML (`ferrollama train --config run.toml`) and
//! overridden by flags. Every hyper-parameter lives here, never as a literal in the loop.

use std::path::{Path, PathBuf};

use ferrollama_model::Config;

use crate::data::DataConfig;
use crate::error::{Error, Result};
use crate::optim::AdamWConfig;

/// Everything that shapes a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A model shape from [`Config::PRESETS`] (`260k`, `15m`, `42m`, `110m`, `llama2-7b`, ...).
    pub preset: String,
    /// The tokenizer: a GGUF file, a Hugging Face directory, or a `tokenizer.json`.
    pub tokenizer: Option<PathBuf>,
    /// Start from this checkpoint's weights (a GGUF file of any type the project reads,
    /// dequantized to f32, or a Hugging Face directory) instead of random ones; the model's
    /// shape is then the checkpoint's and `preset` is not used. Skipped when absent, so
    /// the settings digest of runs without it is what it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    pub data: DataConfig,
    pub optim: AdamWConfig,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps (Llama 2: 2000).
    pub warmup: u64,
    /// The cosine schedule ends at this fraction of the peak (Llama 2: 10 %).
    pub min_lr_ratio: f64,
    /// Optimizer steps in the whole run.
    pub steps: u64,
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// Tokens per optimizer step (the global batch); a multiple of seq_len * micro_batch,
    /// reached by gradient accumulation.
    pub batch_tokens: usize,
    /// Sequences per forward pass.
    pub micro_batch: usize,
    /// Gradient clipping by global norm (Llama 2: 1.0); 0 = off.
    pub grad_clip: f64,
    /// Validation every this many steps (and at the end); 0 = only at the end.
    pub eval_every: u64,
    /// Validation sequences per evaluation.
    pub eval_sequences: usize,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk.
    pub keep_checkpoints: usize,
    /// Seed of the initial weights and the data order.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            preset: "260k".into(),
            tokenizer: None,
            init: None,
            data: DataConfig::default(),
            optim: AdamWConfig::default(),
            lr: 5e-4,
            warmup: 2000,
            min_lr_ratio: 0.1,
            steps: 1000,
            seq_len: 256,
            batch_tokens: 4096,
            micro_batch: 16,
            grad_clip: 1.0,
            eval_every: 100,
            eval_sequences: 16,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            seed: 1337,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file; unknown keys are an error so a typo does not pass silently.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        read_toml(path)
    }

    /// Micro-batches accumulated per optimizer step.
    pub fn accumulation(&self) -> Result<usize> {
        let per_micro = self.seq_len * self.micro_batch;
        if per_micro == 0 || self.batch_tokens == 0 || !self.batch_tokens.is_multiple_of(per_micro)
        {
            return Err(Error::Config(format!(
                "batch_tokens {} must be a positive multiple of seq_len x micro_batch = {} x {} = {per_micro}",
                self.batch_tokens, self.seq_len, self.micro_batch
            )));
        }
        Ok(self.batch_tokens / per_micro)
    }

    /// The model shape: the `init` checkpoint's (whose vocabulary must hold the
    /// tokenizer's and whose context `seq_len`), or the preset with the tokenizer's
    /// vocabulary and a context of at least `seq_len`.
    pub fn model_config(&self, vocab_size: usize) -> Result<Config> {
        if let Some(path) = &self.init {
            let cfg = ferrollama_model::weights::with_checkpoint(path, |_, cfg| Ok(cfg))?;
            if vocab_size > cfg.vocab_size {
                return Err(Error::ModelMismatch(format!(
                    "the tokenizer has {vocab_size} tokens but the model {} only {}",
                    path.display(),
                    cfg.vocab_size
                )));
            }
            if cfg.rope_freq_factors.is_some() && cfg.rope_llama3.is_none() {
                return Err(Error::ModelMismatch(format!(
                    "{}: {}",
                    path.display(),
                    crate::export::LLAMA3_EXPORT
                )));
            }
            if self.seq_len > cfg.max_position_embeddings {
                return Err(Error::ModelMismatch(format!(
                    "seq_len {} is longer than the context {} of {} was trained for",
                    self.seq_len,
                    cfg.max_position_embeddings,
                    path.display()
                )));
            }
            return Ok(cfg);
        }
        let mut cfg = Config::preset(&self.preset).ok_or_else(|| {
            Error::Config(format!(
                "unknown preset `{}`; choose one of {}",
                self.preset,
                Config::PRESETS.join(", ")
            ))
        })?;
        cfg.vocab_size = vocab_size;
        cfg.max_position_embeddings = cfg.max_position_embeddings.max(self.seq_len);
        Ok(cfg)
    }

    /// Checks the settings that no later step would catch with a clear message.
    pub fn check(&self) -> Result<()> {
        self.accumulation()?;
        if self.steps == 0 && self.init.is_none() {
            return Err(Error::Config(
                "steps must be at least 1 (0 is only for exporting an --init checkpoint)".into(),
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::Config(format!("lr {} must be positive", self.lr)));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::Config(format!(
                "min_lr_ratio {} must be in [0, 1]",
                self.min_lr_ratio
            )));
        }
        if self.checkpoint_every == 0 {
            return Err(Error::Config("checkpoint_every must be at least 1".into()));
        }
        Ok(())
    }

    /// A digest of the settings a resumed run must share with the one it continues:
    /// all but the step count (which may be raised) and the intervals.
    pub fn settings_digest(&self) -> String {
        let mut shaping = self.clone();
        shaping.eval_every = 0;
        shaping.checkpoint_every = 0;
        shaping.keep_checkpoints = 0;
        shaping.eval_sequences = 0;
        fnv_digest(&serde_json::to_string(&shaping).unwrap_or_default())
    }
}

/// A settings file (`config.toml`, `sft.toml`, `rs.toml`, ...) read into its type.
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::error::io(path, e))?;
    toml::from_str(&text).map_err(|e| Error::Invalid {
        file: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// A JSON file a finished stage wrote (a round's summary, a measurement), or None when
/// the stage has not written it yet.
pub(crate) fn read_json_if_done<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| crate::error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Invalid {
            file: path.display().to_string(),
            msg: e.to_string(),
        })
}

/// FNV-1a of `text` in hex: stable across Rust versions, unlike the standard hasher.
pub(crate) fn fnv_digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_that_does_not_divide_into_micro_batches_is_refused() {
        let cfg = TrainConfig {
            seq_len: 256,
            micro_batch: 4,
            batch_tokens: 3000,
            ..Default::default()
        };
        let err = cfg.accumulation().unwrap_err().to_string();
        assert!(err.contains("multiple of seq_len x micro_batch"), "{err}");
        let ok = TrainConfig {
            batch_tokens: 4096,
            ..cfg
        };
        assert_eq!(ok.accumulation().unwrap(), 4);
    }

    #[test]
    fn toml_with_an_unknown_key_is_an_error() {
        assert!(toml::from_str::<TrainConfig>("lr = 1e-3\nsteps = 5").is_ok());
        assert!(toml::from_str::<TrainConfig>("learning_rate = 1e-3").is_err());
        let c: TrainConfig =
            toml::from_str("[data]\npaths = [\"a.txt\"]\nseparator = \"%\"").unwrap();
        assert_eq!(c.data.separator.as_deref(), Some("%"));
    }
}
