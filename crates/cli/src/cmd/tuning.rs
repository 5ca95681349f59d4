//! What `sft` and `dpo` share: the flags that shape a fine-tuning run (schedule, batch,
//! LoRA/QLoRA, resume) applied to its settings, and the end of a run (the adapter in
//! PEFT's layout, the exported model).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferrollama_generate::ChatFormat;
use ferrollama_gguf::GgmlType;
use ferrollama_model::TrainableLlama;
use ferrollama_tokenizer::{Tokenizer, TokenizerFiles};
use ferrollama_train::finetune::SftConfig;
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct TuningArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Held-out data in the same shape (default: 5 % of --data, always the same items).
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Optimizer steps (default: --epochs passes over the data).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Passes over the training data.
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Peak learning rate, cosine to 10 %.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Tokens per row (default: the model's context, at most 2048); longer samples are
    /// cut.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Samples per optimizer step (sft: rows; dpo: pairs).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Samples per forward pass (memory), accumulated into a step.
    #[arg(long)]
    pub micro_batch: Option<usize>,
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
    /// Weight type of the exported GGUF: f32, f16, q8_0, q4_0, q4_1.
    #[arg(long, default_value = "f32")]
    pub gguf_type: String,
    /// Train a LoRA adapter of this rank on the frozen model (written in PEFT's layout to
    /// OUT/adapter, and merged into the exported model); the default learning rate is
    /// then LoRA's.
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

impl TuningArgs {
    /// The model's context length (from its file, without loading the weights).
    pub fn context(&self, model_path: &Path) -> Result<usize> {
        Ok(
            ferrollama_model::weights::with_checkpoint(model_path, |_, c| Ok(c))?
                .max_position_embeddings,
        )
    }

    /// `cfg` (a fresh run's defaults, or a resumed run's own settings) with the flags
    /// given applied: the model, `data`, and every setting a flag names. With LoRA and no
    /// --lr, a fresh run takes `lora_lr`.
    pub fn apply(
        &self,
        mut cfg: SftConfig,
        model_path: &Path,
        data: &Path,
        lora_lr: f64,
    ) -> Result<SftConfig> {
        let context = self.context(model_path)?;
        // Rows of at most 2048 tokens by default (SftConfig's; Llama 2 fine-tuned on 4096,
        // a length a CPU step cannot afford), and never longer than the model's context.
        cfg.seq_len = cfg.seq_len.min(context);
        cfg.model = model_path.canonicalize()?;
        cfg.data = data
            .canonicalize()
            .with_context(|| data.display().to_string())?;
        if let Some(v) = &self.val_data {
            cfg.val_data = Some(v.canonicalize().with_context(|| v.display().to_string())?);
        }
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { cfg.$field = v; } )* };
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
        if self.steps.is_some() {
            cfg.steps = self.steps;
        }
        if let Some(w) = self.weight_decay {
            cfg.optim.weight_decay = w;
        }
        if let Some(rank) = self.lora_rank {
            cfg.lora = Some(ferrollama_model::lora::LoraConfig {
                rank,
                alpha: self.lora_alpha.unwrap_or(2.0 * rank as f64),
                dropout: self.lora_dropout,
                targets: ferrollama_model::lora::LoraConfig::parse_targets(&self.lora_targets)?,
                rslora: self.rslora,
            });
            if self.lr.is_none() && !self.resume {
                cfg.lr = lora_lr;
            }
        }
        if self.qlora {
            cfg.qlora = true;
        }
        if cfg.seq_len > context {
            anyhow::bail!(
                "--seq-len {} exceeds the model's context of {context}",
                cfg.seq_len
            );
        }
        Ok(cfg)
    }

    /// The exported GGUF's weight type.
    pub fn gguf_type(&self) -> Result<GgmlType> {
        GgmlType::from_name(&self.gguf_type)
            .ok_or_else(|| anyhow::anyhow!("unknown type `{}`", self.gguf_type))
    }
}

/// The end of a finished run: the adapter in PEFT's layout (with LoRA) and the model
/// exported as GGUF and a Hugging Face directory under `out`.
pub fn finish(
    model: &TrainableLlama,
    cfg: &SftConfig,
    tokenizer: &Tokenizer,
    template: Option<&str>,
    out: &Path,
    gguf_type: GgmlType,
) -> Result<()> {
    if model.lora_config().is_some() {
        let dir = out.join("adapter");
        ferrollama_train::finetune::save_peft_adapter(
            model,
            &dir,
            &cfg.model.display().to_string(),
        )?;
        println!(
            "wrote the LoRA adapter to {} (PEFT's layout)",
            dir.display()
        );
    }
    crate::cmd::train::export_model(model, tokenizer, template, out, gguf_type)
}

/// The tokenizer, chat template and chat format of the model a run starts from.
pub fn tokenizer_of(model_path: &Path) -> Result<(Tokenizer, Option<String>, ChatFormat)> {
    let files = TokenizerFiles::load(model_path)
        .with_context(|| format!("reading the tokenizer of {}", model_path.display()))?;
    let format = ChatFormat::for_model(files.chat_template.as_deref());
    Ok((files.tokenizer, files.chat_template, format))
}

/// A training run's progress bar over `total` steps, ticking twice a second.
pub fn steps_bar(total: u64) -> Result<ProgressBar> {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(500));
    Ok(bar)
}

/// Prints the peak resident memory of the process, when the system tells it.
pub fn report_peak_rss() {
    let peak = crate::cmd::bench::peak_rss_bytes();
    if peak > 0 {
        eprintln!(
            "peak RSS during training: {:.0} MiB",
            peak as f64 / (1 << 20) as f64
        );
    }
}
