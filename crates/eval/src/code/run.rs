//! Evaluating a code task: every problem's completions generated on the decode engine,
//! each made a program and run in the sandbox (`workers` at a time), pass@k per problem
//! and its mean with the harness's standard error.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ferrollama_model::Llama;
use ferrollama_tokenizer::Tokenizer;
use serde_json::json;

use super::exec::{Runner, Verdict};
use super::passk::pass_at_k;
use super::problems::{CodeTask, Problem};
use crate::error::{Error, Result};
use crate::harness::generation::{self, Generation, Sampled};
use crate::harness::metrics::Value;
use crate::harness::prompt::DocRequests;
use crate::harness::{finish, Sample, TaskResult};

/// How to run a code task.
#[derive(Debug, Clone)]
pub struct CodeOptions {
    pub limit: Option<usize>,
    /// Completions per problem (n of pass@k).
    pub samples: usize,
    /// Sampling settings when `samples > 1` (greedy otherwise).
    pub sampled: Option<Sampled>,
    /// The k of pass@k reported (each at most `samples`).
    pub ks: Vec<usize>,
    pub seed: u64,
    /// Sequences decoded together.
    pub parallel: usize,
    /// The longest input in tokens.
    pub max_len: usize,
    /// Programs run at once.
    pub workers: usize,
}

/// What the evaluation reports beside the result: problems left out, and the reference
/// solutions that failed their translated tests (Rust).
#[derive(Debug, Clone, Default)]
pub struct CodeReport {
    pub left_out: Vec<(String, String)>,
    pub reference_failures: Vec<(String, String)>,
}

/// Runs `programs` on `workers` threads; results in order.
fn run_all(
    runner: &Runner,
    task: &CodeTask,
    programs: &[String],
    workers: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<Verdict>> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<std::io::Result<Verdict>>>> =
        Mutex::new((0..programs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = programs.get(i) else { break };
                let v = runner.run(task.language, p);
                if let Ok(mut o) = out.lock() {
                    o[i] = Some(v);
                }
                progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            });
        }
    });
    out.into_inner()
        .map_err(|_| Error::Generation("a sandbox worker panicked".into()))?
        .into_iter()
        .map(|v| match v {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(Error::Io {
                path: "sandbox".into(),
                cause: e,
            }),
            None => Err(Error::Generation("a program was not run".into())),
        })
        .collect()
}

/// Checks the reference solutions against their tests and keeps the problems whose
/// reference passes (a test the translation got wrong must not count against a model).
pub fn keep_valid(
    runner: &Runner,
    task: &mut CodeTask,
    workers: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<(String, String)>> {
    let refs: Vec<String> = task
        .problems
        .iter()
        .filter_map(|p| p.reference.clone())
        .collect();
    if refs.len() != task.problems.len() {
        return Ok(Vec::new());
    }
    let verdicts = run_all(runner, task, &refs, workers, progress)?;
    let mut failures = Vec::new();
    let problems = std::mem::take(&mut task.problems);
    for (p, v) in problems.into_iter().zip(verdicts) {
        if v.passed {
            task.problems.push(p);
        } else {
            let id = p
                .doc
                .get("task_id")
                .map(|t| t.to_string())
                .unwrap_or_default();
            failures.push((id, format!("{}: {}", v.result, v.stderr.trim())));
        }
    }
    Ok(failures)
}

/// Generates, runs and scores `task` (its problems already validated).
pub fn evaluate(
    model: &Llama,
    tok: &Tokenizer,
    runner: &Runner,
    task: &CodeTask,
    opts: &CodeOptions,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<TaskResult> {
    let err = |msg: String| Error::Task {
        task: task.name.clone(),
        msg,
    };
    runner.check(task.language).map_err(err)?;
    let n = opts.samples.max(1);
    if n > 1 && opts.sampled.is_none() {
        return Err(err(format!(
            "{n} samples per problem need a temperature above 0 (greedy gives one answer)"
        )));
    }
    let ks: Vec<usize> = opts
        .ks
        .iter()
        .copied()
        .filter(|&k| k >= 1 && k <= n)
        .collect();
    if ks.is_empty() {
        return Err(err(format!("no k of pass@k is at most {n} samples")));
    }
    let start = Instant::now();
    let problems: &[Problem] = match opts.limit {
        Some(l) => &task.problems[..l.min(task.problems.len())],
        None => &task.problems,
    };
    // Each prompt n times in a row: the engine computes a shared prompt once.
    let contexts: Vec<Vec<u32>> = problems
        .iter()
        .flat_map(|p| std::iter::repeat_n(tok.encode(&p.prompt, true, true), n))
        .collect();
    let g = Generation {
        until: task.until.clone(),
        max_gen_toks: task.max_gen_toks,
        sampled: opts.sampled.filter(|_| n > 1),
    };
    let never = AtomicBool::new(false);
    let run = generation::Run {
        max_len: opts.max_len,
        parallel: opts.parallel,
        seed: opts.seed,
        stop: &never,
    };
    let total = contexts.len();
    let completions = generation::generate(model, tok, &contexts, &g, &run, &mut |d| {
        progress("generating", d, total)
    })?;
    let programs: Vec<String> = completions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = &problems[i / n];
            format!("{}{c}{}", p.before, p.after)
        })
        .collect();
    let verdicts = run_all(runner, task, &programs, opts.workers, &|d| {
        progress("running", d, total)
    })?;
    let mut samples = Vec::with_capacity(problems.len());
    for (i, p) in problems.iter().enumerate() {
        let mine = &verdicts[i * n..(i + 1) * n];
        let passed = mine.iter().filter(|v| v.passed).count();
        let metrics = ks
            .iter()
            .map(|&k| {
                (
                    format!("{}{k},{}", task.metric_prefix, task.filter),
                    Value::Scalar(pass_at_k(n, passed, k).unwrap_or(0.0)),
                )
            })
            .collect();
        let mut extra = serde_json::Map::new();
        extra.insert("execution".into(), json!(mine));
        samples.push(Sample {
            requests: DocRequests {
                doc_id: i,
                doc: p.doc.clone(),
                target: json!(p.target),
                arguments: vec![(p.prompt.clone(), String::new())],
                choices: Vec::new(),
                gold: Vec::new(),
                generation: Some(g.to_json()),
            },
            scored: Vec::new(),
            generated: Some(completions[i * n].clone()),
            filtered: vec![(task.filter.to_string(), programs[i * n].clone())],
            metrics,
            repeats: completions[i * n + 1..(i + 1) * n].to_vec(),
            extra,
        });
    }
    finish(&task.name, 0, task.problems.len(), samples, start)
}
