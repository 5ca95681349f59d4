//! `ferrollama logits`: the logits of every position of a prompt through the training
//! path (f32), with a LoRA adapter (PEFT's layout, `--lora DIR`) applied unmerged, written as
//! safetensors: what a comparison with another implementation (PyTorch + PEFT) reads.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use ferrollama_model::TrainableLlama;
use ferrollama_tokenizer::TokenizerFiles;

use crate::args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text, tokenized with the model's tokenizer (BOS as the model adds it).
    #[arg(long, conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// Token ids, comma-separated, used as they are.
    #[arg(long, value_delimiter = ',')]
    pub tokens: Vec<u32>,
    /// Output: a safetensors file with `logits` (positions, vocab, f32) and `tokens`.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let path = crate::load::model_path(&a.model)?;
    let tokens = match &a.prompt {
        Some(p) => {
            let files = TokenizerFiles::load(&path)?;
            files.tokenizer.encode(p, true, false)
        }
        None => a.tokens.clone(),
    };
    if tokens.is_empty() {
        bail!("nothing to run: give --prompt or --tokens");
    }
    let mut model = TrainableLlama::open(&path, tokens.len())
        .with_context(|| format!("opening {}", path.display()))?;
    // The training path holds one adapter, unscaled.
    match a.model.adapters()?.as_slice() {
        [] => {}
        [(dir, scale)] if *scale == 1.0 => {
            let (cfg, tensors) = ferrollama_model::lora::read_peft_dir(dir)
                .with_context(|| format!("reading the adapter {}", dir.display()))?;
            model.attach_lora(cfg, 0, Some(tensors))?;
        }
        _ => bail!("`logits` applies one --lora adapter, at scale 1"),
    }
    let ids = Tensor::from_slice(&tokens, (1, tokens.len()), &Device::Cpu)?;
    let logits = model.forward(&ids)?.squeeze(0)?;
    let ids_i64: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    let mut out = HashMap::new();
    out.insert("logits", logits);
    out.insert(
        "tokens",
        Tensor::from_vec(ids_i64, tokens.len(), &Device::Cpu)?,
    );
    candle_core::safetensors::save(&out, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "{} positions of {} logits -> {}",
        tokens.len(),
        model.config.vocab_size,
        a.out.display()
    );
    Ok(())
}
