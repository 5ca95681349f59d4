//! `ferrollama rs`: rejection-sampling fine-tuning, in rounds (see
//! `ferrollama_train::rejection`): K answers per prompt from the latest model, scored by
//! reward models, the best fine-tuned on; the held-out reward and the KL to the start
//! printed per round and plotted.

use std::path::PathBuf;

use anyhow::Result;
use ferrollama_train::policy::RewardModels;
use ferrollama_train::rejection::{RejectionSampling, RoundSummary, RsConfig, RsEvent};
use ferrollama_train::Event;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cmd::tuning::TuningArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model to start from and the fine-tuning of each round (`--val-data` names
    /// held-out prompts here; default: --val-fraction of --prompts).
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The run directory.
    #[arg(long, default_value = "rs-run")]
    pub out: PathBuf,
    /// Rounds of sampling and fine-tuning (default 2; may be raised on --resume).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Answers sampled per prompt, K (default 4).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Sampling temperature of the answers (default 1.0).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Top-p of the answers (default 1.0: nothing cut).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Most tokens per answer (default 256); an answer cut there is never kept.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// A string that ends an answer (repeatable), beside the end-of-turn token.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Answers decoded together (default 8).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Answers per held-out prompt in each measurement (default 1).
    #[arg(long)]
    pub val_samples: Option<usize>,
    /// Share of --prompts held out when --val-data is not given (default 0.1).
    #[arg(long)]
    pub val_fraction: Option<f64>,
}

/// What RS and PPO train a policy on: prompts and the reward models that score its answers.
#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    /// Prompts, JSON Lines: `messages` (ending with a user turn; a final assistant message
    /// is dropped), `prompt`, or `instruction` (+ `input`); optional boolean --unsafe-field.
    #[arg(long)]
    pub prompts: PathBuf,
    /// The helpfulness reward model (a `ferrollama reward train` output).
    #[arg(long)]
    pub reward: PathBuf,
    /// A safety reward model, combined with --reward as Llama 2 does.
    #[arg(long)]
    pub safety_reward: Option<PathBuf>,
    /// The boolean field of a prompt record that marks it unsafe.
    #[arg(long)]
    pub unsafe_field: Option<String>,
}

impl PolicyArgs {
    /// The reward models' directories (absolute, checked) and the models opened, scoring
    /// `batch` conversations per forward.
    pub fn open_rewards(&self, batch: usize) -> Result<(PathBuf, Option<PathBuf>, RewardModels)> {
        let helpful = self.reward.canonicalize()?;
        let safety = self
            .safety_reward
            .as_ref()
            .map(|p| p.canonicalize())
            .transpose()?;
        crate::cmd::dpo::check_reward_dir(&helpful)?;
        if let Some(s) = &safety {
            crate::cmd::dpo::check_reward_dir(s)?;
        }
        let models = RewardModels::open(&helpful, safety.as_deref(), batch)?;
        Ok((helpful, safety, models))
    }
}

/// LoRA's peak learning rate, as `sft`'s.
const LORA_LR: f64 = 2e-4;

pub fn run(a: Args) -> Result<()> {
    let t = &a.tuning;
    t.model
        .no_adapters("rs (each round trains a new adapter with --lora-rank)")?;
    if t.gguf_type()? != ferrollama_gguf::GgmlType::F32 {
        anyhow::bail!("rs exports each round's model as f32 (the next round samples from it exactly); quantize the last one with `ferrollama convert`");
    }
    crate::cmd::train::keep_freed_memory()?;
    let model_path = crate::load::model_path(&t.model)?;
    let saved = a.out.join("rs.toml");
    let mut cfg = if t.resume && saved.exists() {
        RsConfig::from_toml_file(&saved)?
    } else {
        RsConfig::default()
    };
    let sft_lr = if cfg.tuning.lora.is_some() || t.lora_rank.is_some() {
        LORA_LR
    } else {
        cfg.tuning.lr
    };
    cfg.tuning = t.apply(cfg.tuning, &model_path, &a.policy.prompts, sft_lr)?;
    cfg.prompts = cfg.tuning.data.clone();
    if let Some(v) = cfg.tuning.val_data.take() {
        cfg.val_prompts = Some(v);
    }
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = a.$field.clone() { cfg.$field = v; } )* };
    }
    set!(rounds, samples, val_samples, val_fraction);
    if let Some(v) = &a.policy.unsafe_field {
        cfg.unsafe_field = v.clone();
    }
    if let Some(v) = a.temperature {
        cfg.sampling.temperature = v;
    }
    if let Some(v) = a.top_p {
        cfg.sampling.top_p = v;
    }
    if let Some(v) = a.max_new_tokens {
        cfg.sampling.max_new_tokens = v;
    }
    if let Some(v) = a.parallel {
        cfg.sampling.parallel = v;
    }
    if !a.stop.is_empty() {
        cfg.sampling.stop = a.stop.clone();
    }
    let (reward, safety_reward, rewards) = a.policy.open_rewards(cfg.score_batch)?;
    (cfg.reward, cfg.safety_reward) = (reward, safety_reward);
    let rs = RejectionSampling::new(cfg.clone(), &a.out, t.resume, &rewards)?;
    let stop = crate::cmd::train::stop_on_signals();
    let bar = ProgressBar::hidden();
    let say = |line: String| bar.suspend(|| eprintln!("{line}"));
    let outcome = rs.run(stop, &mut |e| match e {
        RsEvent::Started {
            train_prompts,
            val_prompts,
        } => say(format!(
            "rejection sampling from {}: {train_prompts} training and {val_prompts} held-out prompts, {} rounds of {} answers per prompt at temperature {}",
            cfg.tuning.model.display(),
            cfg.rounds,
            cfg.samples,
            cfg.sampling.temperature
        )),
        RsEvent::Sampling {
            round,
            heldout,
            done,
            total,
        } => {
            if done == 1 {
                let what = if heldout {
                    format!("round {round}: held-out answers")
                } else {
                    format!("round {round}: sampling")
                };
                say(format!("{what} ({total})"));
                restyle(&bar, total as u64, "answers");
                bar.set_message(what);
            }
            bar.set_position(done as u64);
        }
        RsEvent::Stage { round, what } => {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            say(format!("round {round}: {what}"));
        }
        RsEvent::Sampled {
            round,
            sampled,
            kept,
            skipped,
        } => say(format!(
            "round {round}: {} answers, mean reward {:.3} (median {:.3}); best of each prompt: mean {:.3}{}",
            sampled.n,
            sampled.mean,
            sampled.median,
            kept.mean,
            if skipped > 0 { format!(", {skipped} prompt(s) without a finished answer skipped") } else { String::new() }
        )),
        RsEvent::Tuning { round, event } => match event {
            Event::Started {
                total_steps,
                start_step,
                ..
            } => {
                restyle(&bar, total_steps, "steps");
                bar.set_message(format!("round {round}: fine-tuning"));
                bar.set_position(start_step);
            }
            Event::Step(m) => {
                bar.set_position(m.step);
                bar.set_message(format!("round {round}: fine-tuning, loss {:.4}", m.loss));
            }
            _ => {}
        },
        RsEvent::Round(s) => {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            say(round_line(s));
        }
        _ => {}
    })?;
    bar.finish_and_clear();
    match outcome {
        None => eprintln!("stopped; `--resume` with the same settings continues the run"),
        Some(rounds) => {
            println!("{}", table(&rounds));
            println!(
                "the last round's model: {}; figures in {} and rewards.png",
                a.out.join("model.gguf").display(),
                a.out.join("rounds.jsonl").display()
            );
        }
    }
    Ok(())
}

/// Shows `bar` on stderr counting `total` `unit`.
fn restyle(bar: &ProgressBar, total: u64, unit: &str) {
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_length(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  [{{elapsed_precise}} < {{eta_precise}}]"
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(500));
}

fn round_line(s: &RoundSummary) -> String {
    heldout_line(&format!("round {}", s.round), &s.heldout)
}

/// A policy's held-out measurement in one line, after `label`.
pub fn heldout_line(label: &str, h: &ferrollama_train::rejection::HeldOut) -> String {
    format!(
        "{label}: held-out reward mean {:.3} (std {:.3}, median {:.3}), KL to the start {:.3} nats, {:.0} % of answers finished",
        h.reward.mean,
        h.reward.std,
        h.reward.median,
        h.kl,
        100.0 * h.finished
    )
}

/// The rounds as a Markdown table.
fn table(rounds: &[RoundSummary]) -> String {
    let mut out = String::from(
        "| round | held-out reward (mean ± std) | median | KL to start | finished | sampled mean | kept mean | SFT steps |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in rounds {
        let h = &s.heldout;
        let opt = |d: Option<ferrollama_train::policy::Distribution>| {
            d.map_or("".to_string(), |d| format!("{:.3}", d.mean))
        };
        out.push_str(&format!(
            "| {} | {:.3} ± {:.3} | {:.3} | {:.3} | {:.2} | {} | {} | {} |\n",
            s.round,
            h.reward.mean,
            h.reward.std,
            h.reward.median,
            h.kl,
            h.finished,
            opt(s.sampled),
            opt(s.kept),
            s.sft_steps
        ));
    }
    out
}
