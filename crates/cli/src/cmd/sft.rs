//! `ferrollama sft`: supervised fine-tuning of a checkpoint on conversations, the loss on
//! the assistant's tokens only, samples packed; resumable; exports GGUF and HF at the end.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use ferrollama_generate::ChatFormat;
use ferrollama_gguf::GgmlType;
use ferrollama_tokenizer::TokenizerFiles;
use ferrollama_train::finetune::{FineTuner, SftConfig, SftData};
use ferrollama_train::Event;
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::ModelArgs;

/// Longest rows by default: Llama 2 fine-tuned on 4096, a length a CPU step cannot afford.
const DEFAULT_SEQ_LEN: usize = 2048;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Conversations, JSON Lines or one JSON array: `messages` (system/user/assistant),
    /// `prompt` + `completion`, or `instruction` + `input` + `output`.
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out conversations (default: 5 % of --data, always the same ones).
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// The run directory: metrics.jsonl, checkpoints, plots, the exported model.
    #[arg(long, default_value = "sft-run")]
    pub out: PathBuf,
    /// Optimizer steps (default: --epochs passes over the data).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Passes over the training conversations (Llama 2: 2).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Peak learning rate (Llama 2's SFT: 2e-5), cosine to 10 %.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Tokens per row (default: the model's context, at most 2048); longer conversations
    /// are cut.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Rows per optimizer step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Rows per forward pass (memory), accumulated into a step.
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// One conversation per row instead of packing several.
    #[arg(long)]
    pub no_packing: bool,
    /// Weight decay (Llama 2: 0.1).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub eval_every: Option<u64>,
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Seed of the data order.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from the run directory's last checkpoint (same settings).
    #[arg(long)]
    pub resume: bool,
    /// Print the first N conversations as rendered, the learned text between [[ and ]],
    /// and exit.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1")]
    pub show_mask: Option<usize>,
    /// Weight type of the exported GGUF: f32, f16, q8_0, q4_0, q4_1.
    #[arg(long, default_value = "f32")]
    pub gguf_type: String,
    /// Train a LoRA adapter of this rank on the frozen model (written in PEFT's layout to
    /// OUT/adapter, and merged into the exported model); the default learning rate is
    /// then 2e-4.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA's alpha (the update is scaled by alpha / rank); default: twice the rank.
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapters' inputs (PEFT's lora_dropout).
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// The projections adapted: any of q, k, v, o, gate, up, down, or all.
    #[arg(long, default_value = "all")]
    pub lora_targets: String,
    /// Scale the update by alpha / sqrt(rank) (rank-stabilised LoRA).
    #[arg(long)]
    pub rslora: bool,
    /// QLoRA: keep the base model's projections quantized, as its GGUF file stores them
    /// (Q4_0, Q4_1, Q8_0, K-quants, ...) or, for a base in f32/f16/bf16, in NF4 with double
    /// quantization; dequantized one projection at a time in the forward and backward
    /// passes; needs --lora-rank.
    #[arg(long, requires = "lora_rank")]
    pub qlora: bool,
}

/// LoRA's usual peak learning rate (the QLoRA paper's for small models), ten times full
/// fine-tuning's: only the small adapters move.
const LORA_LR: f64 = 2e-4;

pub fn run(a: Args) -> Result<()> {
    a.model.no_adapters(
        "sft (it trains a new adapter with --lora-rank; merge one first with `ferrollama merge`)",
    )?;
    crate::cmd::train::keep_freed_memory()?;
    let model_path = crate::load::model_path(&a.model)?;
    let files = TokenizerFiles::load(&model_path)
        .with_context(|| format!("reading the tokenizer of {}", model_path.display()))?;
    let (tokenizer, template) = (files.tokenizer, files.chat_template);
    let format = ChatFormat::for_model(template.as_deref());
    if let Some(n) = a.show_mask {
        return show_mask(&a.data, &format, &tokenizer, n);
    }
    let context = ferrollama_model::weights::with_checkpoint(&model_path, |_, c| Ok(c))?
        .max_position_embeddings;
    let mut cfg = if a.resume && a.out.join("sft.toml").exists() {
        SftConfig::from_toml_file(&a.out.join("sft.toml"))?
    } else {
        SftConfig {
            seq_len: DEFAULT_SEQ_LEN.min(context),
            ..SftConfig::default()
        }
    };
    cfg.model = model_path.canonicalize()?;
    cfg.data = a
        .data
        .canonicalize()
        .with_context(|| a.data.display().to_string())?;
    if let Some(v) = &a.val_data {
        cfg.val_data = Some(v.canonicalize().with_context(|| v.display().to_string())?);
    }
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = a.$field { cfg.$field = v; } )* };
    }
    set!(
        epochs,
        lr,
        warmup,
        seq_len,
        batch_size,
        micro_batch,
        eval_every,
        checkpoint_every,
        seed
    );
    if a.steps.is_some() {
        cfg.steps = a.steps;
    }
    if let Some(w) = a.weight_decay {
        cfg.optim.weight_decay = w;
    }
    if a.no_packing {
        cfg.pack = false;
    }
    if let Some(rank) = a.lora_rank {
        cfg.lora = Some(ferrollama_model::lora::LoraConfig {
            rank,
            alpha: a.lora_alpha.unwrap_or(2.0 * rank as f64),
            dropout: a.lora_dropout,
            targets: ferrollama_model::lora::LoraConfig::parse_targets(&a.lora_targets)?,
            rslora: a.rslora,
        });
        if a.lr.is_none() && !a.resume {
            cfg.lr = LORA_LR;
        }
    }
    if a.qlora {
        cfg.qlora = true;
    }
    if cfg.seq_len > context {
        anyhow::bail!(
            "--seq-len {} exceeds the model's context of {context}",
            cfg.seq_len
        );
    }
    let gguf_type = GgmlType::from_name(&a.gguf_type)
        .ok_or_else(|| anyhow!("unknown type `{}`", a.gguf_type))?;
    let data = SftData::load(&cfg, &format, &tokenizer)?;
    if data.cut + data.dropped > 0 {
        eprintln!(
            "note: {} conversation(s) longer than {} tokens were cut, {} of them dropped (nothing learned was left)",
            data.cut, cfg.seq_len, data.dropped
        );
    }
    let stop = crate::cmd::train::stop_on_signals();
    let mut tuner = FineTuner::new(cfg.clone(), data, &tokenizer, &a.out, a.resume)?;
    let total = tuner.total_steps();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
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
    let peak = crate::cmd::bench::peak_rss_bytes();
    if peak > 0 {
        eprintln!(
            "peak RSS during training: {:.0} MiB",
            peak as f64 / (1 << 20) as f64
        );
    }
    if summary.stopped {
        eprintln!(
            "stopped at step {}; `--resume` with the same settings continues it",
            summary.steps
        );
        return Ok(());
    }
    if tuner.model.lora_config().is_some() {
        let dir = a.out.join("adapter");
        ferrollama_train::finetune::save_peft_adapter(
            &tuner.model,
            &dir,
            &cfg.model.display().to_string(),
        )?;
        println!(
            "wrote the LoRA adapter to {} (PEFT's layout)",
            dir.display()
        );
    }
    crate::cmd::train::export_model(
        &tuner.model,
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
    for (i, m) in conversations.iter().take(n).enumerate() {
        let s = format.encode_for_training(m, tok)?;
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
