//! The `ferrollama` binary end to end on the default model: JSON outputs, chat over
//! standard input, and clean errors (never a panic) on bad input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrollama"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "should fail: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ferrollama-cli-{}-{name}", std::process::id()))
}

#[test]
fn tokenize_json_prints_llama_cpp_ids() {
    // From tests/data/smollm2 (llama-tokenize on the default model).
    let o = run(&[
        "tokenize",
        "--json",
        "The quick brown fox jumps over the lazy dog.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "[504,2365,6354,16438,27003,690,260,23790,2767,30]"
    );
}

#[test]
fn generate_json_is_greedy_and_reproducible() {
    let args = [
        "generate",
        "--json",
        "--temperature",
        "0",
        "-n",
        "6",
        "-p",
        "The capital of France is",
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        j["prompt_ids"],
        serde_json::json!([504, 3575, 282, 4649, 314])
    );
    // llama.cpp's greedy continuation (greedy_q4_1.jsonl) begins 7042 30 198 198 504 1797;
    // at that sixth step its own top two, 1797 " United" and 2988 " answer", are 0.26 apart,
    // a near tie for Q4_1 (whose logits differ from llama.cpp's by 0.37 on average, see
    // crates/model/tests/reference.rs), so either is accepted there.
    let ids: Vec<u32> = serde_json::from_value(j["ids"].clone()).unwrap();
    assert_eq!(ids[..5], [7042, 30, 198, 198, 504]);
    assert!([1797, 2988].contains(&ids[5]), "{ids:?}");
    let text = j["text"].as_str().unwrap();
    assert!(
        [" Paris.\n\nThe United", " Paris.\n\nThe answer"].contains(&text),
        "{text:?}"
    );
    let again: serde_json::Value = serde_json::from_str(&stdout(&run(&args))).unwrap();
    assert_eq!((&again["ids"], &again["text"]), (&j["ids"], &j["text"]));
}

#[test]
fn info_json_reports_the_model() {
    let o = run(&["info", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["parameters"], 134515008);
    assert_eq!(j["config"]["num_key_value_heads"], 3);
    assert_eq!(j["tensor_types"]["q4_1"]["tensors"], 210);
}

#[test]
fn chat_reads_turns_from_stdin_and_resets() {
    let mut child = bin()
        .args([
            "chat",
            "--temperature",
            "0",
            "-n",
            "12",
            "--system",
            "Answer in one word.",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\n/reset\nWhat is the capital of Italy?\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Paris"), "{out}");
    assert!(out.contains("Rome"), "{out}");
    assert!(stderr(&o).contains("(conversation forgotten)"));
}

#[test]
fn corrupt_model_file_is_a_clean_error() {
    let src = std::fs::read(ferrollama_assets::default_model().unwrap()).unwrap();
    let path = tmp("truncated.gguf");
    std::fs::write(&path, &src[..src.len() / 2]).unwrap();
    let o = run(&["generate", "--model", path.to_str().unwrap(), "-p", "hi"]);
    assert_clean_failure(&o, "truncated.gguf");
    assert_clean_failure(&o, "runs past the end of the file");
    std::fs::write(&path, b"not a model at all").unwrap();
    assert_clean_failure(&run(&["info", path.to_str().unwrap()]), "not a GGUF file");
    let _ = std::fs::remove_file(&path);
    assert_clean_failure(
        &run(&["tokenize", "--model", "/nonexistent.gguf", "x"]),
        "no such file",
    );
}

#[test]
fn prompt_longer_than_the_context_is_a_clean_error() {
    let prompt = "word ".repeat(100);
    let o = run(&["generate", "--ctx", "32", "-p", &prompt]);
    assert_clean_failure(&o, "more than the context of 32");
}

#[test]
fn perplexity_rejects_invalid_utf8_and_short_texts() {
    let path = tmp("bad.txt");
    std::fs::write(&path, [b'a', 0xFF, b'b']).unwrap();
    assert_clean_failure(
        &run(&["perplexity", "-f", path.to_str().unwrap()]),
        "not valid UTF-8",
    );
    std::fs::write(&path, "too short").unwrap();
    assert_clean_failure(
        &run(&["perplexity", "-f", path.to_str().unwrap(), "--ctx", "64"]),
        "at least 128",
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bench_json_has_llama_bench_records() {
    let o = run(&[
        "bench", "-p", "8", "-n", "4", "-r", "2", "-t", "2", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let records: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(records.len(), 2);
    let (pp, tg) = (&records[0], &records[1]);
    assert_eq!(
        (pp["n_prompt"].as_u64(), pp["n_gen"].as_u64()),
        (Some(8), Some(0))
    );
    assert_eq!(
        (tg["n_prompt"].as_u64(), tg["n_gen"].as_u64()),
        (Some(0), Some(4))
    );
    // Generation's share of the bandwidth ceiling: on the tg record only.
    assert!(pp["bandwidth_fraction"].is_null());
    assert!(tg["bandwidth_fraction"].as_f64().unwrap() > 0.0);
    for r in &records {
        assert_eq!(r["n_threads"], 2);
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2);
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
        assert!(r["stddev_ts"].as_f64().unwrap() >= 0.0);
        assert!(r["model_filename"].as_str().unwrap().ends_with(".gguf"));
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 50 << 20);
        assert!(r["read_bandwidth_gbs"].as_f64().unwrap() > 0.0);
        assert!(r["weight_bytes"].as_u64().unwrap() > 50 << 20);
    }
}

#[test]
fn every_weight_type_quantizes_loads_and_answers() {
    // Rows of 576 are not whole 256-blocks, so k-quant files hold k-quants only where
    // rows allow (the 1536-wide down projections) and llama-quantize's fallback elsewhere.
    let model = ferrollama_assets::default_model().unwrap();
    for ty in [
        "q4_0", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "bf16",
    ] {
        let out = tmp(&format!("{ty}.gguf"));
        let o = run(&[
            "quantize",
            model.to_str().unwrap(),
            out.to_str().unwrap(),
            "--type",
            ty,
        ]);
        assert!(o.status.success(), "{ty}: {}", stderr(&o));
        let info: serde_json::Value =
            serde_json::from_str(&stdout(&run(&["info", "--json", out.to_str().unwrap()])))
                .unwrap();
        assert!(
            info["tensor_types"].get(ty).is_some(),
            "{ty}: {}",
            info["tensor_types"]
        );
        let fallback = match ty {
            "q2_K" | "q3_K" => Some("q4_0"),
            "q4_K" => Some("q5_0"),
            "q5_K" => Some("q5_1"),
            "q6_K" => Some("q8_0"),
            _ => None,
        };
        if let Some(f) = fallback {
            let types = &info["tensor_types"];
            assert!(
                types.get(f).is_some() && types.get("f16").is_none(),
                "{ty}: {types}"
            );
        }
        let g = run(&[
            "generate",
            "--model",
            out.to_str().unwrap(),
            "--json",
            "--temperature",
            "0",
            "-n",
            "1",
            "-p",
            "The capital of France is",
        ]);
        assert!(g.status.success(), "{ty}: {}", stderr(&g));
        let j: serde_json::Value = serde_json::from_str(&stdout(&g)).unwrap();
        if matches!(ty, "q4_0" | "q2_K" | "q3_K") {
            // Q4_1 re-quantized to Q4_0 loses more (perplexity on a 6 KB excerpt at ctx 128
            // went from 29.8 to 36.0) and its greedy answer becomes " capital"; the 2- and
            // 3-bit K-quants (with q4_0 where rows are not whole 256-blocks) lose more still.
            assert_eq!(j["ids"].as_array().unwrap().len(), 1, "{ty}");
        } else {
            assert_eq!(j["text"], " Paris", "{ty}");
        }
        let _ = std::fs::remove_file(&out);
    }
}

#[test]
fn packed_weights_cache_is_written_once_then_mapped_with_the_same_output() {
    let model = ferrollama_assets::default_model().unwrap();
    let home = tmp("pack-home");
    let _ = std::fs::remove_dir_all(&home);
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--json",
            "--temperature",
            "0",
            "-n",
            "4",
            "-p",
            "The capital of France is",
        ];
        args.extend_from_slice(extra);
        let o = bin()
            .env("FERROLLAMA_HOME", &home)
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        (j["ids"].clone(), stderr(&o))
    };
    let (plain, _) = generate(&["--no-pack-cache"]);
    assert!(
        !home.join("packed").exists(),
        "--no-pack-cache wrote a cache"
    );
    let (first, _) = generate(&[]);
    let files: Vec<_> = std::fs::read_dir(home.join("packed"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let (second, _) = generate(&[]);
    assert_eq!((&first, &second), (&plain, &plain));
    // A damaged file: a warning, the same answer, and a good file again.
    std::fs::write(files[0].path(), b"FLPACK\x00\x01 and then nothing").unwrap();
    let (third, err) = generate(&[]);
    assert_eq!(third, plain);
    assert!(
        err.contains("warning: ignoring") && err.contains("repacking"),
        "{err}"
    );
    assert!(std::fs::metadata(files[0].path()).unwrap().len() > 50 << 20);
    let _ = std::fs::remove_dir_all(&home);
}
