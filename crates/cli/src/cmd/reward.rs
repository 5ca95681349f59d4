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
    /// A safety reward model (another `reward train` output) to combine with --model as
    /// Llama 2 does: the safety score decides on unsafe prompts and where σ(safety) < 0.15,
    /// the helpfulness score elsewhere; then whitened over the file. Adds `safety_score`,
    /// `combined` and `whitened` to each line (`chosen_`/`rejected_` for pairs).
    #[arg(long)]
    pub safety_model: Option<PathBuf>,
    /// The boolean field of a record that marks its prompt unsafe (with --safety-model).
    #[arg(long, default_value = "unsafe", requires = "safety_model")]
    pub unsafe_field: String,
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
    let (mut samples, mut owners, mut flagged) = (Vec::new(), Vec::new(), Vec::new());
    for (n, v) in &records {
        let unsafe_prompt = match v.get(&a.unsafe_field) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(bad(
                    *n,
                    format!("`{}` must be true or false", a.unsafe_field),
                ))
            }
        };
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
            flagged.push(unsafe_prompt);
            samples.push(
                format
                    .encode_for_training(&c, tok)
                    .map_err(|e| bad(*n, e.to_string()))?,
            );
        }
        owners.push(mine);
    }
    let pad = tok.eos().unwrap_or(0);
    let scores = rm.scores(&samples, a.batch_size, pad)?;
    drop(rm);
    let combined = match &a.safety_model {
        Some(dir) => {
            check_reward_dir(dir)?;
            let safety = RewardModel::open(dir, context)?.scores(&samples, a.batch_size, pad)?;
            let both = ferrollama_train::reward::combine(&scores, &safety, &flagged);
            Some((safety, both))
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    for mine in owners {
        let sides: &[(&str, usize)] = match mine.as_slice() {
            [c, r] => &[("chosen_", *c), ("rejected_", *r)],
            [one] => &[("", *one)],
            _ => anyhow::bail!("internal error: a record gave {} conversations", mine.len()),
        };
        let mut line = serde_json::Map::new();
        for &(prefix, i) in sides {
            line.insert(format!("{prefix}score"), json!(scores[i]));
            if let Some((safety, both)) = &combined {
                line.insert(format!("{prefix}safety_score"), json!(safety[i]));
                line.insert(format!("{prefix}combined"), json!(both[i].0));
                line.insert(format!("{prefix}whitened"), json!(both[i].1));
            }
        }
        writeln!(out, "{}", Value::Object(line))?;
    }
    Ok(())
}
