//! `ferrollama eval --task humaneval|mbpp|mbpp_rust`: code written by the model, run in
//! the sandbox, scored by pass@k.

use std::path::Path;

use anyhow::{bail, Result};
use ferrollama_eval::code::exec::Runner;
use ferrollama_eval::code::problems;
use ferrollama_eval::code::run::{evaluate, keep_valid, CodeOptions};
use ferrollama_eval::harness::generation::Sampled;
use ferrollama_eval::harness::TaskResult;
use ferrollama_generate::Bundle;
use indicatif::{ProgressBar, ProgressStyle};

use super::eval::Args;

fn bar(len: usize, what: &str) -> Result<ProgressBar> {
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template(
            "{msg:>34} {bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}]",
        )?
        .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    Ok(b)
}

pub fn run(a: &Args, m: &Bundle, name: &str, data: &Path) -> Result<TaskResult> {
    if a.apply_chat_template {
        bail!("{name}: code tasks use the harness's plain prompts; --apply-chat-template is not supported for them");
    }
    if a.num_fewshot.is_some() {
        bail!("{name}: the prompt's examples are fixed (MBPP: three; HumanEval: none); --num-fewshot does not apply");
    }
    let runner = Runner::new();
    let mut task = problems::load(name, data)?;
    if let Err(e) = runner.check(task.language) {
        bail!("{name}: {e}");
    }
    if !task.left_out.is_empty() {
        eprintln!(
            "{name}: {} of {} problems left out ({})",
            task.left_out.len(),
            task.left_out.len() + task.problems.len(),
            summarize(&task.left_out)
        );
    }
    if task.problems.first().is_some_and(|p| p.reference.is_some()) {
        let total = task.problems.len();
        let b = bar(total, &format!("{name}: checking reference solutions"))?;
        let failures = keep_valid(&runner, &mut task, a.workers, &|d| b.set_position(d as u64))?;
        b.finish_and_clear();
        eprintln!(
            "{name}: {} of {total} reference solutions pass their translated tests; the others are left out",
            total - failures.len()
        );
        if task.problems.is_empty() {
            bail!("{name}: no problem left to evaluate");
        }
    }
    let n = a.samples_per_problem.max(1);
    let sampled = (n > 1).then(|| Sampled {
        temperature: a.temperature.unwrap_or(0.8),
        top_p: a.top_p.unwrap_or(0.95),
        top_k: 0,
    });
    let opts = CodeOptions {
        limit: a.limit,
        samples: n,
        sampled,
        ks: a.pass_k.clone(),
        seed: a.seed,
        parallel: a.batch_size.max(1),
        max_len: m.n_ctx,
        workers: a.workers.max(1),
    };
    let problems = a
        .limit
        .map_or(task.problems.len(), |l| l.min(task.problems.len()));
    let gen_bar = bar(problems * n, &format!("{name}: generating"))?;
    let run_bar = bar(problems * n, &format!("{name}: running programs"))?;
    let r = evaluate(
        &m.model,
        &m.tokenizer,
        &runner,
        &task,
        &opts,
        &|phase, d, _| {
            if phase == "generating" {
                gen_bar.set_position(d as u64)
            } else {
                gen_bar.finish_and_clear();
                run_bar.set_position(d as u64)
            }
        },
    )?;
    run_bar.finish_and_clear();
    eprintln!(
        "{}: {} problems x {n} completions, {:.1} s",
        r.task, r.n_effective, r.seconds
    );
    Ok(r)
}

/// The reasons problems were left out, by kind, most common first.
fn summarize(left_out: &[(String, String)]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, why) in left_out {
        let kind = if why.starts_with("no function") {
            "generic or differently named function"
        } else if why.contains(" takes ") {
            "argument count differs"
        } else if why.contains(" as ") || why.contains("not supported") {
            "value or type not translatable"
        } else if why.contains("main") {
            "reference defines main"
        } else {
            "assert form not supported"
        };
        *counts.entry(kind).or_default() += 1;
    }
    let mut v: Vec<(&str, usize)> = counts.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}
