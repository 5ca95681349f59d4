//! `ferrollama train` end to end: a run killed with SIGKILL and resumed ends with the same
//! weights, bit for bit, as one that was never interrupted; the exported model generates;
//! bad settings and data are clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrollama"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ferrollama-cli-train-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fortune-style corpus written for this test.
fn corpus(dir: &Path) -> PathBuf {
    let s = [
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "A lazy afternoon by the river: the dog sleeps while the fox watches.",
        "In 1984 the weather was cold, and in 2023 it was warmer than ever.",
        "Small models learn quickly when the text repeats what they have seen.",
    ];
    let docs: Vec<String> = (0..120)
        .map(|i| format!("{} {}", s[i % 4], s[(i / 4 + 1) % 4]))
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, docs.join("\n%\n")).unwrap();
    path
}

fn train_args(corpus: &Path, out: &Path, steps: u32) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--preset",
        "260k",
        "--vocab-size",
        "300",
        "--separator",
        "%",
        "--seq-len",
        "32",
        "--batch-tokens",
        "128",
        "--micro-batch",
        "2",
        "--warmup",
        "10",
        "--eval-every",
        "0",
        "--checkpoint-every",
        "5",
        "--lr",
        "1e-3",
    ]
    .map(String::from)
    .to_vec();
    v.extend(["--steps".into(), steps.to_string()]);
    v.extend(["--data".into(), corpus.display().to_string()]);
    v.extend(["--out".into(), out.display().to_string()]);
    v
}

/// Every file the run exports, by name.
fn exported_files(out: &Path) -> Vec<(&'static str, Vec<u8>)> {
    [
        "model.gguf",
        "hf/model.safetensors",
        "hf/config.json",
        "hf/tokenizer.json",
        "hf/tokenizer_config.json",
    ]
    .into_iter()
    .map(|f| (f, std::fs::read(out.join(f)).unwrap()))
    .collect()
}

fn check(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn sigkill_then_resume_gives_the_uninterrupted_weights() {
    let dir = tmp("kill");
    let data = corpus(&dir);
    let steps = 120;
    // The tokenizer is learned once and shared, so both runs train on the same ids. Both
    // run directories are called `run`, the name the exported model takes.
    let straight = dir.join("straight/run");
    check(
        &bin()
            .args(train_args(&data, &straight, steps))
            .output()
            .unwrap(),
    );

    let killed = dir.join("killed/run");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::copy(
        straight.join("tokenizer.json"),
        killed.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::copy(
        straight.join("tokenizer_config.json"),
        killed.join("tokenizer_config.json"),
    )
    .unwrap();
    let mut child = bin()
        .args(train_args(&data, &killed, steps))
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it between checkpoints, some steps after the second one.
    let metrics = killed.join("metrics.jsonl");
    let started = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&metrics)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if lines >= 13 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never got going"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.join("model.gguf").exists(),
        "killed after it finished"
    );

    let mut resume = train_args(&data, &killed, steps);
    resume.push("--resume".into());
    let o = bin().args(&resume).output().unwrap();
    check(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming at step"));
    // Not only the weights: every exported file is the same, whether the run learned its
    // tokenizer or read it back, ran through or was killed and resumed.
    for ((name, a), (_, b)) in exported_files(&straight)
        .iter()
        .zip(exported_files(&killed))
    {
        assert!(
            *a == b,
            "{name} differs between the straight and the resumed run"
        );
    }
    let steps_logged: Vec<u64> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps_logged, (1..=steps as u64).collect::<Vec<_>>());

    // The exported model loads and generates.
    let o = bin()
        .args([
            "generate",
            "--temperature",
            "0",
            "-n",
            "8",
            "--prompt",
            "The quick",
        ])
        .arg("--model")
        .arg(killed.join("model.gguf"))
        .output()
        .unwrap();
    check(&o);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("The quick"));
}

#[test]
fn bad_settings_and_data_are_clear_errors() {
    let dir = tmp("bad");
    let data = corpus(&dir);
    let mut args = train_args(&data, &dir.join("a"), 3);
    let at = args.iter().position(|a| a == "--batch-tokens").unwrap();
    args[at + 1] = "100".into();
    let o = bin().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("multiple of seq_len"), "{err}");

    let latin1 = dir.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait\n").unwrap();
    let mut args = train_args(&latin1, &dir.join("b"), 3);
    args.extend([
        "--tokenizer".into(),
        dir.join("a/tokenizer.json").display().to_string(),
    ]);
    let o = bin().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not UTF-8") && !err.contains("panicked"),
        "{err}"
    );
}
