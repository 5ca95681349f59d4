//! PPO against a reward (Llama 2-Chat, Touvron et al. 2023, 3.2.3; the recipe of Ouyang et
//! et al. 2022): each iteration the policy answers a batch of training prompts on the decode
//! engine (its LoRA adapter applied there, as a server would, or its weights written for
//! it), the reward models score the
//! answers, and a few clipped-objective passes over those answers update the adapter (or
//! the weights) and a value head on the same backbone.
//!
//! - Reference: with LoRA, the base model without the adapter (the adapter switched off
//!   for one forward pass), so no second copy of the weights; with full weights, a second
//!   copy of the start, and the policy is written whole (f16) for the engine each
//!   iteration. The per-token KL penalty is -β (log π - log π_ref) on every answer token
//!   (β 0.01 in the paper).
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
//! The run directory: `ppo.toml`, `iter-N/rollouts.jsonl` (every answer, its ids and score;
//! `iter-N/policy/`, the policy that sampled them, is removed once the iteration is
//! checkpointed), `metrics.jsonl` (one line per iteration), `checkpoints/`
//! (after every iteration), and at the end `adapter/`, `model.gguf` and `hf/` (merged).
//! A stopped run resumes at the start of the iteration it stopped in and ends with the
//! same bytes as one run straight through.

mod config;
mod update;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use ferrollama_generate::chat::TrainingSample;
use ferrollama_generate::{ChatFormat, Completion, FinishReason};
use ferrollama_gguf::GgmlType;
use ferrollama_model::TrainableLlama;
use ferrollama_tokenizer::{Tokenizer, TokenizerFiles};
use serde_json::json;

use crate::checkpoint::LoopState;
use crate::error::{io, Error, Result};
use crate::finetune::{open_model, restore};
use crate::optim::AdamW;
use crate::policy::{Distribution, Prompt, Reward, Sampling};
use crate::rejection::{write_atomic, HeldOut};
use crate::schedule::CosineSchedule;
use crate::sft_batches::epoch_order;
use crate::trainer::{keep_metrics_through, RunDir};
pub use config::{PpoConfig, PpoEval, PpoEvent, PpoMetrics, Rollout, VALUE};
pub use update::{token_losses, TokenLosses};

/// A PPO run.
pub struct Ppo<'a> {
    pub config: PpoConfig,
    pub model: TrainableLlama,
    optimizer: AdamW,
    state: LoopState,
    /// Full-weight PPO's reference, a second copy of the start (with LoRA the reference is
    /// the policy with its adapter off).
    reference: Option<TrainableLlama>,
    run: RunDir,
    reward: &'a dyn Reward,
    tokenizer: Tokenizer,
    template: Option<String>,
    format: ChatFormat,
    train: Vec<Prompt>,
    val: Vec<Prompt>,
}

/// A policy written for the engine to sample from is removed once its iteration's
/// checkpoint is saved; a run killed between the two leaves it behind. On resume, the
/// policies of finished iterations and every held-out one (never kept) are removed, so a
/// resumed run leaves what an uninterrupted one leaves.
fn remove_stale_policies(out: &Path, done: usize) {
    for i in 1..=done {
        let _ = std::fs::remove_dir_all(out.join(format!("iter-{i}")).join("policy"));
    }
    if let Ok(entries) = std::fs::read_dir(out.join("eval")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("policy-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
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
        crate::policy::claim_run_dir(
            out,
            &settings,
            "PPO",
            resume,
            "the number of iterations",
            |f| Ok(PpoConfig::from_toml_file(f)?.settings_digest() == config.settings_digest()),
        )?;
        let files = TokenizerFiles::load(&config.tuning.model)?;
        let format = ChatFormat::for_model(files.chat_template.as_deref());
        let (train, val) = crate::policy::split_prompts(
            &config.prompts,
            config.val_prompts.as_deref(),
            config.val_fraction,
            &config.unsafe_field,
        )?;
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
        let reference = match config.tuning.lora {
            Some(_) => None,
            None => Some(TrainableLlama::open(
                &config.tuning.model,
                config.tuning.seq_len,
            )?),
        };
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
        let done = (state.step / config.steps_per_iteration()) as usize;
        remove_stale_policies(out, done);
        Ok(Self {
            config,
            model,
            optimizer,
            state,
            reference,
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

    /// The file the engine samples a LoRA policy from: the start model (an f16 copy of an
    /// f32 GGUF).
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
        crate::config::read_json_if_done(&self.eval_path(iteration))
    }

    /// Writes the policy to `dir` for the engine, whole or not at all (kept if there):
    /// with LoRA its adapter (PEFT layout; the engine applies it to the start model), with
    /// full weights the model as f16 GGUF. Returns the model file to sample and the adapter.
    fn write_policy(&self, dir: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
        let done = |d: &Path| {
            if self.reference.is_none() {
                d.join("adapter_config.json")
            } else {
                d.join("model.gguf")
            }
        };
        if !done(dir).exists() {
            let tmp = dir.with_extension("tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            if self.reference.is_none() {
                let base = self.config.tuning.model.display().to_string();
                crate::finetune::save_peft_adapter(&self.model, &tmp, &base)?;
            } else {
                crate::export::export(&self.model, &self.export_info(), &tmp, GgmlType::F16)?;
                let _ = std::fs::remove_dir_all(tmp.join("hf"));
            }
            let _ = std::fs::remove_dir_all(dir);
            std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
        }
        Ok(match self.reference {
            None => (self.sampler()?, Some(dir.to_path_buf())),
            Some(_) => (dir.join("model.gguf"), None),
        })
    }

    fn export_info(&self) -> crate::export::ExportInfo<'_> {
        crate::export::ExportInfo {
            tokenizer: &self.tokenizer,
            chat_template: self.template.as_deref(),
            name: "ppo",
        }
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
        // Where the policy as it is now is written for the engine: its adapter, or (full
        // weights) the whole model in f16.
        let written = if heldout {
            self.run
                .root
                .join("eval")
                .join(format!("policy-{iteration}"))
        } else {
            self.iter_dir(iteration).join("policy")
        };
        std::fs::create_dir_all(written.parent().unwrap_or(&self.run.root))
            .map_err(|e| io(&written, e))?;
        let (model, adapter) = self.write_policy(&written)?;
        let Some(completions) = crate::policy::sample_answers_with(
            &model,
            adapter.as_deref(),
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
            // The measurement's policy is the checkpoint's; it is not kept twice.
            let _ = std::fs::remove_dir_all(&written);
        }
        on_event(PpoEvent::Stage {
            iteration,
            what: "scoring the answers",
        });
        let scores = crate::policy::score_answers(self.reward, prompts, &completions)?
            .into_iter()
            .flatten()
            .collect();
        let flat: Vec<Completion> = completions.into_iter().flatten().collect();
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
        if self.reference.is_none() {
            let adapter = self.run.root.join("adapter");
            let _ = std::fs::remove_dir_all(&adapter);
            self.write_policy(&adapter)?;
        }
        crate::export::export(
            &self.model,
            &self.export_info(),
            &self.run.root,
            GgmlType::F32,
        )?;
        Ok(())
    }
}
