//! `ferrollama reward train` (a reward model on preference pairs: the Llama 2 ranking loss
//! with margins, LoRA or full) and `ferrollama reward score` (one JSON line per item).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrollama_generate::ChatFormat;
use ferrollama_tokenizer::TokenizerFiles;
use ferrollama_train::preference::{Objective, PairConfig};
use ferrollama_train::reward::RewardModel;
use serde_json::{json, Value};

use crate::cmd::dpo::{check_reward_dir, run_pairs, PairArgs, REWARD_LORA_LR};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Train a reward model on preference pairs (loss -log sigmoid(r_chosen - r_rejected
    /// - margin)); prints the held-out pairwise accuracy.
    Train(Box<TrainArgs>),
    /// Score conversations (or both sides of pairs) with a trained reward model.
    Score(ScoreArgs),
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub pairs: PairArgs,
    /// Ignore the pairs' margins (plain Bradley-Terry ranking).
    #[arg(long)]
    pub no_margin: bool,
}

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// The output directory of `ferrollama reward train`.
    #[arg(long)]
    pub model: PathBuf,
    /// JSON Lines: pairs (`chosen` + `rejected`, as `reward train` reads them), or single
    /// conversations (`messages`, `prompt` + `response`/`completion`).
    #[arg(long)]
    pub data: PathBuf,
    /// Conversations per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Train(a) => run_pairs(
            &a.pairs,
            "reward-run",
            PairConfig::reward(),
            REWARD_LORA_LR,
            |cfg| {
                if a.no_margin {
                    cfg.objective = Objective::Reward { use_margin: false };
                }
            },
        ),
        Command::Score(a) => score(a),
    }
}

fn score(a: ScoreArgs) -> Result<()> {
    check_reward_dir(&a.model)?;
    let gguf = a.model.join("model.gguf");
    let files = TokenizerFiles::load(&gguf)
        .with_context(|| format!("reading the tokenizer of {}", gguf.display()))?;
    let format = ChatFormat::for_model(files.chat_template.as_deref());
    let tok = &files.tokenizer;
    let context = ferrollama_model::weights::with_checkpoint(&gguf, |_, c| Ok(c))?
        .max_position_embeddings
        .min(4096);
    let rm = RewardModel::open(&a.model, context)?;
    let records = ferrollama_train::sft::read_records(&a.data)?;
    let bad = |n: usize, m: String| anyhow::anyhow!("{}: record {n}: {m}", a.data.display());
    // Every conversation to score, and per record the indices of its own.
    let (mut samples, mut owners) = (Vec::new(), Vec::new());
    for (n, v) in &records {
        let conversations = if v.get("chosen").is_some() {
            let p = ferrollama_train::prefs::pair_from_record(v).map_err(|m| bad(*n, m))?;
            vec![p.chosen, p.rejected]
        } else {
            let mut v = v.clone();
            if let (Some(r), Value::Object(o)) = (v.get("response").cloned(), &mut v) {
                o.entry("completion").or_insert(r);
            }
            vec![ferrollama_train::sft::messages_from_record(&v).map_err(|m| bad(*n, m))?]
        };
        let mut mine = Vec::new();
        for c in conversations {
            mine.push(samples.len());
            samples.push(
                format
                    .encode_for_training(&c, tok)
                    .map_err(|e| bad(*n, e.to_string()))?,
            );
        }
        owners.push(mine);
    }
    let scores = rm.scores(&samples, a.batch_size, tok.eos().unwrap_or(0))?;
    let mut out = std::io::stdout().lock();
    for mine in owners {
        let line = match mine.as_slice() {
            [c, r] => json!({"chosen_score": scores[*c], "rejected_score": scores[*r]}),
            [one] => json!({"score": scores[*one]}),
            _ => anyhow::bail!("internal error: a record gave {} conversations", mine.len()),
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}
