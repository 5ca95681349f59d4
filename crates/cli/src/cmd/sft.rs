//! `ferrollama sft`: supervised fine-tuning of a checkpoint on conversations, the loss on
//! the assistant's tokens only, samples packed; resumable; exports GGUF and HF at the end.

use std::path::PathBuf;

use anyhow::Result;
use ferrollama_generate::ChatFormat;
use ferrollama_train::finetune::{FineTuner, SftConfig, SftData};
use ferrollama_train::Event;

use crate::cmd::tuning::{finish, report_peak_rss, steps_bar, tokenizer_of, TuningArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub tuning: TuningArgs,
    /// Conversations, JSON Lines or one JSON array: `messages` (system/user/assistant),
    /// `prompt` + `completion`, or `instruction` + `input` + `output`.
    #[arg(long)]
    pub data: PathBuf,
    /// The run directory: metrics.jsonl, checkpoints, plots, the exported model.
    #[arg(long, default_value = "sft-run")]
    pub out: PathBuf,
    /// One conversation per row instead of packing several.
    #[arg(long)]
    pub no_packing: bool,
    /// Print the first N conversations as rendered, the learned text between [[ and ]],
    /// and exit.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1")]
    pub show_mask: Option<usize>,
}

/// LoRA's usual peak learning rate (the QLoRA paper's for small models), ten times full
/// fine-tuning's: only the small adapters move.
const LORA_LR: f64 = 2e-4;

pub fn run(a: Args) -> Result<()> {
    let t = &a.tuning;
    t.model.no_adapters(
        "sft (it trains a new adapter with --lora-rank; merge one first with `ferrollama merge`)",
    )?;
    crate::cmd::train::keep_freed_memory()?;
    let model_path = crate::load::model_path(&t.model)?;
    let (tokenizer, template, format) = tokenizer_of(&model_path)?;
    if let Some(n) = a.show_mask {
        return show_mask(&a.data, &format, &tokenizer, n);
    }
    let start = if t.resume && a.out.join("sft.toml").exists() {
        SftConfig::from_toml_file(&a.out.join("sft.toml"))?
    } else {
        SftConfig::default()
    };
    let mut cfg = t.apply(start, &model_path, &a.data, LORA_LR)?;
    if a.no_packing {
        cfg.pack = false;
    }
    let gguf_type = t.gguf_type()?;
    let data = SftData::load(&cfg, &format, &tokenizer)?;
    if data.cut + data.dropped > 0 {
        eprintln!(
            "note: {} conversation(s) longer than {} tokens were cut, {} of them dropped (nothing learned was left)",
            data.cut, cfg.seq_len, data.dropped
        );
    }
    let stop = crate::cmd::train::stop_on_signals();
    let mut tuner = FineTuner::new(cfg.clone(), data, &tokenizer, &a.out, t.resume)?;
    let total = tuner.total_steps();
    let bar = steps_bar(total)?;
    let say = |line: String| bar.suspend(|| eprintln!("{line}"));
    let summary = tuner.run(stop, &mut |e| match e {
        Event::Started {
            start_step,
            parameters,
            train_tokens,
            val_tokens,
            total_steps,
        } => {
            say(format!(
                "model {} ({:.2}M trained parameters), {train_tokens} training and {val_tokens} held-out tokens, {total_steps} steps of {} rows{}",
                cfg.model.display(),
                parameters as f64 / 1e6,
                cfg.batch_size,
                if start_step > 0 { format!(", resuming at step {start_step}") } else { String::new() }
            ));
            say(format!(
                "learning rate: warm-up {} steps to {:.2e}, cosine to {:.2e}; rows of {} tokens, {}",
                cfg.warmup,
                cfg.lr,
                cfg.lr * cfg.min_lr_ratio,
                cfg.seq_len,
                if cfg.pack { "conversations packed" } else { "one conversation per row" }
            ));
            bar.set_position(start_step);
        }
        Event::InitialValidation { val_loss } => say(format!(
            "step 0 (the model fine-tuned): held-out loss {val_loss:.4} per answer token"
        )),
        Event::Step(m) => {
            bar.set_position(m.step);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                m.loss, m.lr, m.tokens_per_s
            ));
            if let Some(v) = m.val_loss {
                say(format!(
                    "step {}: train loss {:.4}, held-out loss {v:.4}",
                    m.step, m.loss
                ));
            }
        }
        Event::Checkpoint(dir) => say(format!("checkpoint {}", dir.display())),
        _ => {}
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
        &tuner.model,
        &cfg,
        &tokenizer,
        template.as_deref(),
        &a.out,
        gguf_type,
    )
}

/// Prints the first `n` conversations of `data` with their learned text marked.
fn show_mask(
    data: &std::path::Path,
    format: &ChatFormat,
    tok: &ferrollama_tokenizer::Tokenizer,
    n: usize,
) -> Result<()> {
    let conversations = ferrollama_train::sft::read_conversations(data)?;
    for (i, c) in conversations.iter().take(n).enumerate() {
        let s = c.encode(format, tok)?;
        let learned = s.scored.iter().filter(|&&x| x).count();
        println!(
            "--- conversation {} ({} tokens, {learned} learned, between [[ and ]])",
            i + 1,
            s.tokens.len()
        );
        println!("{}", ferrollama_train::sft::show_mask(tok, &s));
    }
    Ok(())
}
