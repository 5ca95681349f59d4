//! PPO against a reward (Llama 2-Chat, Touvron et al. 2023, 3.2.3; the recipe of Ouyang et
//! et al. 2022): each iteration the policy answers a batch of training prompts on the decode
//! engine (its LoRA adapter applied there, as a server would), the reward models score the
//! answers, and a few clipped-objective passes over those answers update the adapter and
//! a value head on the same backbone.
//!
//! - Reference: the base model without the adapter (the adapter switched off for one
//!   forward pass), so no second copy of the weights; the per-token KL penalty is
//!   -β (log π - log π_ref) on every answer token (β 0.01 in the paper).
//! - Reward: the score (Llama 2's combination of the helpfulness and safety models when
//!   both are given), whitened over the iteration's answers, added at the last token.
//! - Advantages: GAE ([`crate::advantage`]) from the value head's estimates, whitened over
//!   the iteration's tokens; the value head (`value.weight`, a linear map of the final
//!   hidden state, zero at the start) learns the returns with a clipped loss.
//! - An answer cut at the token limit is learned as sampled, without an end-of-turn token.
//!
//! Before the first iteration, every `eval_every` iterations and after the last, the
//! policy answers the held-out prompts at temperature 1 and is measured as rejection
//! sampling measures it: reward, KL to the reference (summed over each answer's tokens),
//! share finished (`evals.jsonl`, `eval/iter-N.jsonl`).
//!
//! The run directory: `ppo.toml`, `iter-N/adapter/` (the policy that sampled iteration N)
//! and `iter-N/rollouts.jsonl`, `metrics.jsonl` (one line per iteration), `checkpoints/`
//! (after every iteration), and at the end `adapter/`, `model.gguf` and `hf/` (merged).
//! A stopped run resumes at the start of the iteration it stopped in and ends with the
//! same bytes as one run straight through.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use ferrollama_generate::chat::TrainingSample;
use ferrollama_generate::{ChatFormat, Completion, FinishReason};
use ferrollama_gguf::GgmlType;
use ferrollama_model::TrainableLlama;
use ferrollama_tokenizer::{Tokenizer, TokenizerFiles};
use serde_json::json;

use crate::advantage::{gae, token_rewards, whiten};
use crate::checkpoint::LoopState;
use crate::error::{io, Error, Result};
use crate::finetune::{open_model, optimizer_step, restore, save_checkpoint, SftConfig};
use crate::optim::AdamW;
use crate::policy::{Distribution, Prompt, Reward, Sampling};
use crate::rejection::{write_atomic, HeldOut};
use crate::schedule::CosineSchedule;
use crate::sft_batches::{epoch_order, lay_out, MicroBatch};
use crate::trainer::{add_gradients, keep_metrics_through, RunDir};

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
            tuning: SftConfig {
                lr: 1e-4,
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
        if self.sampling.max_new_tokens == 0 || self.sampling.parallel == 0 {
            return bad("max_new_tokens and parallel must be at least 1");
        }
        if self.sampling.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return bad("PPO samples from the policy: the temperature must be above 0");
        }
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
        match &self.tuning.lora {
            None => {
                return bad("PPO trains a LoRA adapter (its reference is the base without it): give --lora-rank; full-weight PPO is not supported yet")
            }
            Some(l) if l.dropout > 0.0 => {
                return bad("PPO runs without LoRA dropout (the ratio to the sampling policy must start at 1): set it to 0")
            }
            _ => {}
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
    fn steps_per_iteration(&self) -> u64 {
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

/// Per-token numbers of one answer from a forward pass without gradients.
#[derive(Debug, Clone, Default)]
struct Tokens {
    logp: Vec<f64>,
    values: Vec<f64>,
    entropy: Vec<f64>,
}

/// One forward pass's scored tokens: log-probabilities and values (differentiable), the
/// policy's entropy if asked for, and each answer's span among them.
struct Pass {
    logp: Tensor,
    values: Tensor,
    entropy: Option<Tensor>,
    spans: Vec<std::ops::Range<usize>>,
}

/// An answer ready to learn from.
struct Prepared {
    sample: TrainingSample,
    old: Tokens,
    advantages: Vec<f64>,
    returns: Vec<f64>,
}

/// A PPO run.
pub struct Ppo<'a> {
    pub config: PpoConfig,
    pub model: TrainableLlama,
    optimizer: AdamW,
    state: LoopState,
    run: RunDir,
    reward: &'a dyn Reward,
    tokenizer: Tokenizer,
    template: Option<String>,
    format: ChatFormat,
    train: Vec<Prompt>,
    val: Vec<Prompt>,
}

impl<'a> Ppo<'a> {
    /// Prepares a run in `out`: a new one (refused if `out` holds one), or with `resume`
    /// the one there, made with the same settings, from its last checkpoint.
    pub fn new(
        config: PpoConfig,
        out: &Path,
        resume: bool,
        reward: &'a dyn Reward,
    ) -> Result<Self> {
        config.check()?;
        let settings = out.join("ppo.toml");
        if settings.exists() {
            if !resume {
                return Err(Error::Resume(format!(
                    "{} holds a PPO run; pass --resume to continue it, or choose another --out",
                    out.display()
                )));
            }
            let before = PpoConfig::from_toml_file(&settings)?;
            if before.settings_digest() != config.settings_digest() {
                return Err(Error::Resume(format!(
                    "{}: the run was made with other settings; resume with the same ones (only the number of iterations may change)",
                    settings.display()
                )));
            }
        }
        std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
        let files = TokenizerFiles::load(&config.tuning.model)?;
        let format = ChatFormat::for_model(files.chat_template.as_deref());
        let all = crate::policy::read_prompts(&config.prompts, &config.unsafe_field)?;
        let (train, val) = match &config.val_prompts {
            Some(p) => (all, crate::policy::read_prompts(p, &config.unsafe_field)?),
            None => crate::finetune::hold_out(all, config.val_fraction),
        };
        if train.is_empty() || val.is_empty() {
            return Err(Error::Config(format!(
                "{} training and {} held-out prompts: both are needed",
                train.len(),
                val.len()
            )));
        }
        let longest = train
            .iter()
            .chain(&val)
            .map(|p| {
                format
                    .encode(&p.messages, &files.tokenizer)
                    .map(|t| t.len())
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        // An answer's end-of-turn text may add a few tokens beyond the sampled ones.
        let need = longest + config.sampling.max_new_tokens + 8;
        if need > config.tuning.seq_len {
            return Err(Error::Config(format!(
                "the longest prompt ({longest} tokens) with --max-new-tokens {} needs --seq-len {need} or more (it is {})",
                config.sampling.max_new_tokens, config.tuning.seq_len
            )));
        }
        let mut model = open_model(&config.tuning, &files.tokenizer)?;
        let zeros = Tensor::zeros(
            (1, model.config.hidden_size),
            candle_core::DType::F32,
            &Device::Cpu,
        )?;
        model.add_head(VALUE, &zeros)?;
        let run = RunDir {
            root: out.to_path_buf(),
        };
        let digest = config.settings_digest();
        let (optimizer, state) = restore(
            &run,
            &model,
            &config.tuning.optim,
            config.tuning.seed,
            &digest,
            resume,
        )?;
        if !state.step.is_multiple_of(config.steps_per_iteration()) {
            return Err(Error::Resume(format!(
                "{}: the last checkpoint is not at the end of an iteration",
                out.display()
            )));
        }
        let text = toml::to_string_pretty(&config)
            .map_err(|e| Error::Internal(format!("encoding the settings: {e}")))?;
        write_atomic(&settings, text.as_bytes())?;
        keep_metrics_through(&run.metrics(), state.step)?;
        Ok(Self {
            config,
            model,
            optimizer,
            state,
            run,
            reward,
            tokenizer: files.tokenizer,
            template: files.chat_template,
            format,
            train,
            val,
        })
    }

    /// Iterations done so far.
    pub fn iteration(&self) -> usize {
        (self.state.step / self.config.steps_per_iteration()) as usize
    }

    fn iter_dir(&self, iteration: usize) -> PathBuf {
        self.run.root.join(format!("iter-{iteration}"))
    }

    /// The file the engine samples from: the start model (an f16 copy of an f32 GGUF).
    fn sampler(&self) -> Result<PathBuf> {
        crate::policy::sampling_copy(
            &self.config.tuning.model,
            &self.run.root.join("sampling-f16.gguf"),
        )
    }

    /// Runs the iterations not done yet; the held-out measurements, or None when `stop`
    /// was set (everything up to the last finished iteration is kept).
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(PpoEvent),
    ) -> Result<Option<Vec<PpoEval>>> {
        self.model.set_dropout_key(0);
        on_event(PpoEvent::Started {
            train_prompts: self.train.len(),
            val_prompts: self.val.len(),
            start_iteration: self.iteration(),
            parameters: self.model.num_parameters(),
        });
        let total = self.config.iterations;
        let schedule = CosineSchedule {
            peak: self.config.tuning.lr,
            warmup: self.config.tuning.warmup,
            total: total as u64 * self.config.steps_per_iteration(),
            min_ratio: self.config.tuning.min_lr_ratio,
        };
        loop {
            let done = self.iteration();
            if self.eval_due(done) && self.read_eval(done)?.is_none() {
                let Some(e) = self.evaluate(done, stop, on_event)? else {
                    return Ok(None);
                };
                on_event(PpoEvent::Eval(&e));
            }
            if done >= total {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let Some(m) = self.iterate(done + 1, &schedule, stop, on_event)? else {
                return Ok(None);
            };
            on_event(PpoEvent::Iteration(&m));
        }
        let evals = (0..=total)
            .filter(|&i| self.eval_due(i))
            .map(|i| self.read_eval(i))
            .collect::<Result<Option<Vec<_>>>>()?
            .ok_or_else(|| Error::Internal("a held-out measurement is missing".into()))?;
        let lines: String = evals
            .iter()
            .map(|e| serde_json::to_string(e).map(|l| l + "\n"))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Internal(format!("encoding evals: {e}")))?;
        write_atomic(&self.run.root.join("evals.jsonl"), lines.as_bytes())?;
        self.export()?;
        let _ = std::fs::remove_file(self.run.root.join("sampling-f16.gguf"));
        Ok(Some(evals))
    }

    fn eval_due(&self, iteration: usize) -> bool {
        let every = self.config.eval_every;
        iteration == 0
            || iteration == self.config.iterations
            || (every > 0 && iteration.is_multiple_of(every))
    }

    fn eval_path(&self, iteration: usize) -> PathBuf {
        self.run
            .root
            .join("eval")
            .join(format!("iter-{iteration}.json"))
    }

    fn read_eval(&self, iteration: usize) -> Result<Option<PpoEval>> {
        let path = self.eval_path(iteration);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Invalid {
                file: path.display().to_string(),
                msg: e.to_string(),
            })
    }

    /// Writes the policy's adapter (PEFT layout) to `dir`, whole or not at all.
    fn save_adapter(&self, dir: &Path) -> Result<()> {
        if dir.join("adapter_config.json").exists() {
            return Ok(());
        }
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let base = self.config.tuning.model.display().to_string();
        crate::finetune::save_peft_adapter(&self.model, &tmp, &base)?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))
    }

    /// Answers of the policy as it is now, `per_prompt` to each of `prompts`, scored.
    #[allow(clippy::too_many_arguments)]
    fn answers(
        &self,
        iteration: usize,
        heldout: bool,
        prompts: &[Prompt],
        per_prompt: usize,
        sampling: &Sampling,
        seed: u64,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(PpoEvent),
    ) -> Result<Option<(Vec<Completion>, Vec<f64>)>> {
        let adapter = if heldout {
            self.run
                .root
                .join("eval")
                .join(format!("adapter-{iteration}"))
        } else {
            self.iter_dir(iteration).join("adapter")
        };
        std::fs::create_dir_all(adapter.parent().unwrap_or(&self.run.root))
            .map_err(|e| io(&adapter, e))?;
        self.save_adapter(&adapter)?;
        let Some(completions) = crate::policy::sample_answers_with(
            &self.sampler()?,
            Some(&adapter),
            prompts,
            per_prompt,
            sampling,
            seed,
            stop,
            &mut |done, total| {
                on_event(PpoEvent::Sampling {
                    iteration,
                    heldout,
                    done,
                    total,
                })
            },
        )?
        else {
            return Ok(None);
        };
        if heldout {
            // The measurement's adapter is the checkpoint's; it is not kept twice.
            let _ = std::fs::remove_dir_all(&adapter);
        }
        on_event(PpoEvent::Stage {
            iteration,
            what: "scoring the answers",
        });
        let flat: Vec<Completion> = completions.into_iter().flatten().collect();
        let (mut conversations, mut flags) = (Vec::new(), Vec::new());
        for (k, c) in flat.iter().enumerate() {
            let p = &prompts[k / per_prompt];
            conversations.push(p.answered(&c.text));
            flags.push(p.unsafe_prompt);
        }
        let scores = self.reward.scores(&conversations, &flags)?;
        if scores.len() != flat.len() {
            return Err(Error::Internal(format!(
                "the reward gave {} scores for {} answers",
                scores.len(),
                flat.len()
            )));
        }
        Ok(Some((flat, scores)))
    }

    /// The training sample of an answer to `p`: the conversation as the chat format
    /// writes it (the answer and its end-of-turn scored) when it finished, the prompt and
    /// the sampled ids (all scored, nothing after them) when it was cut.
    fn sample_of(&self, p: &Prompt, r: &Rollout) -> Result<TrainingSample> {
        let s = if r.finished {
            p.answered(&r.text).encode(&self.format, &self.tokenizer)?
        } else {
            let prompt = self.format.encode(&p.messages, &self.tokenizer)?;
            let mut scored = vec![false; prompt.len()];
            scored.extend(std::iter::repeat_n(true, r.ids.len()));
            let mut tokens = prompt;
            tokens.extend(&r.ids);
            TrainingSample { tokens, scored }
        };
        if s.tokens.len() > self.config.tuning.seq_len || !s.scored.iter().any(|&b| b) {
            return Err(Error::Config(format!(
                "an answer of {} tokens does not fit --seq-len {} (or scores nothing)",
                s.tokens.len(),
                self.config.tuning.seq_len
            )));
        }
        Ok(s)
    }

    /// The prompts of iteration `iteration` (1-based): `rollouts` at a time from a seeded
    /// order of the training prompts, epoch after epoch.
    fn prompts_of(&self, iteration: usize) -> Vec<usize> {
        let n = self.train.len();
        let start = (iteration - 1) * self.config.rollouts;
        (start..start + self.config.rollouts)
            .map(|k| {
                let order = epoch_order(n, self.config.tuning.seed, (k / n) as u64);
                order[k % n]
            })
            .collect()
    }

    /// The rollouts of iteration `iteration`, sampled and scored (or read back).
    fn rollouts(
        &self,
        iteration: usize,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(PpoEvent),
    ) -> Result<Option<Vec<Rollout>>> {
        let dir = self.iter_dir(iteration);
        let path = dir.join("rollouts.jsonl");
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            return text
                .lines()
                .map(|l| {
                    serde_json::from_str(l).map_err(|e| Error::Invalid {
                        file: path.display().to_string(),
                        msg: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some);
        }
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let picked = self.prompts_of(iteration);
        let prompts: Vec<Prompt> = picked.iter().map(|&i| self.train[i].clone()).collect();
        let seed = crate::finetune::mix(self.config.tuning.seed, iteration as u64, 1);
        let Some((completions, scores)) = self.answers(
            iteration,
            false,
            &prompts,
            1,
            &self.config.sampling,
            seed,
            stop,
            on_event,
        )?
        else {
            return Ok(None);
        };
        let rollouts: Vec<Rollout> = completions
            .into_iter()
            .zip(scores)
            .zip(&picked)
            .map(|((c, score), &prompt)| Rollout {
                prompt,
                finished: c.finish == FinishReason::Stop,
                text: c.text,
                ids: c.ids,
                score,
            })
            .collect();
        let lines: String = rollouts
            .iter()
            .map(|r| serde_json::to_string(r).map(|l| l + "\n"))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Internal(format!("encoding rollouts: {e}")))?;
        write_atomic(&path, lines.as_bytes())?;
        Ok(Some(rollouts))
    }

    /// One forward pass over `samples` (at most a micro-batch): each one's scored tokens'
    /// log-probabilities and values (tensors, differentiable) and their spans in them.
    fn pass(&self, samples: &[&TrainingSample], entropy: bool) -> Result<Pass> {
        let owned: Vec<TrainingSample> = samples.iter().map(|s| (*s).clone()).collect();
        let order: Vec<usize> = (0..owned.len()).collect();
        let rows = lay_out(&owned, &order, self.config.tuning.seq_len, false);
        if rows.len() != owned.len() {
            return Err(Error::Internal(
                "an answer did not get a row of its own".into(),
            ));
        }
        let pad = self.tokenizer.eos().unwrap_or(0);
        let mb = MicroBatch::new(&rows.iter().collect::<Vec<_>>(), pad)?;
        let mut spans = vec![0..0; mb.rows];
        for (k, &i) in mb.scored.iter().enumerate() {
            let r = i as usize / mb.t;
            if spans[r].is_empty() {
                spans[r] = k..k + 1;
            } else {
                spans[r].end = k + 1;
            }
        }
        spans.truncate(owned.len());
        let x = Tensor::from_slice(&mb.tokens, (mb.rows, mb.t), &Device::Cpu)?;
        let h = self.model.hidden_rows(&x, &mb.packing, &mb.scored)?;
        let logits = self.model.vocab_logits(&h)?;
        let max = logits.max_keepdim(1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
        let lsm = shifted.broadcast_sub(&lse)?;
        let n = mb.targets.len();
        let idx = Tensor::from_slice(&mb.targets, (n, 1), &Device::Cpu)?;
        let logp = lsm.gather(&idx, 1)?.flatten_all()?;
        let w = self.value_head()?;
        let values = h.matmul(&w.t()?)?.flatten_all()?;
        let ent = if entropy {
            Some((lsm.exp()? * &lsm)?.sum(1)?.neg()?)
        } else {
            None
        };
        Ok(Pass {
            logp,
            values,
            entropy: ent,
            spans,
        })
    }

    fn value_head(&self) -> Result<Tensor> {
        self.model
            .params()
            .find(|(n, _)| *n == VALUE)
            .map(|(_, v)| v.as_tensor().clone())
            .ok_or_else(|| Error::Internal("the policy has no value head".into()))
    }

    /// Per-token numbers of every sample, without gradients; with `reference` the
    /// adapter is off (the base model).
    fn tokens_of(&self, samples: &[TrainingSample], reference: bool) -> Result<Vec<Tokens>> {
        self.model.set_adapter_enabled(!reference);
        let out = (|| -> Result<Vec<Tokens>> {
            let mut out = Vec::with_capacity(samples.len());
            for chunk in samples.chunks(self.config.tuning.micro_batch.max(1)) {
                let refs: Vec<&TrainingSample> = chunk.iter().collect();
                let Pass {
                    logp,
                    values,
                    entropy: ent,
                    spans,
                } = self.pass(&refs, !reference)?;
                let v = |t: &Tensor| -> Result<Vec<f64>> {
                    Ok(t.detach()
                        .to_vec1::<f32>()?
                        .into_iter()
                        .map(f64::from)
                        .collect())
                };
                let (logp, values) = (v(&logp)?, v(&values)?);
                let ent = ent.as_ref().map(v).transpose()?;
                for s in spans {
                    out.push(Tokens {
                        logp: logp[s.clone()].to_vec(),
                        values: values[s.clone()].to_vec(),
                        entropy: ent.as_ref().map_or_else(Vec::new, |e| e[s].to_vec()),
                    });
                }
            }
            Ok(out)
        })();
        self.model.set_adapter_enabled(true);
        out
    }

    /// One iteration: rollouts, advantages, the clipped-objective steps, a checkpoint.
    fn iterate(
        &mut self,
        iteration: usize,
        schedule: &CosineSchedule,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(PpoEvent),
    ) -> Result<Option<PpoMetrics>> {
        let cfg = self.config.clone();
        let Some(rollouts) = self.rollouts(iteration, stop, on_event)? else {
            return Ok(None);
        };
        let started = Instant::now();
        on_event(PpoEvent::Stage {
            iteration,
            what: "log-probabilities, values and the reference",
        });
        let samples = rollouts
            .iter()
            .map(|r| self.sample_of(&self.train[r.prompt], r))
            .collect::<Result<Vec<_>>>()?;
        let old = self.tokens_of(&samples, false)?;
        let reference = self.tokens_of(&samples, true)?;
        let mut scores: Vec<f64> = rollouts.iter().map(|r| r.score).collect();
        if cfg.whiten_rewards {
            whiten(&mut scores);
        }
        let mut prepared: Vec<Prepared> = Vec::with_capacity(samples.len());
        let mut kl = 0.0;
        for ((sample, old), (reference, score)) in samples
            .into_iter()
            .zip(old)
            .zip(reference.iter().zip(&scores))
        {
            kl += old
                .logp
                .iter()
                .zip(&reference.logp)
                .map(|(a, b)| a - b)
                .sum::<f64>();
            let rewards = token_rewards(*score, &old.logp, &reference.logp, cfg.kl_coef);
            let (advantages, returns) = gae(&rewards, &old.values, cfg.gamma, cfg.lam);
            prepared.push(Prepared {
                sample,
                old,
                advantages,
                returns,
            });
        }
        // Advantages whitened over all the iteration's tokens.
        let mut flat: Vec<f64> = prepared.iter().flat_map(|p| p.advantages.clone()).collect();
        whiten(&mut flat);
        let mut it = flat.into_iter();
        for p in &mut prepared {
            for a in &mut p.advantages {
                *a = it.next().unwrap_or(0.0);
            }
        }
        let n_tokens: usize = prepared.iter().map(|p| p.old.logp.len()).sum();
        let entropy =
            prepared.iter().flat_map(|p| &p.old.entropy).sum::<f64>() / n_tokens.max(1) as f64;
        let sizes: Vec<usize> = self.model.params().map(|(_, v)| v.elem_count()).collect();
        let mut sums = vec![0.0f64; sizes.iter().sum()];
        let (mut loss_sum, mut pg_sum, mut vf_sum, mut clipped, mut approx, mut counted) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let (mut grad_norm, mut lr) = (0.0, 0.0);
        for epoch in 0..cfg.ppo_epochs {
            let order = epoch_order(
                prepared.len(),
                mix_seed(cfg.tuning.seed, iteration),
                epoch as u64,
            );
            for mb in order.chunks(cfg.minibatch) {
                if stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let tokens: usize = mb.iter().map(|&i| prepared[i].old.logp.len()).sum();
                sums.fill(0.0);
                for chunk in mb.chunks(cfg.tuning.micro_batch.max(1)) {
                    let refs: Vec<&TrainingSample> =
                        chunk.iter().map(|&i| &prepared[i].sample).collect();
                    let Pass {
                        logp,
                        values,
                        spans,
                        ..
                    } = self.pass(&refs, false)?;
                    let gather = |f: &dyn Fn(&Prepared) -> &[f64]| -> Result<Tensor> {
                        let v: Vec<f32> = chunk
                            .iter()
                            .flat_map(|&i| f(&prepared[i]).iter().map(|&x| x as f32))
                            .collect();
                        let n = v.len();
                        Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
                    };
                    if spans.iter().map(|s| s.len()).sum::<usize>() != logp.dims1()? {
                        return Err(Error::Internal("answer spans and tokens disagree".into()));
                    }
                    let old_logp = gather(&|p| &p.old.logp)?;
                    let old_v = gather(&|p| &p.old.values)?;
                    let adv = gather(&|p| &p.advantages)?;
                    let ret = gather(&|p| &p.returns)?;
                    let l = token_losses(
                        &logp,
                        &old_logp,
                        &adv,
                        &values,
                        &old_v,
                        &ret,
                        cfg.clip,
                        cfg.value_clip,
                    )?;
                    let (pg, vf, ratio) = (l.policy, l.value, l.ratio);
                    let log_ratio = (&logp - &old_logp)?;
                    let total = ((&pg + (&vf * cfg.vf_coef)?)?.sum_all()? / tokens as f64)?;
                    add_gradients(&total.backward()?, &self.model, &mut sums)?;
                    let num = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.detach().to_vec1::<f32>()?) };
                    let (pg, vf, r, lr_) = (num(&pg)?, num(&vf)?, num(&ratio)?, num(&log_ratio)?);
                    pg_sum += pg.iter().map(|&x| x as f64).sum::<f64>();
                    vf_sum += vf.iter().map(|&x| x as f64).sum::<f64>();
                    clipped += r
                        .iter()
                        .filter(|&&x| (x as f64 - 1.0).abs() > cfg.clip)
                        .count() as f64;
                    approx += lr_.iter().map(|&x| -(x as f64)).sum::<f64>();
                    counted += pg.len() as f64;
                }
                loss_sum = pg_sum + cfg.vf_coef * vf_sum;
                lr = schedule.lr(self.state.step);
                grad_norm = optimizer_step(
                    &self.model,
                    &mut self.optimizer,
                    &sums,
                    &sizes,
                    cfg.tuning.grad_clip,
                    lr,
                )?;
                self.state.step += 1;
                self.state.tokens += tokens as u64;
                self.state.sequences += mb.len() as u64;
            }
        }
        let counted = counted.max(1.0);
        if !(loss_sum / counted).is_finite() {
            return Err(Error::Diverged {
                step: self.state.step,
                loss: loss_sum / counted,
            });
        }
        let raw: Vec<f64> = rollouts.iter().map(|r| r.score).collect();
        let m = PpoMetrics {
            step: self.state.step,
            iteration,
            loss: loss_sum / counted,
            lr,
            grad_norm,
            tokens_per_s: (n_tokens * cfg.ppo_epochs) as f64
                / started.elapsed().as_secs_f64().max(1e-9),
            tokens: self.state.tokens,
            reward: Distribution::of(&raw),
            kl: kl / rollouts.len().max(1) as f64,
            entropy,
            policy_loss: pg_sum / counted,
            value_loss: vf_sum / counted,
            clip_fraction: clipped / counted,
            approx_kl: approx / counted,
            finished: rollouts.iter().filter(|r| r.finished).count() as f64
                / rollouts.len().max(1) as f64,
            mean_answer_tokens: n_tokens as f64 / rollouts.len().max(1) as f64,
        };
        let (mut metrics, path) = crate::finetune::open_metrics(&self.run)?;
        let line = serde_json::to_string(&m)
            .map_err(|e| Error::Internal(format!("encoding metrics: {e}")))?;
        use std::io::Write;
        writeln!(metrics, "{line}").map_err(|e| io(&path, e))?;
        let dir = save_checkpoint(
            &self.run,
            &self.model,
            &self.optimizer,
            &self.state,
            self.config.tuning.keep_checkpoints,
            &metrics,
        )?;
        on_event(PpoEvent::Checkpoint(&dir));
        Ok(Some(m))
    }

    /// The policy after `iteration` iterations measured on the held-out prompts.
    fn evaluate(
        &self,
        iteration: usize,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(PpoEvent),
    ) -> Result<Option<PpoEval>> {
        let cfg = &self.config;
        // The policy's own distribution and the same seeds every time, as `rs` measures.
        let own = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            ..cfg.sampling.clone()
        };
        let seed = crate::finetune::mix(cfg.tuning.seed, 0, 2);
        let Some((completions, scores)) = self.answers(
            iteration,
            true,
            &self.val,
            cfg.val_samples,
            &own,
            seed,
            stop,
            on_event,
        )?
        else {
            return Ok(None);
        };
        on_event(PpoEvent::Stage {
            iteration,
            what: "held-out KL to the reference",
        });
        let rollouts: Vec<Rollout> = completions
            .into_iter()
            .zip(&scores)
            .enumerate()
            .map(|(k, (c, &score))| Rollout {
                prompt: k / cfg.val_samples,
                finished: c.finish == FinishReason::Stop,
                text: c.text,
                ids: c.ids,
                score,
            })
            .collect();
        let samples = rollouts
            .iter()
            .map(|r| self.sample_of(&self.val[r.prompt], r))
            .collect::<Result<Vec<_>>>()?;
        let now = self.tokens_of(&samples, false)?;
        let reference = self.tokens_of(&samples, true)?;
        let kl_each: Vec<f64> = now
            .iter()
            .zip(&reference)
            .map(|(a, b)| a.logp.iter().zip(&b.logp).map(|(x, y)| x - y).sum())
            .collect();
        let mut lines = String::new();
        for (r, kl) in rollouts.iter().zip(&kl_each) {
            let line = json!({"prompt": r.prompt, "text": r.text, "finished": r.finished,
                "reward": r.score, "kl": kl});
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        let dir = self.run.root.join("eval");
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        write_atomic(
            &dir.join(format!("iter-{iteration}.jsonl")),
            lines.as_bytes(),
        )?;
        let n = rollouts.len().max(1) as f64;
        let e = PpoEval {
            iteration,
            heldout: HeldOut {
                reward: Distribution::of(&scores),
                kl: kl_each.iter().sum::<f64>() / n,
                finished: rollouts.iter().filter(|r| r.finished).count() as f64 / n,
            },
        };
        let text = serde_json::to_string_pretty(&e)
            .map_err(|e| Error::Internal(format!("encoding an eval: {e}")))?;
        write_atomic(&self.eval_path(iteration), text.as_bytes())?;
        Ok(Some(e))
    }

    /// The final policy: its adapter, and the merged model (`model.gguf`, f32, and `hf/`).
    fn export(&self) -> Result<()> {
        let adapter = self.run.root.join("adapter");
        let _ = std::fs::remove_dir_all(&adapter);
        self.save_adapter(&adapter)?;
        let info = crate::export::ExportInfo {
            tokenizer: &self.tokenizer,
            chat_template: self.template.as_deref(),
            name: "ppo",
        };
        crate::export::export(&self.model, &info, &self.run.root, GgmlType::F32)?;
        Ok(())
    }
}

/// Per-token losses of a pass, and the ratios π/π_old.
pub struct TokenLosses {
    pub policy: Tensor,
    pub value: Tensor,
    pub ratio: Tensor,
}

/// PPO's per-token losses as tensors (differentiable in `logp` and `values`): the clipped
/// surrogate and the clipped value loss of [`crate::advantage`], token by token.
#[allow(clippy::too_many_arguments)]
pub fn token_losses(
    logp: &Tensor,
    old_logp: &Tensor,
    adv: &Tensor,
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    clip: f64,
    value_clip: f64,
) -> Result<TokenLosses> {
    let ratio = (logp - old_logp)?.exp()?;
    let unclipped = (adv.neg()? * &ratio)?;
    let clipped = (adv.neg()? * ratio.clamp(1.0 - clip, 1.0 + clip)?)?;
    let policy = unclipped.maximum(&clipped)?;
    let step = (values - old_values)?.clamp(-value_clip, value_clip)?;
    let v_clipped = (old_values + step)?;
    let value = ((values - returns)?
        .sqr()?
        .maximum(&(v_clipped - returns)?.sqr()?)?
        * 0.5)?;
    Ok(TokenLosses {
        policy,
        value,
        ratio,
    })
}

/// The seed of an iteration's minibatch order.
fn mix_seed(seed: u64, iteration: usize) -> u64 {
    crate::finetune::mix(seed, iteration as u64, 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advantage::{clipped_policy_loss, clipped_value_loss};

    #[test]
    fn tensor_losses_match_the_plain_ones_and_clip_the_gradient() {
        let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        let logp_v = [-1.0f32, -0.2, -3.0, -0.9, -2.0];
        let old_v = [-1.0f32, -0.6, -2.5, -0.8, -2.0];
        let adv_v = [0.5f32, 1.0, -1.0, -2.0, 0.0];
        let val_v = [0.3f32, 1.0, -0.5, 0.0, 2.0];
        let oldval_v = [0.2f32, 0.5, 0.0, 0.1, 1.5];
        let ret_v = [0.0f32, 2.0, -1.0, 0.3, 1.0];
        let logp = candle_core::Var::new(&logp_v[..], &Device::Cpu).unwrap();
        let l = token_losses(
            logp.as_tensor(),
            &t(&old_v),
            &t(&adv_v),
            &t(&val_v),
            &t(&oldval_v),
            &t(&ret_v),
            0.2,
            0.2,
        )
        .unwrap();
        let pg: Vec<f32> = l.policy.to_vec1().unwrap();
        let vf: Vec<f32> = l.value.to_vec1().unwrap();
        for i in 0..5 {
            let want = clipped_policy_loss(logp_v[i] as f64, old_v[i] as f64, adv_v[i] as f64, 0.2);
            assert!(
                (pg[i] as f64 - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                pg[i]
            );
            let want =
                clipped_value_loss(val_v[i] as f64, oldval_v[i] as f64, ret_v[i] as f64, 0.2);
            assert!(
                (vf[i] as f64 - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                vf[i]
            );
        }
        // d/dlogp: -Â ρ inside the band; nothing where the clip holds the ratio (token 1:
        // ρ = e^0.4 > 1.2 with Â > 0).
        let g = l.policy.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = g.get(logp.as_tensor()).unwrap().to_vec1().unwrap();
        let ratio0 = 1.0f32;
        assert!((g[0] + 0.5 * ratio0).abs() < 1e-5, "{g:?}");
        assert_eq!(g[1], 0.0, "{g:?}");
        let r3 = (-0.9f32 + 0.8).exp();
        assert!((g[3] - 2.0 * r3).abs() < 1e-5, "{g:?}");
    }
}
