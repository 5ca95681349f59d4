//! What shapes a PPO run and what it reports.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::finetune::SftConfig;
use crate::policy::{Distribution, Sampling};
use crate::rejection::HeldOut;

/// The value head's name among the trained parameters.
pub const VALUE: &str = "value.weight";

/// Everything that shapes a PPO run (`ppo.toml`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// Prompts to train on (see [`crate::policy::read_prompts`]).
    pub prompts: PathBuf,
    /// Held-out prompts; without them `val_fraction` of `prompts` is held out.
    pub val_prompts: Option<PathBuf>,
    pub val_fraction: f64,
    pub unsafe_field: String,
    /// The reward: a `ferrollama reward train` output, and optionally a safety one.
    pub reward: PathBuf,
    pub safety_reward: Option<PathBuf>,
    pub iterations: usize,
    /// Prompts answered per iteration (drawn in a seeded order, epoch after epoch).
    pub rollouts: usize,
    pub sampling: Sampling,
    /// β of the per-token KL penalty.
    pub kl_coef: f64,
    /// ε of the clipped objective, and of the value loss.
    pub clip: f64,
    pub value_clip: f64,
    /// The value loss's weight in the total.
    pub vf_coef: f64,
    pub gamma: f64,
    pub lam: f64,
    /// Passes over an iteration's answers, and answers per optimizer step.
    pub ppo_epochs: usize,
    pub minibatch: usize,
    /// Whiten the scores over each iteration's answers (Llama 2 whitens its reward).
    pub whiten_rewards: bool,
    /// Iterations between held-out measurements (0: only before and after).
    pub eval_every: usize,
    pub val_samples: usize,
    pub score_batch: usize,
    /// The policy's model and adapter, learning rate and schedule, `seq_len` (prompt and
    /// answer must fit), `micro_batch` (answers per forward pass), optimizer, clipping.
    pub tuning: SftConfig,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            prompts: PathBuf::new(),
            val_prompts: None,
            val_fraction: 0.1,
            unsafe_field: "unsafe".into(),
            reward: PathBuf::new(),
            safety_reward: None,
            iterations: 20,
            rollouts: 32,
            sampling: Sampling::default(),
            kl_coef: 0.01,
            clip: 0.2,
            value_clip: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            ppo_epochs: 1,
            minibatch: 8,
            whiten_rewards: true,
            eval_every: 0,
            val_samples: 1,
            score_batch: 8,
            // Llama 2's PPO rate for full weights; the CLI gives LoRA 1e-4.
            tuning: SftConfig {
                lr: 1e-6,
                warmup: 0,
                val_fraction: 0.0,
                ..SftConfig::default()
            },
        }
    }
}

impl PpoConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        crate::config::read_toml(path)
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.into()));
        if self.iterations == 0 || self.rollouts == 0 || self.ppo_epochs == 0 {
            return bad("iterations, rollouts and ppo_epochs must be at least 1");
        }
        if self.minibatch == 0 || self.val_samples == 0 || self.score_batch == 0 {
            return bad("minibatch, val_samples and score_batch must be at least 1");
        }
        self.sampling.check()?;
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        if !(finite_nonneg(self.kl_coef) && self.clip > 0.0 && self.clip < 1.0) {
            return bad("kl_coef must be 0 or more and clip in (0, 1)");
        }
        if !(self.value_clip > 0.0 && self.value_clip.is_finite()) {
            return bad("value_clip must be above 0");
        }
        if !(self.vf_coef > 0.0 && self.vf_coef.is_finite()) {
            return bad("vf_coef must be above 0 (the value head learns from it alone)");
        }
        if !(0.0..=1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.lam) {
            return bad("gamma and lam must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad("val_fraction must be in [0, 1)");
        }
        if self.tuning.lora.as_ref().is_some_and(|l| l.dropout > 0.0) {
            return bad("PPO runs without LoRA dropout (the ratio to the sampling policy must start at 1): set it to 0");
        }
        self.tuning.check()
    }

    /// What a resumed run must share with the one it continues: all but the number of
    /// iterations (which may be raised) and the measurement and checkpoint intervals.
    pub fn settings_digest(&self) -> String {
        let mut shaping = self.clone();
        shaping.iterations = 0;
        shaping.eval_every = 0;
        shaping.tuning.eval_every = 0;
        shaping.tuning.checkpoint_every = 0;
        shaping.tuning.keep_checkpoints = 0;
        crate::config::fnv_digest(&serde_json::to_string(&shaping).unwrap_or_default())
    }

    /// Optimizer steps per iteration.
    pub(super) fn steps_per_iteration(&self) -> u64 {
        (self.ppo_epochs * self.rollouts.div_ceil(self.minibatch)) as u64
    }
}

/// One answer of an iteration, as `rollouts.jsonl` keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rollout {
    pub prompt: usize,
    pub text: String,
    /// The sampled token ids (learned as they are when the answer was cut).
    pub ids: Vec<u32>,
    pub finished: bool,
    pub score: f64,
}

/// One iteration's figures (a line of `metrics.jsonl`; `step` counts optimizer steps).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PpoMetrics {
    pub step: u64,
    pub iteration: usize,
    /// Mean total loss over the iteration's steps (policy + vf_coef × value).
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub tokens: u64,
    /// The raw scores of the iteration's answers.
    pub reward: Distribution,
    /// Mean over answers of Σₜ (log π - log π_ref), at sampling time.
    pub kl: f64,
    /// Mean per-token entropy of the policy on its answers (nats).
    pub entropy: f64,
    pub policy_loss: f64,
    pub value_loss: f64,
    /// Share of tokens whose ratio left [1 - ε, 1 + ε], and the mean of
    /// log π_old - log π_new over tokens (how far the steps moved the policy).
    pub clip_fraction: f64,
    pub approx_kl: f64,
    pub finished: f64,
    pub mean_answer_tokens: f64,
}

/// The policy measured on the held-out prompts after `iteration` iterations.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PpoEval {
    pub iteration: usize,
    pub heldout: HeldOut,
}

/// What the run reports as it goes.
#[derive(Debug)]
#[non_exhaustive]
pub enum PpoEvent<'a> {
    Started {
        train_prompts: usize,
        val_prompts: usize,
        start_iteration: usize,
        parameters: usize,
    },
    Sampling {
        iteration: usize,
        heldout: bool,
        done: usize,
        total: usize,
    },
    Stage {
        iteration: usize,
        what: &'static str,
    },
    Iteration(&'a PpoMetrics),
    Eval(&'a PpoEval),
    Checkpoint(&'a Path),
}
