//! `ferrollama perplexity`: perplexity of a text file, comparable with llama-perplexity.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrollama_eval::{kl_divergence, perplexity, KlReport};

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
    /// Compare with this base model (the f16 or f32 original of a quantized model): KL
    /// divergence, top-token agreement and both perplexities, as `llama-perplexity
    /// --kl-divergence` reports them.
    #[arg(long, value_name = "BASE")]
    pub kl_base: Option<PathBuf>,
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
    if let Some(base) = &a.kl_base {
        // The base as it is: --lora applies to the model measured.
        let b = load(&ModelArgs {
            model: Some(base.clone()),
            lora: Vec::new(),
            ..a.model.clone()
        })?;
        let r = kl_divergence(&b.model, &m.model, &tokens, n_ctx, bos, |done, total| {
            if !a.json {
                eprint!("\r[{done}/{total}]");
            }
        })?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            eprintln!();
            print_kl(&r);
        }
        return Ok(());
    }
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

/// The report in llama-perplexity's words.
fn print_kl(r: &KlReport) {
    let pm = |e: ferrollama_eval::kl::Estimate| format!("{:10.6} ± {:10.6}", e.mean, e.stderr);
    println!(
        "{} chunks of {} tokens, {} tokens scored, {:.1} s",
        r.n_chunks, r.n_ctx, r.n_scored, r.seconds
    );
    println!("Mean PPL(Q)                   : {}", pm(r.ppl));
    println!("Mean PPL(base)                : {}", pm(r.ppl_base));
    println!(
        "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
        100.0 * r.ln_ppl_correlation
    );
    println!("Mean ln(PPL(Q)/PPL(base))     : {}", pm(r.ln_ppl_ratio));
    println!("Mean PPL(Q)/PPL(base)         : {:10.6}", r.ppl_ratio);
    println!("Mean    KLD: {}", pm(r.kld));
    println!("Maximum KLD: {:10.6}", r.kld_max);
    println!("99.9%   KLD: {:10.6}", r.kld_p99_9);
    println!("99.0%   KLD: {:10.6}", r.kld_p99);
    println!("Median  KLD: {:10.6}", r.kld_median);
    println!("Minimum KLD: {:10.6}", r.kld_min);
    println!(
        "Mean    Δp: {:6.3} ± {:5.3} %",
        100.0 * r.delta_p.mean,
        100.0 * r.delta_p.stderr
    );
    println!("RMS Δp    : {:6.3} %", 100.0 * r.delta_p_rms);
    println!(
        "Same top p: {:6.3} ± {:5.3} %",
        100.0 * r.same_top.mean,
        100.0 * r.same_top.stderr
    );
}
