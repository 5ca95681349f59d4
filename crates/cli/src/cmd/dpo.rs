//! `ferrollama dpo` and `ferrollama reward train`: training on preference pairs (DPO or
//! IPO on the policy; a reward model's score head and backbone), full or LoRA/QLoRA;
//! resumable; exports GGUF and HF (and the adapter, and a reward model's score head) at
//! the end.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ferrollama_train::preference::{
    Objective, PairConfig, PairEvent, PairTrainer, PreferenceData, PreferenceLoss, PreferenceStats,
};

use crate::cmd::tuning::{finish, report_peak_rss, steps_bar, tokenizer_of, TuningArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub pairs: PairArgs,
    /// How far the policy may move from the reference (DPO's beta).
    #[arg(long)]
    pub beta: Option<f64>,
    /// The preference loss: sigmoid (DPO) or ipo.
    #[arg(long, value_parser = ["sigmoid", "ipo"])]
    pub loss: Option<String>,
    /// Add this weight times the chosen answers' negative log-likelihood per token (RPO;
    /// Llama 3 used 0.2), which keeps DPO from lowering the chosen answers with the
    /// rejected ones.
    #[arg(long)]
    pub nll_weight: Option<f64>,
}

/// What every preference command takes.
#[derive(clap::Args, Debug)]
pub struct PairArgs {
    #[command(flatten)]
    pub tuning: TuningArgs,
    /// Preference pairs, JSON Lines or one JSON array: `prompt` + `chosen` + `rejected`
    /// (strings, or lists of messages), or `chosen` + `rejected` as whole conversations;
    /// optional `margin` (or `chosen_rating` + `rejected_rating`).
    #[arg(long)]
    pub data: PathBuf,
    /// The run directory: metrics.jsonl, checkpoints, plots, the model.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// DPO's learning rate with LoRA (full DPO's default is 1e-6).
const DPO_LORA_LR: f64 = 5e-5;
/// A reward model's learning rate with LoRA (full: 1e-5).
pub const REWARD_LORA_LR: f64 = 1e-4;

pub fn run(a: Args) -> Result<()> {
    run_pairs(&a.pairs, "dpo-run", PairConfig::dpo(), DPO_LORA_LR, |cfg| {
        if let Objective::Dpo { beta, loss, nll } = &mut cfg.objective {
            if let Some(b) = a.beta {
                *beta = b;
            }
            if let Some(w) = a.nll_weight {
                *nll = w;
            }
            match a.loss.as_deref() {
                Some("ipo") => *loss = PreferenceLoss::Ipo,
                Some(_) => *loss = PreferenceLoss::Sigmoid,
                None => {}
            }
        }
    })
}

fn stats_line(objective: &Objective, s: &PreferenceStats) -> String {
    match objective {
        Objective::Dpo { .. } => format!(
            "loss {:.4}, reward margin {:+.4} (accuracy {:.3}), log-prob margin {:+.3} (chosen more likely in {:.3})",
            s.loss, s.objective_margin, s.objective_accuracy, s.margin, s.accuracy
        ),
        Objective::Reward { .. } => format!(
            "loss {:.4}, pairwise accuracy {:.3}, score margin {:+.3}",
            s.loss, s.accuracy, s.margin
        ),
    }
}

/// Trains on the pairs `a` names: `start` (a fresh run's settings) with the flags applied
/// and `configure` run; a run resumed takes its directory's own settings.
pub fn run_pairs(
    a: &PairArgs,
    default_out: &str,
    start: PairConfig,
    lora_lr: f64,
    configure: impl FnOnce(&mut PairConfig),
) -> Result<()> {
    let t = &a.tuning;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(default_out));
    t.model.no_adapters(
        "preference training (it trains a new adapter with --lora-rank; merge one first with `ferrollama merge`)",
    )?;
    crate::cmd::train::keep_freed_memory()?;
    let model_path = crate::load::model_path(&t.model)?;
    let (tokenizer, template, format) = tokenizer_of(&model_path)?;
    let saved = out.join(start.file_name());
    let mut cfg = if t.resume && saved.exists() {
        PairConfig::from_toml_file(&saved)?
    } else {
        start
    };
    cfg.tuning = t.apply(cfg.tuning, &model_path, &a.data, lora_lr)?;
    configure(&mut cfg);
    let gguf_type = t.gguf_type()?;
    let is_dpo = matches!(cfg.objective, Objective::Dpo { .. });
    let data = PreferenceData::load(&cfg.tuning, &format, &tokenizer, is_dpo)?;
    if data.cut + data.dropped > 0 {
        eprintln!(
            "note: {} pair(s) had a side longer than {} tokens; {} dropped{}",
            data.cut,
            cfg.tuning.seq_len,
            data.dropped,
            if is_dpo {
                " (an answer wholly past the cut), the others cut"
            } else {
                " (a reward model scores the last token)"
            }
        );
    }
    let (n_train, n_val) = (data.train.len(), data.val.len());
    let stop = crate::cmd::train::stop_on_signals();
    let mut trainer = PairTrainer::new(cfg.clone(), data, &tokenizer, &out, t.resume)?;
    let bar = steps_bar(trainer.total_steps())?;
    let say = |line: String| bar.suspend(|| eprintln!("{line}"));
    let objective = cfg.objective.clone();
    let summary = trainer.run(stop, &mut |e| match e {
        PairEvent::Reference { pairs } => say(format!(
            "reference log-probabilities of {pairs} pairs (the model as it starts)"
        )),
        PairEvent::Started {
            start_step,
            total_steps,
            parameters,
        } => {
            say(format!(
                "model {} ({:.2}M trained parameters), {n_train} training and {n_val} held-out pairs, {total_steps} steps of {} pairs, {:?}{}",
                cfg.tuning.model.display(),
                parameters as f64 / 1e6,
                cfg.tuning.batch_size,
                objective,
                if start_step > 0 { format!(", resuming at step {start_step}") } else { String::new() }
            ));
            bar.set_position(start_step);
        }
        PairEvent::Initial(s) => say(format!("step 0, held out: {}", stats_line(&objective, s))),
        PairEvent::Step(m) => {
            bar.set_position(m.step);
            bar.set_message(format!(
                "loss {:.4}  accuracy {:.3}  lr {:.2e}",
                m.loss, m.train.objective_accuracy, m.lr
            ));
            if let Some(v) = &m.val {
                say(format!(
                    "step {}, held out: {}",
                    m.step,
                    stats_line(&objective, v)
                ));
            }
        }
        PairEvent::Checkpoint(dir) => say(format!("checkpoint {}", dir.display())),
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
    if !is_dpo {
        ferrollama_train::reward::save_score(&out, &trainer.score_weight()?)?;
        println!(
            "wrote the score head to {}",
            out.join("score.safetensors").display()
        );
    }
    finish(
        &trainer.model,
        &cfg.tuning,
        &tokenizer,
        template.as_deref(),
        &out,
        gguf_type,
    )
}

/// The directory a reward model was written to must hold its parts.
pub fn check_reward_dir(dir: &Path) -> Result<()> {
    for f in ["model.gguf", "score.safetensors"] {
        if !dir.join(f).exists() {
            anyhow::bail!(
                "{}: no {f} (give the --out directory of `ferrollama reward train`)",
                dir.display()
            );
        }
    }
    Ok(())
}
