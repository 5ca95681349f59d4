//! `ferrollama dpo`: direct preference optimisation (or IPO) of a checkpoint on preference
//! pairs, full or LoRA; the reference log-probabilities computed once; resumable; exports
//! GGUF and HF (and the adapter) at the end.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ferrollama_generate::ChatFormat;
use ferrollama_tokenizer::TokenizerFiles;
use ferrollama_train::dpo::{
    DpoConfig, DpoEvent, DpoTrainer, PreferenceData, PreferenceLoss, PreferenceStats,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cmd::tuning::{finish, report_peak_rss, TuningArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub tuning: TuningArgs,
    /// Preference pairs, JSON Lines or one JSON array: `prompt` + `chosen` + `rejected`
    /// (strings, or lists of messages), or `chosen` + `rejected` as whole conversations.
    #[arg(long)]
    pub data: PathBuf,
    /// The run directory: metrics.jsonl, reference.json, checkpoints, plots, the model.
    #[arg(long, default_value = "dpo-run")]
    pub out: PathBuf,
    /// How far the policy may move from the reference (DPO's beta).
    #[arg(long)]
    pub beta: Option<f64>,
    /// The preference loss: sigmoid (DPO) or ipo.
    #[arg(long, value_parser = ["sigmoid", "ipo"])]
    pub loss: Option<String>,
}

/// DPO's learning rate with LoRA (full DPO's default is 1e-6).
const LORA_LR: f64 = 5e-5;

fn stats_line(s: &PreferenceStats) -> String {
    format!(
        "loss {:.4}, reward margin {:+.4} (accuracy {:.3}), log-prob margin {:+.3} (chosen more likely in {:.3})",
        s.loss, s.reward_margin, s.reward_accuracy, s.logp_margin, s.logp_accuracy
    )
}

pub fn run(a: Args) -> Result<()> {
    let t = &a.tuning;
    t.model.no_adapters(
        "dpo (it trains a new adapter with --lora-rank; merge one first with `ferrollama merge`)",
    )?;
    crate::cmd::train::keep_freed_memory()?;
    let model_path = crate::load::model_path(&t.model)?;
    let files = TokenizerFiles::load(&model_path)
        .with_context(|| format!("reading the tokenizer of {}", model_path.display()))?;
    let (tokenizer, template) = (files.tokenizer, files.chat_template);
    let format = ChatFormat::for_model(template.as_deref());
    let saved = a.out.join("dpo.toml");
    let mut cfg = if t.resume && saved.exists() {
        DpoConfig::from_toml_file(&saved)?
    } else {
        DpoConfig::default()
    };
    cfg.tuning = t.apply(cfg.tuning, &model_path, &a.data, LORA_LR)?;
    if let Some(b) = a.beta {
        cfg.beta = b;
    }
    match a.loss.as_deref() {
        Some("ipo") => cfg.loss = PreferenceLoss::Ipo,
        Some(_) => cfg.loss = PreferenceLoss::Sigmoid,
        None => {}
    }
    let gguf_type = t.gguf_type()?;
    let data = PreferenceData::load(&cfg.tuning, &format, &tokenizer)?;
    if data.cut + data.dropped > 0 {
        eprintln!(
            "note: {} pair(s) had a side longer than {} tokens, cut; {} dropped (an answer wholly past the cut)",
            data.cut, cfg.tuning.seq_len, data.dropped
        );
    }
    let (n_train, n_val) = (data.train.len(), data.val.len());
    let stop = crate::cmd::train::stop_on_signals();
    let mut trainer = DpoTrainer::new(cfg.clone(), data, &tokenizer, &a.out, t.resume)?;
    let bar = ProgressBar::new(trainer.total_steps());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    let say = |line: String| bar.suspend(|| eprintln!("{line}"));
    let summary = trainer.run(stop, &mut |e| match e {
        DpoEvent::Reference { pairs } => say(format!(
            "reference log-probabilities of {pairs} pairs (the model as it starts)"
        )),
        DpoEvent::Started {
            start_step,
            total_steps,
            parameters,
        } => {
            say(format!(
                "model {} ({:.2}M trained parameters), {n_train} training and {n_val} held-out pairs, {total_steps} steps of {} pairs, {:?} loss with beta {}{}",
                cfg.tuning.model.display(),
                parameters as f64 / 1e6,
                cfg.tuning.batch_size,
                cfg.loss,
                cfg.beta,
                if start_step > 0 { format!(", resuming at step {start_step}") } else { String::new() }
            ));
            bar.set_position(start_step);
        }
        DpoEvent::Initial(s) => say(format!("step 0, held out: {}", stats_line(s))),
        DpoEvent::Step(m) => {
            bar.set_position(m.step);
            bar.set_message(format!(
                "loss {:.4}  margin {:+.3}  lr {:.2e}",
                m.loss, m.reward_margin, m.lr
            ));
            if let Some(v) = &m.val {
                say(format!("step {}, held out: {}", m.step, stats_line(v)));
            }
        }
        DpoEvent::Checkpoint(dir) => say(format!("checkpoint {}", dir.display())),
    })?;
    bar.finish_and_clear();
    report_peak_rss();
    if summary.stopped {
        eprintln!(
            "stopped at step {}; `--resume` with the same settings continues it",
            summary.steps
        );
        return Ok(());
    }
    finish(
        &trainer.model,
        &cfg.tuning,
        &tokenizer,
        template.as_deref(),
        &a.out,
        gguf_type,
    )
}
