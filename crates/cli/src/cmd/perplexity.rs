//! `ferrollama perplexity`: perplexity of a text file, comparable with llama-perplexity.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrollama_eval::perplexity;

use crate::args::ModelArgs;
use crate::load::load;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score (UTF-8).
    #[arg(short, long)]
    pub file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(mut a: Args) -> Result<()> {
    let n_ctx = *a.model.ctx.get_or_insert(512);
    let m = load(&a.model)?;
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not valid UTF-8 ({e})", a.file.display()))?;
    let tokens = m.tokenizer.encode(&text, true, false);
    let bos = if m.tokenizer.add_bos() {
        m.tokenizer.bos()
    } else {
        None
    };
    let report = perplexity(&m.model, &tokens, n_ctx, bos, |done, total, running| {
        if !a.json {
            eprint!("\r[{done}/{total}] running PPL {running:.4}");
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!();
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5}  ({} chunks of {} tokens, {} tokens scored, {:.1} s)",
            report.ppl, report.ppl_stderr, report.n_chunks, report.n_ctx, report.n_scored, report.seconds
        );
    }
    Ok(())
}
