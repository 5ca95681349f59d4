//! Rejection-sampling fine-tuning (Llama 2-Chat, Touvron et al. 2023, 3.2.3): each round
//! samples K answers to every training prompt from the latest policy (batched on the decode
//! engine), scores them with the reward, keeps the best answer of each prompt, and
//! fine-tunes on those (SFT, the loss on the answer only); the next round starts from the
//! model that one made. Before the first round and after each, the policy answers the
//! held-out prompts (one sample each at temperature 1, its own distribution) and is
//! measured: the reward of its answers and its KL to the starting model,
//! KL(π‖π₀) ≈ mean over those answers of log π(y|x) - log π₀(y|x).
//!
//! The run directory: `rs.toml` (the settings), `round-0/` (the start measured),
//! `round-N/` with `samples.jsonl` (every answer, its reward, the best marked),
//! `best.jsonl` (the SFT data), `sft/` (the fine-tuning run, checkpointed), `model.gguf`
//! and `hf/` (the round's model), `heldout.jsonl` and `summary.json`; `rounds.jsonl` and
//! `rewards.{svg,png}` over all rounds, `model.gguf` the last round's. Each stage's output
//! is written whole or not at all, so a stopped run resumes at the stage it stopped in
//! (the SFT at its last checkpoint) and ends bit-identical to a run straight through.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ferrollama_generate::{ChatFormat, Completion, FinishReason};
use ferrollama_gguf::GgmlType;
use ferrollama_model::TrainableLlama;
use ferrollama_tokenizer::{Tokenizer, TokenizerFiles};
use serde_json::json;

use crate::error::{io, Error, Result};
use crate::finetune::{FineTuner, SftConfig, SftData};
use crate::policy::{answer_logprobs, sample_answers, Distribution, Prompt, Reward, Sampling};
use crate::trainer::Event;

/// Everything that shapes a rejection-sampling run (`rs.toml`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RsConfig {
    /// Prompts to sample answers for (see [`crate::policy::read_prompts`]).
    pub prompts: PathBuf,
    /// Held-out prompts; without them `val_fraction` of `prompts` is held out.
    pub val_prompts: Option<PathBuf>,
    pub val_fraction: f64,
    /// The boolean field of a prompt record that marks it unsafe.
    pub unsafe_field: String,
    /// The reward: a `ferrollama reward train` output, and optionally a safety one.
    pub reward: PathBuf,
    pub safety_reward: Option<PathBuf>,
    pub rounds: usize,
    /// Answers sampled per prompt (K).
    pub samples: usize,
    pub sampling: Sampling,
    /// Answers per held-out prompt in each measurement.
    pub val_samples: usize,
    /// Conversations per forward pass when scoring and measuring.
    pub score_batch: usize,
    pub seed: u64,
    /// Each round's fine-tuning; `model` is the model the run starts from, `data` is set
    /// per round.
    pub tuning: SftConfig,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 256,
            stop: Vec::new(),
            parallel: 8,
        }
    }
}

impl Default for RsConfig {
    fn default() -> Self {
        Self {
            prompts: PathBuf::new(),
            val_prompts: None,
            val_fraction: 0.1,
            unsafe_field: "unsafe".into(),
            reward: PathBuf::new(),
            safety_reward: None,
            rounds: 2,
            samples: 4,
            sampling: Sampling::default(),
            val_samples: 1,
            score_batch: 8,
            seed: 1234,
            tuning: SftConfig {
                epochs: 1,
                val_fraction: 0.0,
                ..SftConfig::default()
            },
        }
    }
}

impl RsConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        crate::config::read_toml(path)
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.into()));
        if self.rounds == 0 || self.samples == 0 || self.val_samples == 0 {
            return bad("rounds, samples and val_samples must be at least 1");
        }
        if self.samples < 2 {
            return bad("rejection sampling needs at least 2 samples per prompt to choose from");
        }
        self.sampling.check()?;
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad("val_fraction must be in [0, 1)");
        }
        self.tuning.check()
    }

    /// What a resumed run must share with the one it continues: all but the number of
    /// rounds (which may be raised) and the intervals of the fine-tuning.
    pub fn settings_digest(&self) -> String {
        let mut shaping = self.clone();
        shaping.rounds = 0;
        shaping.tuning.eval_every = 0;
        shaping.tuning.checkpoint_every = 0;
        shaping.tuning.keep_checkpoints = 0;
        crate::config::fnv_digest(&serde_json::to_string(&shaping).unwrap_or_default())
    }
}

/// One answer of a round, as `samples.jsonl` keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Answer {
    pub text: String,
    /// Whether it ended (end of turn) rather than at the token limit.
    pub finished: bool,
    pub reward: f64,
}

/// One prompt's answers in a round and the index of the one kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromptAnswers {
    pub prompt: usize,
    pub answers: Vec<Answer>,
    /// The highest-reward finished answer (None when no answer finished: a cut answer
    /// would teach the model not to stop).
    pub best: Option<usize>,
}

/// The best finished answer's index.
pub fn choose_best(answers: &[Answer]) -> Option<usize> {
    answers
        .iter()
        .enumerate()
        .filter(|(_, a)| a.finished && a.reward.is_finite())
        .max_by(|a, b| a.1.reward.total_cmp(&b.1.reward).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i)
}

/// The policy measured on the held-out prompts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeldOut {
    pub reward: Distribution,
    /// KL(π‖π₀) per answer in nats (0 for the starting model).
    pub kl: f64,
    /// Share of answers that ended before the token limit.
    pub finished: f64,
}

/// One round's figures (`summary.json`, a line of `rounds.jsonl`); round 0 is the start.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoundSummary {
    pub round: usize,
    pub model: PathBuf,
    /// The rewards of all K answers of the training prompts, and of the kept ones.
    pub sampled: Option<Distribution>,
    pub kept: Option<Distribution>,
    /// Prompts with no finished answer (nothing kept).
    pub skipped: usize,
    pub sft_steps: u64,
    pub heldout: HeldOut,
}

/// What the run reports as it goes.
#[derive(Debug)]
#[non_exhaustive]
pub enum RsEvent<'a> {
    Started {
        train_prompts: usize,
        val_prompts: usize,
    },
    /// Answers sampled so far in a round's sampling (`heldout`: of a measurement).
    Sampling {
        round: usize,
        heldout: bool,
        done: usize,
        total: usize,
    },
    /// A stage that takes a while without steps (scoring, log-probabilities).
    Stage {
        round: usize,
        what: &'static str,
    },
    /// A round's answers scored and the best kept.
    Sampled {
        round: usize,
        sampled: &'a Distribution,
        kept: &'a Distribution,
        skipped: usize,
    },
    Tuning {
        round: usize,
        event: Event<'a>,
    },
    Round(&'a RoundSummary),
}

/// Answers per prompt, and the reward of each.
type Answered = (Vec<Vec<Completion>>, Vec<Vec<f64>>);

/// A rejection-sampling run.
pub struct RejectionSampling<'a> {
    pub config: RsConfig,
    out: PathBuf,
    reward: &'a dyn Reward,
    tokenizer: Tokenizer,
    template: Option<String>,
    format: ChatFormat,
    train: Vec<Prompt>,
    val: Vec<Prompt>,
}

impl<'a> RejectionSampling<'a> {
    /// Prepares a run in `out`: a new one (refused if `out` holds one), or with `resume`
    /// the one there, which must have been made with the same settings.
    pub fn new(config: RsConfig, out: &Path, resume: bool, reward: &'a dyn Reward) -> Result<Self> {
        config.check()?;
        let settings = out.join("rs.toml");
        crate::policy::claim_run_dir(
            out,
            &settings,
            "rejection-sampling",
            resume,
            "the number of rounds",
            |f| Ok(RsConfig::from_toml_file(f)?.settings_digest() == config.settings_digest()),
        )?;
        let text = toml::to_string_pretty(&config)
            .map_err(|e| Error::Internal(format!("encoding the settings: {e}")))?;
        write_atomic(&settings, text.as_bytes())?;
        let files = TokenizerFiles::load(&config.tuning.model)?;
        let format = ChatFormat::for_model(files.chat_template.as_deref());
        let (train, val) = crate::policy::split_prompts(
            &config.prompts,
            config.val_prompts.as_deref(),
            config.val_fraction,
            &config.unsafe_field,
        )?;
        Ok(Self {
            config,
            out: out.to_path_buf(),
            reward,
            tokenizer: files.tokenizer,
            template: files.chat_template,
            format,
            train,
            val,
        })
    }

    fn round_dir(&self, round: usize) -> PathBuf {
        self.out.join(format!("round-{round}"))
    }

    /// The model round `round` starts from (the start for round 1).
    fn policy_of(&self, round: usize) -> PathBuf {
        if round <= 1 {
            self.config.tuning.model.clone()
        } else {
            self.round_dir(round - 1).join("model.gguf")
        }
    }

    /// The file the policy after round `round` (0: the start) samples from: see
    /// [`crate::policy::sampling_copy`].
    fn sampler_of(&self, round: usize) -> Result<PathBuf> {
        let model = self.policy_of(round + 1);
        crate::policy::sampling_copy(&model, &self.round_dir(round).join("sampling-f16.gguf"))
    }

    /// Runs the rounds not done yet; the summaries of rounds 0..=rounds, or None when
    /// `stop` was set (everything finished so far is kept).
    pub fn run(
        &self,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(RsEvent),
    ) -> Result<Option<Vec<RoundSummary>>> {
        on_event(RsEvent::Started {
            train_prompts: self.train.len(),
            val_prompts: self.val.len(),
        });
        let mut summaries = Vec::new();
        let Some(start) = self.measured(0, None, stop, on_event)? else {
            return Ok(None);
        };
        summaries.push(start);
        for round in 1..=self.config.rounds {
            let Some(s) = self.round(round, stop, on_event)? else {
                return Ok(None);
            };
            summaries.push(s);
            let lines: String = summaries
                .iter()
                .map(|s| serde_json::to_string(s).map(|l| l + "\n"))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::Internal(format!("encoding a summary: {e}")))?;
            write_atomic(&self.out.join("rounds.jsonl"), lines.as_bytes())?;
            crate::plot::plot_rounds(&summaries, &self.out)?;
        }
        // The f16 sampling copies are made again on demand (a resume with more rounds);
        // each is half the model's f32 size.
        for round in 0..=self.config.rounds {
            let _ = std::fs::remove_file(self.round_dir(round).join("sampling-f16.gguf"));
        }
        let last = self.round_dir(self.config.rounds).join("model.gguf");
        let link = self.out.join("model.gguf");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&last, &link)
            .or_else(|_| std::fs::copy(&last, &link).map(|_| ()))
            .map_err(|e| io(&link, e))?;
        Ok(Some(summaries))
    }

    /// One round, from where a stopped run left it.
    fn round(
        &self,
        round: usize,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(RsEvent),
    ) -> Result<Option<RoundSummary>> {
        let dir = self.round_dir(round);
        if let Some(done) = read_summary(&dir)? {
            on_event(RsEvent::Round(&done));
            return Ok(Some(done));
        }
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let samples = dir.join("samples.jsonl");
        let answers = if samples.exists() {
            read_answers(&samples)?
        } else {
            let Some(a) = self.sample_and_score(round, stop, on_event)? else {
                return Ok(None);
            };
            a
        };
        let all: Vec<f64> = answers
            .iter()
            .flat_map(|p| p.answers.iter().map(|a| a.reward))
            .collect();
        let kept: Vec<f64> = answers
            .iter()
            .filter_map(|p| p.best.map(|b| p.answers[b].reward))
            .collect();
        let skipped = answers.iter().filter(|p| p.best.is_none()).count();
        let (sampled, kept) = (Distribution::of(&all), Distribution::of(&kept));
        on_event(RsEvent::Sampled {
            round,
            sampled: &sampled,
            kept: &kept,
            skipped,
        });
        let model = dir.join("model.gguf");
        let mut sft_steps = 0;
        if !model.exists() {
            let Some(steps) = self.fine_tune(round, stop, on_event)? else {
                return Ok(None);
            };
            sft_steps = steps;
        }
        let Some(mut summary) = self.measured(round, Some(&model), stop, on_event)? else {
            return Ok(None);
        };
        summary.sampled = Some(sampled);
        summary.kept = Some(kept);
        summary.skipped = skipped;
        if sft_steps == 0 {
            sft_steps = last_step(&dir.join("sft").join("metrics.jsonl"));
        }
        summary.sft_steps = sft_steps;
        write_summary(&dir, &summary)?;
        on_event(RsEvent::Round(&summary));
        Ok(Some(summary))
    }

    /// Samples K answers per training prompt from the round's policy, scores them, and
    /// writes `best.jsonl` then `samples.jsonl` (the latter marks the stage done).
    fn sample_and_score(
        &self,
        round: usize,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(RsEvent),
    ) -> Result<Option<Vec<PromptAnswers>>> {
        let cfg = &self.config;
        let seed = crate::finetune::mix(cfg.seed, round as u64, 1);
        let Some((completions, rewards)) = self.answered(
            round,
            false,
            cfg.samples,
            &cfg.sampling,
            seed,
            stop,
            on_event,
        )?
        else {
            return Ok(None);
        };
        let answers: Vec<PromptAnswers> = completions
            .iter()
            .zip(rewards)
            .enumerate()
            .map(|(i, (cs, rs))| {
                let answers: Vec<Answer> = cs
                    .iter()
                    .zip(rs)
                    .map(|(c, reward)| Answer {
                        text: c.text.clone(),
                        finished: c.finish == FinishReason::Stop,
                        reward,
                    })
                    .collect();
                PromptAnswers {
                    prompt: i,
                    best: choose_best(&answers),
                    answers,
                }
            })
            .collect();
        let dir = self.round_dir(round);
        let mut best = String::new();
        for p in &answers {
            let Some(b) = p.best else { continue };
            let c = self.train[p.prompt].answered(&p.answers[b].text);
            best.push_str(&c.to_record().to_string());
            best.push('\n');
        }
        write_atomic(&dir.join("best.jsonl"), best.as_bytes())?;
        let lines: String = answers
            .iter()
            .map(|p| serde_json::to_string(p).map(|l| l + "\n"))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Internal(format!("encoding answers: {e}")))?;
        write_atomic(&dir.join("samples.jsonl"), lines.as_bytes())?;
        Ok(Some(answers))
    }

    /// `per_prompt` answers to the training (or `heldout`) prompts from the policy after
    /// round `round - 1` (held out: after `round`), and their rewards; None when stopped.
    #[allow(clippy::too_many_arguments)]
    fn answered(
        &self,
        round: usize,
        heldout: bool,
        per_prompt: usize,
        sampling: &Sampling,
        seed: u64,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(RsEvent),
    ) -> Result<Option<Answered>> {
        let (prompts, policy) = if heldout {
            (&self.val, round)
        } else {
            (&self.train, round - 1)
        };
        let Some(completions) = sample_answers(
            &self.sampler_of(policy)?,
            prompts,
            per_prompt,
            sampling,
            seed,
            stop,
            &mut |done, total| {
                on_event(RsEvent::Sampling {
                    round,
                    heldout,
                    done,
                    total,
                })
            },
        )?
        else {
            return Ok(None);
        };
        on_event(RsEvent::Stage {
            round,
            what: if heldout {
                "scoring held-out answers"
            } else {
                "scoring the answers"
            },
        });
        let rewards = crate::policy::score_answers(self.reward, prompts, &completions)?;
        Ok(Some((completions, rewards)))
    }

    /// Fine-tunes the round's policy on its best answers (resuming the round's SFT run if
    /// it has a checkpoint) and exports the model; the steps taken, or None if stopped.
    fn fine_tune(
        &self,
        round: usize,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(RsEvent),
    ) -> Result<Option<u64>> {
        let dir = self.round_dir(round);
        let tuning = SftConfig {
            model: self.policy_of(round),
            data: dir.join("best.jsonl"),
            val_data: None,
            ..self.config.tuning.clone()
        };
        let data = SftData::load(&tuning, &self.format, &self.tokenizer)?;
        let run = dir.join("sft");
        let resume = run.join("checkpoints").exists();
        let mut tuner = FineTuner::new(tuning, data, &self.tokenizer, &run, resume)?;
        let summary = tuner.run(stop, &mut |event| {
            on_event(RsEvent::Tuning { round, event })
        })?;
        if summary.stopped {
            return Ok(None);
        }
        let info = crate::export::ExportInfo {
            tokenizer: &self.tokenizer,
            chat_template: self.template.as_deref(),
            name: &format!("rs-round-{round}"),
        };
        crate::export::export(&tuner.model, &info, &dir, GgmlType::F32)?;
        Ok(Some(summary.steps))
    }

    /// The policy at `model` (the start when None) measured on the held-out prompts:
    /// `heldout.jsonl` and `summary.json` in its round's directory.
    fn measured(
        &self,
        round: usize,
        model: Option<&Path>,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(RsEvent),
    ) -> Result<Option<RoundSummary>> {
        let dir = self.round_dir(round);
        if round == 0 {
            if let Some(done) = read_summary(&dir)? {
                on_event(RsEvent::Round(&done));
                return Ok(Some(done));
            }
        }
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let cfg = &self.config;
        let policy = model.map_or_else(|| cfg.tuning.model.clone(), Path::to_path_buf);
        // The policy's own distribution (temperature 1, nothing cut), so that the answers
        // are draws from π and the KL estimate is unbiased; the same seeds every round.
        let own = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            ..cfg.sampling.clone()
        };
        let seed = crate::finetune::mix(cfg.seed, 0, 2);
        let Some((completions, rewards)) =
            self.answered(round, true, cfg.val_samples, &own, seed, stop, on_event)?
        else {
            return Ok(None);
        };
        let kl_each = match model {
            None => vec![0.0; completions.iter().map(Vec::len).sum()],
            Some(m) => {
                on_event(RsEvent::Stage {
                    round,
                    what: "log-probabilities for the KL",
                });
                self.kl_terms(m, &completions)?
            }
        };
        let mut lines = String::new();
        let mut k = 0;
        for (i, (cs, rs)) in completions.iter().zip(&rewards).enumerate() {
            for (c, r) in cs.iter().zip(rs) {
                let line = json!({"prompt": i, "text": c.text,
                    "finished": c.finish == FinishReason::Stop, "reward": r, "kl": kl_each[k]});
                lines.push_str(&line.to_string());
                lines.push('\n');
                k += 1;
            }
        }
        write_atomic(&dir.join("heldout.jsonl"), lines.as_bytes())?;
        let flat: Vec<f64> = rewards.iter().flatten().copied().collect();
        let n = flat.len().max(1) as f64;
        let finished = completions
            .iter()
            .flatten()
            .filter(|c| c.finish == FinishReason::Stop)
            .count() as f64
            / n;
        let summary = RoundSummary {
            round,
            model: policy,
            sampled: None,
            kept: None,
            skipped: 0,
            sft_steps: 0,
            heldout: HeldOut {
                reward: Distribution::of(&flat),
                kl: kl_each.iter().sum::<f64>() / n,
                finished,
            },
        };
        if round == 0 {
            write_summary(&dir, &summary)?;
            on_event(RsEvent::Round(&summary));
        }
        Ok(Some(summary))
    }

    /// log π(y|x) - log π₀(y|x) for each held-out answer y of the policy at `model`.
    fn kl_terms(&self, model: &Path, completions: &[Vec<Completion>]) -> Result<Vec<f64>> {
        let samples = self
            .val
            .iter()
            .zip(completions)
            .flat_map(|(p, cs)| {
                cs.iter()
                    .map(|c| p.answered(&c.text).encode(&self.format, &self.tokenizer))
            })
            .collect::<Result<Vec<_>>>()?;
        let longest = samples.iter().map(|s| s.tokens.len()).max().unwrap_or(1);
        let pad = self.tokenizer.eos().unwrap_or(0);
        let batch = self.config.score_batch;
        let logp = |path: &Path| -> Result<Vec<f64>> {
            let m = TrainableLlama::open(path, longest)?;
            answer_logprobs(&m, &samples, batch, pad)
        };
        let now = logp(model)?;
        let start = logp(&self.config.tuning.model)?;
        Ok(now.iter().zip(&start).map(|(a, b)| a - b).collect())
    }
}

/// Writes `path` whole or not at all (a temporary beside it, synced, renamed).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    crate::checkpoint::write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// The last step a run's `metrics.jsonl` records (0 when it records none).
fn last_step(metrics: &Path) -> u64 {
    std::fs::read_to_string(metrics)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find_map(|l| serde_json::from_str::<crate::StepMetrics>(l).ok())
        })
        .map_or(0, |m| m.step)
}

fn read_summary(dir: &Path) -> Result<Option<RoundSummary>> {
    crate::config::read_json_if_done(&dir.join("summary.json"))
}

fn write_summary(dir: &Path, s: &RoundSummary) -> Result<()> {
    let text = serde_json::to_string_pretty(s)
        .map_err(|e| Error::Internal(format!("encoding a summary: {e}")))?;
    write_atomic(&dir.join("summary.json"), text.as_bytes())
}

fn read_answers(path: &Path) -> Result<Vec<PromptAnswers>> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Invalid {
                file: path.display().to_string(),
                msg: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(reward: f64, finished: bool) -> Answer {
        Answer {
            text: String::new(),
            finished,
            reward,
        }
    }

    #[test]
    fn the_best_finished_answer_is_kept() {
        assert_eq!(
            choose_best(&[a(1.0, true), a(3.0, false), a(2.0, true)]),
            Some(2)
        );
        assert_eq!(choose_best(&[a(1.0, false)]), None);
        // Ties go to the first drawn.
        assert_eq!(choose_best(&[a(2.0, true), a(2.0, true)]), Some(0));
        assert_eq!(choose_best(&[a(f64::NAN, true), a(-1.0, true)]), Some(1));
    }
}
