//! `ferrollama eval` end to end on the tiny committed model and the committed data excerpts
//! (nothing fetched): the harness's results JSON and samples lines, its table, the exported
//! task files read back, and clear errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn eval(args: &[&str]) -> Output {
    let tiny = repo().join("tests/data/tiny/tiny-260k-q8_0.gguf");
    let data = repo().join("tests/data/eval");
    Command::new(env!("CARGO_BIN_EXE_ferrollama"))
        .arg("eval")
        .arg("--model")
        .arg(&tiny)
        .arg("--eval-data")
        .arg(&data)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn results_json_and_samples_in_the_harness_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    let out = eval(&[
        "--task",
        "arc_easy,mmlu_anatomy",
        "--limit",
        "5",
        "--num-fewshot",
        "1",
        "--json",
        "--log-samples",
        samples.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let arc = &json["results"]["arc_easy"];
    for key in [
        "acc,none",
        "acc_stderr,none",
        "acc_norm,none",
        "acc_norm_stderr,none",
    ] {
        assert!(arc[key].is_f64(), "{key}: {arc}");
    }
    assert_eq!(json["n-samples"]["arc_easy"]["effective"], 5);
    assert_eq!(json["n-samples"]["arc_easy"]["original"], 24);
    assert_eq!(json["n-shot"]["mmlu_anatomy"], 1);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&samples)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    let s = &lines[0];
    assert_eq!(s["doc_id"], 0);
    assert!(s["arguments"]["gen_args_0"]["arg_0"]
        .as_str()
        .unwrap()
        .ends_with("\nAnswer:"));
    assert_eq!(s["resps"].as_array().unwrap().len(), 4);
    let first = &s["filtered_resps"][0];
    assert!(first[0].as_str().unwrap().parse::<f64>().unwrap() < 0.0);
    assert!(matches!(first[1].as_str(), Some("True" | "False")));
    assert!(s["acc"].is_f64() && s["acc_norm"].is_f64());
    assert_eq!(lines[5]["metrics"], serde_json::json!(["acc"]));
}

#[test]
fn the_table_and_exported_tasks_give_the_same_figures() {
    let out = eval(&["--task", "hellaswag", "--limit", "6"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("|Tasks"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains("|hellaswag"))
        .unwrap()
        .to_string();

    // The exported task file (JSON Lines data, lm-evaluation-harness's format) runs to the
    // same numbers under its own name.
    let dir = tempfile::tempdir().unwrap();
    let exported = eval(&[
        "--task",
        "hellaswag",
        "--export-tasks",
        dir.path().to_str().unwrap(),
    ]);
    assert!(exported.status.success());
    let yaml = dir.path().join("fl_hellaswag.yaml");
    let again = eval(&["--task", yaml.to_str().unwrap(), "--limit", "6"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let table2 = String::from_utf8(again.stdout).unwrap();
    let row2 = table2
        .lines()
        .find(|l| l.contains("|fl_hellaswag"))
        .unwrap();
    let figures = |r: &str| {
        r.split('|')
            .skip(4)
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("|")
    };
    assert_eq!(figures(&row), figures(row2));
}

#[test]
fn clear_errors() {
    let out = eval(&["--task", "no_such_task"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("neither a task file nor a built-in task")
    );
    // The excerpt holds one MMLU subject; the others are missing, and the error says where.
    let out = eval(&["--task", "mmlu_virology"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn generation_and_code_tasks_report_in_the_harness_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    let out = eval(&[
        "--task",
        "nq_open,triviaqa,mbpp_rust,humaneval",
        "--limit",
        "2",
        "--samples-per-problem",
        "2",
        "--pass-k",
        "1,2",
        "--json",
        "--log-samples",
        samples.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("reference solutions pass their translated tests"),
        "{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &json["results"];
    assert!(
        r["nq_open"]["exact_match,remove_whitespace"].is_f64(),
        "{r}"
    );
    assert!(
        r["triviaqa"]["exact_match,remove_whitespace"].is_f64(),
        "{r}"
    );
    for key in ["pass@1,none", "pass@2,none"] {
        assert!(r["mbpp_rust"][key].is_f64(), "{key}: {r}");
    }
    assert!(r["humaneval"]["pass@2,create_test"].is_f64(), "{r}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&samples)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let trivia = lines
        .iter()
        .find(|l| l["doc"]["question_id"].is_string())
        .unwrap();
    assert!(
        trivia["target"].as_array().unwrap().len() > 1,
        "every alias is a target"
    );
    let code: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["execution"].is_array()).collect();
    assert_eq!(code.len(), 4);
    for l in code {
        assert_eq!(
            l["resps"][0].as_array().unwrap().len(),
            2,
            "both samples logged"
        );
        assert_eq!(l["execution"].as_array().unwrap().len(), 2);
    }
    // Greedy gives one answer: more samples need sampling, and k cannot exceed n.
    let out = eval(&["--task", "mbpp", "--limit", "1", "--pass-k", "5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass@k"));
    let out = eval(&[
        "--task",
        "mbpp",
        "--export-tasks",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}
