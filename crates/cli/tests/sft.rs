//! `ferrollama sft`, `merge` and `--lora` end to end on the committed tiny model: the mask
//! is shown, a LoRA run writes a PEFT adapter and a merged model, the adapter applied
//! unmerged and the merged model give the same logits, `merge` reports its distance from
//! the unmerged model, and a flag that would do nothing is an error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrollama"))
}

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny/tiny-260k-q8_0.gguf")
}

fn run(args: &[&str]) -> Output {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn data(dir: &Path) -> PathBuf {
    let words = ["cat", "dog", "sun", "tree", "boat", "rain", "star", "fish"];
    let mut text = String::new();
    for (i, w) in words.iter().cycle().take(24).enumerate() {
        let rec = serde_json::json!({"prompt": format!("Say {w} twice, {i}."), "completion": format!("{w} {w}")});
        text.push_str(&format!("{rec}\n"));
    }
    let p = dir.join("data.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn logits(path: &Path) -> Vec<f32> {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    t["logits"].flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn lora_run_adapter_merge_and_logits_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = data(d);
    let (tiny, data_s) = (tiny(), data.to_str().unwrap().to_string());
    let tiny_s = tiny.to_str().unwrap();

    let shown = run(&[
        "sft",
        "--model",
        tiny_s,
        "--data",
        &data_s,
        "--show-mask",
        "2",
    ]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.matches("--- conversation").count(), 2, "{shown}");
    assert!(shown.contains("[[") && shown.contains("]]"), "{shown}");

    let out = d.join("run");
    let out_s = out.to_str().unwrap();
    let r = run(&[
        "sft",
        "--model",
        tiny_s,
        "--data",
        &data_s,
        "--lora-rank",
        "4",
        "--lora-targets",
        "q,v,down",
        "--steps",
        "3",
        "--lr",
        "1e-2",
        "--seq-len",
        "64",
        "--batch-size",
        "4",
        "--micro-batch",
        "2",
        "--out",
        out_s,
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("peak RSS during training"), "{err}");
    let adapter = out.join("adapter");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["down_proj", "q_proj", "v_proj"])
    );
    assert!(out.join("model.gguf").exists());

    // Unmerged (base + adapter) and merged give the same logits on the training path.
    let adapter_s = adapter.to_str().unwrap();
    let (a, b, c) = (
        d.join("a.safetensors"),
        d.join("b.safetensors"),
        d.join("c.safetensors"),
    );
    let tokens = "1,45,300,12,7,99,256,3";
    run(&[
        "logits",
        "--model",
        tiny_s,
        "--lora",
        adapter_s,
        "--tokens",
        tokens,
        "--out",
        a.to_str().unwrap(),
    ]);
    let merged = d.join("merged.gguf");
    let text = d.join("text.txt");
    std::fs::write(
        &text,
        "Once upon a time there was a cat. The cat liked the sun. ".repeat(20),
    )
    .unwrap();
    let m = run(&[
        "merge",
        "--model",
        tiny_s,
        "--lora",
        adapter_s,
        "--out",
        merged.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--compare-ctx",
        "64",
    ]);
    let report = String::from_utf8_lossy(&m.stdout);
    assert!(
        report.contains("KL divergence") && report.contains("perplexity: unmerged"),
        "{report}"
    );
    run(&[
        "logits",
        "--model",
        merged.to_str().unwrap(),
        "--tokens",
        tokens,
        "--out",
        b.to_str().unwrap(),
    ]);
    let (la, lb) = (logits(&a), logits(&b));
    let worst = la
        .iter()
        .zip(&lb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "merged and unmerged differ by {worst}");
    // The adapter does something.
    run(&[
        "logits",
        "--model",
        tiny_s,
        "--tokens",
        tokens,
        "--out",
        c.to_str().unwrap(),
    ]);
    let base = logits(&c);
    assert!(la.iter().zip(&base).any(|(x, y)| (x - y).abs() > 1e-3));

    // Generation with the adapter unmerged runs; the exported merged model too.
    run(&[
        "generate",
        "--model",
        tiny_s,
        "--lora",
        &format!("{adapter_s}:0.5"),
        "-p",
        "Once",
        "-n",
        "4",
        "--temperature",
        "0",
    ]);
}

#[test]
fn flags_that_would_do_nothing_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny();
    let tiny_s = tiny.to_str().unwrap();
    let fail = |args: &[&str]| -> String {
        let out = bin().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = fail(&[
        "tokenize",
        "--model",
        tiny_s,
        "--lora",
        dir.path().to_str().unwrap(),
        "hi",
    ]);
    assert!(
        e.contains("adapter_config.json") || e.contains("does not take"),
        "{e}"
    );
    let e = fail(&[
        "generate",
        "--model",
        tiny_s,
        "--lora",
        "/nonexistent",
        "-p",
        "x",
    ]);
    assert!(e.contains("adapter_config.json"), "{e}");
    let data = data(dir.path());
    let e = fail(&[
        "sft",
        "--model",
        tiny_s,
        "--data",
        data.to_str().unwrap(),
        "--qlora",
    ]);
    assert!(e.contains("lora-rank"), "{e}");
    let e = fail(&[
        "merge",
        "--model",
        tiny_s,
        "--out",
        dir.path().join("m.gguf").to_str().unwrap(),
    ]);
    assert!(e.contains("nothing to merge"), "{e}");
}

/// `ferrollama dpo` with LoRA (IPO loss, an NLL term on the chosen answers): prints the
/// held-out figures from ln 2 at step 0, writes the reference, the adapter and the model;
/// the adapter loads for inference; broken pairs are an error naming the record.
#[test]
fn dpo_runs_end_to_end_and_bad_pairs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let words = ["cat", "dog", "sun", "tree", "boat", "rain", "star", "fish"];
    let mut text = String::new();
    for (i, w) in words.iter().cycle().take(24).enumerate() {
        let rec = serde_json::json!({"prompt": format!("Tell me about the {w}, {i}."),
            "chosen": format!("The {w} is kind."), "rejected": format!("The {w} is bad.")});
        text.push_str(&format!("{rec}\n"));
    }
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(&pairs, text).unwrap();
    let out = dir.path().join("dpo");
    let (tiny, pairs_s, out_s) = (
        tiny().to_str().unwrap().to_string(),
        pairs.to_str().unwrap().to_string(),
        out.to_str().unwrap().to_string(),
    );
    let o = run(&[
        "dpo",
        "--model",
        &tiny,
        "--data",
        &pairs_s,
        "--out",
        &out_s,
        "--lora-rank",
        "4",
        "--loss",
        "ipo",
        "--nll-weight",
        "0.2",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--micro-batch",
        "2",
        "--seq-len",
        "48",
        "--lr",
        "3e-3",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("step 0, held out: loss"), "{err}");
    assert!(err.contains("step 4, held out"), "{err}");
    for f in [
        "reference.json",
        "dpo.toml",
        "adapter/adapter_config.json",
        "model.gguf",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let adapter = out.join("adapter");
    run(&[
        "generate",
        "--model",
        &tiny,
        "--lora",
        adapter.to_str().unwrap(),
        "-p",
        "The cat",
        "--max-tokens",
        "4",
        "--temperature",
        "0",
    ]);
    std::fs::write(&pairs, "{\"prompt\": \"q\", \"chosen\": \"a\"}\n").unwrap();
    let o = bin()
        .args(["dpo", "--model", &tiny, "--data", &pairs_s, "--out", &out_s])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("record 1") && err.contains("rejected"),
        "{err}"
    );
}

/// `ferrollama reward train` then `reward score`: the held-out pairwise accuracy is
/// printed, the score head written, and the trained model scores chosen answers above
/// rejected ones on pairs and on single conversations; combined with a safety model as
/// Llama 2 combines them.
#[test]
fn reward_model_trains_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let words = ["cat", "dog", "sun", "tree", "boat", "rain", "star", "fish"];
    let mut text = String::new();
    for (i, w) in words.iter().cycle().take(32).enumerate() {
        let rec = serde_json::json!({"prompt": format!("Tell me about the {w}, {i}."),
            "chosen": format!("The {w} is kind."), "rejected": format!("The {w} is bad."),
            "margin": 1});
        text.push_str(&format!("{rec}\n"));
    }
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(&pairs, text).unwrap();
    let out = dir.path().join("rm");
    let (tiny, pairs_s, out_s) = (
        tiny().to_str().unwrap().to_string(),
        pairs.to_str().unwrap().to_string(),
        out.to_str().unwrap().to_string(),
    );
    let o = run(&[
        "reward",
        "train",
        "--model",
        &tiny,
        "--data",
        &pairs_s,
        "--out",
        &out_s,
        "--lora-rank",
        "4",
        "--steps",
        "12",
        "--batch-size",
        "8",
        "--micro-batch",
        "4",
        "--seq-len",
        "48",
        "--lr",
        "3e-3",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("step 12, held out: loss") && err.contains("pairwise accuracy"),
        "{err}"
    );
    assert!(out.join("score.safetensors").exists() && out.join("reward.toml").exists());
    let single = dir.path().join("single.jsonl");
    std::fs::write(
        &single,
        "{\"prompt\": \"Tell me about the moon.\", \"response\": \"The moon is kind.\"}\n\
         {\"prompt\": \"Tell me about the moon.\", \"response\": \"The moon is bad.\"}\n",
    )
    .unwrap();
    let score = |file: &Path| -> Vec<serde_json::Value> {
        let o = run(&[
            "reward",
            "score",
            "--model",
            &out_s,
            "--data",
            file.to_str().unwrap(),
        ]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let s = score(&single);
    assert!(
        s[0]["score"].as_f64().unwrap() > s[1]["score"].as_f64().unwrap(),
        "{s:?}"
    );
    let p = score(&pairs);
    assert_eq!(p.len(), 32);
    let won = p
        .iter()
        .filter(|v| v["chosen_score"].as_f64() > v["rejected_score"].as_f64())
        .count();
    assert!(won >= 30, "{won} of 32");
    let o = bin()
        .args(["reward", "score", "--model", &tiny, "--data", &pairs_s])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("reward train"));
    // Combined with a "safety" model (the same one here): on a prompt marked unsafe the
    // safety score decides, and the whitened column has mean 0 over the file.
    std::fs::write(
        &single,
        "{\"prompt\": \"Tell me about the moon.\", \"response\": \"The moon is kind.\", \"unsafe\": true}\n\
         {\"prompt\": \"Tell me about the sun.\", \"response\": \"The sun is bad.\"}\n",
    )
    .unwrap();
    let o = run(&[
        "reward",
        "score",
        "--model",
        &out_s,
        "--safety-model",
        &out_s,
        "--data",
        single.to_str().unwrap(),
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["combined"], lines[0]["safety_score"]);
    let w: f64 = lines.iter().map(|v| v["whitened"].as_f64().unwrap()).sum();
    assert!(w.abs() < 1e-9, "{lines:?}");

    // Rejection sampling against it (and it again as the safety model): one round, the
    // table printed, the round's files written; settings that cannot work are refused.
    let rs = dir.path().join("rs");
    let rs_s = rs.to_str().unwrap().to_string();
    let rs_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "rs",
            "--model",
            &tiny,
            "--prompts",
            &pairs_s,
            "--reward",
            &out_s,
            "--safety-reward",
            &out_s,
            "--out",
            &rs_s,
            "--rounds",
            "1",
            "--max-new-tokens",
            "12",
            "--stop",
            ".",
            "--lora-rank",
            "4",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--micro-batch",
            "4",
            "--seq-len",
            "48",
            "--val-fraction",
            "0.25",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let args = rs_args(&["--samples", "2"]);
    let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| 0 |") && table.contains("| 1 |"),
        "{table}"
    );
    let rounds = std::fs::read_to_string(rs.join("rounds.jsonl")).unwrap();
    assert_eq!(rounds.lines().count(), 2);
    for f in [
        "round-1/samples.jsonl",
        "round-1/best.jsonl",
        "model.gguf",
        "rewards.png",
    ] {
        assert!(rs.join(f).exists(), "{f}");
    }
    for (extra, says) in [
        (&["--gguf-type", "q8_0"][..], "f32"),
        (&["--samples", "1"][..], "at least 2"),
        (&[][..], "--resume"),
    ] {
        let args = rs_args(extra);
        let o = bin().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(says),
            "{extra:?}: {err}"
        );
    }

    // PPO against the same reward models: two iterations, the table and the policy
    // written; LoRA dropout is refused, naming why.
    let ppo = dir.path().join("ppo");
    let ppo_s = ppo.to_str().unwrap().to_string();
    let ppo_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "ppo",
            "--model",
            &tiny,
            "--prompts",
            &pairs_s,
            "--reward",
            &out_s,
            "--safety-reward",
            &out_s,
            "--out",
            &ppo_s,
            "--iterations",
            "2",
            "--rollouts",
            "4",
            "--minibatch",
            "2",
            "--max-new-tokens",
            "12",
            "--micro-batch",
            "2",
            "--seq-len",
            "80",
            "--val-fraction",
            "0.25",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let o = bin()
        .args(ppo_args(&["--lora-rank", "4", "--lora-dropout", "0.1"]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("dropout"), "{err}");
    let args = ppo_args(&["--lora-rank", "4"]);
    let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| 0 |") && table.contains("| 2 |"),
        "{table}"
    );
    let metrics = std::fs::read_to_string(ppo.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    for f in ["model.gguf", "adapter/adapter_config.json", "evals.jsonl"] {
        assert!(ppo.join(f).exists(), "{f}");
    }
    // A run killed between an iteration's checkpoint and the removal of the policy it
    // sampled with leaves that policy behind (found by scripts/kill_test.py); resuming
    // removes it, so a resumed run leaves what an uninterrupted one does.
    for stale in ["iter-1/policy", "eval/policy-2"] {
        std::fs::create_dir_all(ppo.join(stale)).unwrap();
        std::fs::write(ppo.join(stale).join("adapter_model.safetensors"), b"x").unwrap();
    }
    let mut resume = args.clone();
    resume.push("--resume".into());
    run(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    for stale in ["iter-1/policy", "eval/policy-2"] {
        assert!(!ppo.join(stale).exists(), "{stale} left behind");
    }
}

/// `ferrollama data distill` and `data gatt` end to end: SFT data that `sft` reads, the
/// pre-prompt absent, the instruction on the first turn only; a missing instruction is an
/// error.
#[test]
fn data_commands_write_sft_data() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny().to_str().unwrap().to_string();
    let prompts = data(dir.path());
    let out = dir.path().join("distilled.jsonl");
    let o = run(&[
        "data",
        "distill",
        "--model",
        &tiny,
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--preprompt",
        "Be kind and safe.",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0.8",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("distilled answers"), "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("Be kind and safe"));
    let dialogues = dir.path().join("dialogues.jsonl");
    std::fs::write(
        &dialogues,
        "{\"turns\": [\"Tell me a story.\", \"And then?\", \"How did it end?\"]}\n\
         {\"messages\": [{\"role\": \"user\", \"content\": \"Hi.\"}, {\"role\": \"assistant\", \"content\": \"x\"}, {\"role\": \"user\", \"content\": \"Go on.\"}]}\n",
    )
    .unwrap();
    let gatt = dir.path().join("gatt.jsonl");
    let args = [
        "data",
        "gatt",
        "--model",
        &tiny,
        "--dialogues",
        dialogues.to_str().unwrap(),
        "--out",
        gatt.to_str().unwrap(),
        "--max-new-tokens",
        "200",
        "--temperature",
        "0.8",
    ];
    let o = bin().args(args).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--instruction"));
    let mut with = args.to_vec();
    with.extend(["--instruction", "Speak like a pirate."]);
    run(&with);
    let sampled = dir.path().join("sampled.jsonl");
    run(&[
        "data",
        "sample",
        "--model",
        &tiny,
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        sampled.to_str().unwrap(),
        "--samples",
        "3",
        "--max-new-tokens",
        "8",
        "--temperature",
        "1",
    ]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&sampled)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 24);
    assert_eq!(lines[0]["answers"].as_array().unwrap().len(), 3);
    assert_eq!(lines[0]["prompt_messages"][0]["role"], "user");
    assert_eq!(lines[0]["completion"], "cat cat");
    let written = std::fs::read_to_string(&gatt).unwrap();
    assert!(written.lines().count() >= 3, "{written}");
    for line in written.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            v["messages"].to_string().matches("pirate").count(),
            1,
            "{v}"
        );
        assert_eq!(v["instruction"], "Speak like a pirate.");
    }
}
