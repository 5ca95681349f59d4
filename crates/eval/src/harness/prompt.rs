//! From documents to requests, as the harness's `ConfigurableTask` builds them: the
//! few-shot context (`fewshot_context`, `build_qa_turn`), each document's prompt, choices
//! and target (`doc_to_text`, `doc_to_choice`, `doc_to_target`), and the
//! (context, continuation) pairs to score (`construct_requests`).

use std::collections::HashSet;

use serde_json::Value;

use super::docs::Doc;
use super::pyrandom::PyRandom;
use super::task::{Field, OutputType, Sampler, TaskConfig};
use super::template::Templates;

/// One document's requests.
#[derive(Debug, Clone)]
pub struct DocRequests {
    pub doc_id: usize,
    pub doc: Doc,
    /// `doc_to_target(doc)` as the harness logs it.
    pub target: Value,
    /// (context, continuation) per request, in the harness's order.
    pub arguments: Vec<(String, String)>,
    /// The choices' texts (multiple choice; for acc_norm's lengths).
    pub choices: Vec<String>,
    /// Index of the right choice (several for multi-target tasks); empty when the target is
    /// not among the choices (scored wrong, as the harness's -100).
    pub gold: Vec<usize>,
    /// `generate_until`: the generation settings, logged as the request's second argument.
    pub generation: Option<Value>,
}

/// What `doc_to_text` gives: a prompt, or for multiple-input tasks (Winogrande) the index
/// of the right choice, the choices being the prompts.
enum Text {
    Prompt(String),
    Index(usize),
}

/// Renders the fields of one task's documents.
pub struct Formatter<'a> {
    task: &'a TaskConfig,
    templates: Templates,
    /// The evaluated documents' column names: a field naming one reads it.
    features: HashSet<String>,
    multiple_input: bool,
}

impl<'a> Formatter<'a> {
    pub fn new(task: &'a TaskConfig, eval_docs: &[Doc]) -> Result<Self, String> {
        let features = eval_docs
            .first()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        let mut f = Self {
            task,
            templates: Templates::new(),
            features,
            multiple_input: false,
        };
        // The harness decides from the first document whether prompts are choice indices.
        if let Some(first) = eval_docs.first() {
            f.multiple_input = matches!(f.text(first)?, Text::Index(_));
        }
        Ok(f)
    }

    fn text(&self, doc: &Doc) -> Result<Text, String> {
        match &self.task.doc_to_text {
            Field::Int(i) => Ok(Text::Index(index(*i)?)),
            Field::Text(t) if self.features.contains(t) => match doc.get(t) {
                Some(Value::String(s)) => Ok(Text::Prompt(s.clone())),
                Some(Value::Number(n)) => Ok(Text::Index(index(n.as_i64().unwrap_or(-1))?)),
                _ => Err(format!("doc_to_text: field `{t}` is not text")),
            },
            Field::Text(t) => {
                let s = self.templates.render(t, doc)?;
                if is_py_digit(&s) && self.task.doc_to_choice.is_some() {
                    Ok(Text::Index(
                        s.parse().map_err(|_| format!("doc_to_text gave {s:?}"))?,
                    ))
                } else {
                    Ok(Text::Prompt(s))
                }
            }
            other => Err(format!("doc_to_text: {other:?} is not supported")),
        }
    }

    /// `doc_to_target(doc)`: an index, a text, or a list of either.
    pub fn target(&self, doc: &Doc) -> Result<Value, String> {
        match &self.task.doc_to_target {
            Field::Int(i) => Ok(Value::from(*i)),
            Field::List(l) => Ok(Value::from(l.clone())),
            Field::Text(t) if self.features.contains(t) => {
                Ok(doc.get(t).cloned().unwrap_or(Value::Null))
            }
            Field::Text(t) => {
                let s = self.templates.render(t, doc)?;
                if is_py_digit(&s) && self.task.doc_to_choice.is_some() {
                    return Ok(Value::from(
                        s.parse::<u64>()
                            .map_err(|_| format!("doc_to_target gave {s:?}"))?,
                    ));
                }
                if s.len() >= 2 && s.starts_with('[') && s.ends_with(']') {
                    if let Some(Ok(v)) = self.templates.evaluate(t, doc) {
                        return Ok(v);
                    }
                }
                Ok(Value::String(s))
            }
            Field::Function(f) => Err(format!("doc_to_target: !function {f} cannot run here")),
        }
    }

    /// `doc_to_choice(doc)`: the texts of the choices.
    pub fn choices(&self, doc: &Doc) -> Result<Vec<String>, String> {
        let Some(field) = &self.task.doc_to_choice else {
            return Ok(Vec::new());
        };
        let value = match field {
            Field::List(l) => return Ok(l.clone()),
            Field::Text(t) if self.features.contains(t) => {
                doc.get(t).cloned().unwrap_or(Value::Null)
            }
            Field::Text(t) => match self.templates.evaluate(t, doc) {
                Some(v) => v?,
                None => {
                    return Err(format!(
                        "doc_to_choice {t:?} must be one {{{{ expression }}}} giving a list"
                    ))
                }
            },
            other => return Err(format!("doc_to_choice: {other:?} is not supported")),
        };
        match value {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(format!("a choice is not text: {other}")),
                })
                .collect(),
            other => Err(format!("doc_to_choice gave {other}, not a list")),
        }
    }

    fn description(&self, doc: &Doc) -> Result<String, String> {
        let d = &self.task.description;
        if d.is_empty() {
            return Ok(String::new());
        }
        match doc.get(d) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => self.templates.render(d, doc),
        }
    }

    /// A few-shot example as the harness writes it: question, target delimiter, answer,
    /// few-shot delimiter (no delimiter and no answer when the target is empty).
    fn example(&self, doc: &Doc) -> Result<String, String> {
        let choices = self.choices(doc)?;
        let (q, c) = match self.text(doc)? {
            Text::Prompt(q) => (q, choices),
            Text::Index(i) if self.multiple_input => (
                choices
                    .get(i)
                    .cloned()
                    .ok_or_else(|| format!("choice {i} does not exist"))?,
                Vec::new(),
            ),
            Text::Index(_) => {
                return Err("doc_to_text gave a number for a single-input task".into())
            }
        };
        let a = self.target(doc)?;
        let has_answer = !(a.is_null() || a == Value::String(String::new()));
        if !has_answer {
            return Ok(q);
        }
        let answer = match &a {
            Value::Number(n) if !c.is_empty() => {
                let i = n.as_u64().ok_or("a negative target index")? as usize;
                c.get(i)
                    .cloned()
                    .ok_or_else(|| format!("target {i} is not among {} choices", c.len()))?
            }
            Value::Array(items) => match items.first() {
                Some(Value::String(s)) => s.clone(),
                _ => return Err("a few-shot example's first target is not text".into()),
            },
            Value::String(s) => s.clone(),
            other => return Err(format!("a few-shot example's answer is not text: {other}")),
        };
        Ok(format!(
            "{q}{}{answer}{}",
            self.task.target_delimiter, self.task.fewshot_delimiter
        ))
    }

    /// The requests of one document with its few-shot examples.
    pub fn requests(
        &self,
        doc_id: usize,
        doc: &Doc,
        shots: &[&Doc],
    ) -> Result<DocRequests, String> {
        let mut ctx = self.description(doc)?;
        for s in shots {
            ctx.push_str(&self.example(s)?);
        }
        let target = self.target(doc)?;
        let choices = self.choices(doc)?;
        let text = self.text(doc)?;
        let delim = &self.task.target_delimiter;
        let (arguments, gold) = match self.task.output_type {
            OutputType::MultipleChoice => {
                let (arguments, gold) = match text {
                    Text::Index(gold) if self.multiple_input => {
                        let cont = match &target {
                            Value::String(s) => s.clone(),
                            other => {
                                return Err(format!(
                                    "the target of a multiple-input task is not text: {other}"
                                ))
                            }
                        };
                        let args = choices
                            .iter()
                            .map(|c| (format!("{ctx}{c}"), format!("{delim}{cont}")))
                            .collect();
                        (args, vec![gold])
                    }
                    Text::Prompt(q) => {
                        let full = format!("{ctx}{q}");
                        let args = choices
                            .iter()
                            .map(|c| (full.clone(), format!("{delim}{c}")))
                            .collect();
                        (args, gold_indices(&target, &choices))
                    }
                    Text::Index(_) => {
                        return Err("doc_to_text gave a number for a single-input task".into())
                    }
                };
                (
                    arguments,
                    gold.into_iter().filter(|&g| g < choices.len()).collect(),
                )
            }
            OutputType::Loglikelihood => {
                let Text::Prompt(q) = text else {
                    return Err("doc_to_text must give text".into());
                };
                let Value::String(cont) = &target else {
                    return Err(format!("a loglikelihood target must be text: {target}"));
                };
                (vec![(format!("{ctx}{q}"), cont.clone())], Vec::new())
            }
            OutputType::LoglikelihoodRolling => {
                let Value::String(t) = &target else {
                    return Err(format!(
                        "a loglikelihood_rolling target must be text: {target}"
                    ));
                };
                (vec![(String::new(), t.clone())], Vec::new())
            }
            OutputType::GenerateUntil => {
                let Text::Prompt(q) = text else {
                    return Err("doc_to_text must give text".into());
                };
                (vec![(format!("{ctx}{q}"), String::new())], Vec::new())
            }
        };
        Ok(DocRequests {
            doc_id,
            doc: doc.clone(),
            target,
            arguments,
            choices,
            gold,
            generation: (self.task.output_type == OutputType::GenerateUntil)
                .then(|| self.task.generation.to_json()),
        })
    }
}

/// The harness's gold: an index, a text found among the choices, or a list of indices.
fn gold_indices(target: &Value, choices: &[String]) -> Vec<usize> {
    match target {
        Value::Number(n) => n.as_u64().map(|i| vec![i as usize]).unwrap_or_default(),
        Value::String(s) => choices.iter().position(|c| c == s).into_iter().collect(),
        Value::Array(items) => items
            .iter()
            .flat_map(|i| gold_indices(i, choices))
            .collect(),
        _ => Vec::new(),
    }
}

fn index(i: i64) -> Result<usize, String> {
    usize::try_from(i).map_err(|_| format!("index {i} is negative"))
}

/// Python's `str.isdigit` for what templates print (ASCII digits, at least one).
fn is_py_digit(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

/// Draws the few-shot examples of every document in order, as the harness's sampler does:
/// one generator seeded once per task; `n + 1` drawn and the document itself removed when
/// the examples come from the evaluated split.
pub struct FewshotDraw<'a> {
    pool: &'a [Doc],
    sampler: Sampler,
    exclude_self: bool,
    rnd: PyRandom,
}

impl<'a> FewshotDraw<'a> {
    pub fn new(task: &TaskConfig, pool: &'a [Doc], seed: u64) -> Self {
        Self {
            pool,
            sampler: task.sampler,
            exclude_self: task.excludes_eval_doc(),
            rnd: PyRandom::new(seed),
        }
    }

    pub fn draw(&mut self, n: usize, doc: &Doc) -> Result<Vec<&'a Doc>, String> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let exclude = self.exclude_self.then_some(doc);
        match self.sampler {
            Sampler::FirstN => {
                let pool: Vec<&Doc> = self.pool.iter().filter(|d| Some(*d) != exclude).collect();
                if n > pool.len() {
                    return Err(format!(
                        "{n} few-shot examples asked, {} available",
                        pool.len()
                    ));
                }
                Ok(pool[..n].to_vec())
            }
            Sampler::Default => {
                let want = if exclude.is_some() { n + 1 } else { n };
                if want > self.pool.len() {
                    return Err(format!(
                        "{n} few-shot examples asked, {} available",
                        self.pool.len()
                    ));
                }
                let mut res: Vec<&Doc> = self
                    .rnd
                    .sample(self.pool.len(), want)
                    .into_iter()
                    .map(|i| &self.pool[i])
                    .filter(|d| Some(*d) != exclude)
                    .take(n)
                    .collect();
                if res.len() < n {
                    // Copies of the document in the pool were drawn: draw again from the pool
                    // without any of them.
                    let pool: Vec<&Doc> =
                        self.pool.iter().filter(|d| Some(*d) != exclude).collect();
                    if n > pool.len() {
                        return Err(format!(
                            "{n} few-shot examples asked, {} available",
                            pool.len()
                        ));
                    }
                    res = self
                        .rnd
                        .sample(pool.len(), n)
                        .into_iter()
                        .map(|i| pool[i])
                        .collect();
                }
                Ok(res)
            }
        }
    }
}
