//! A run stopped part way and resumed from its checkpoint ends with the same weights,
//! bit for bit, as one that ran straight through; and its metrics tell one history.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use ferrollama_train::data::DataConfig;
use ferrollama_train::{Event, TrainConfig, Trainer};

mod common;

fn config(corpus: &Path) -> TrainConfig {
    TrainConfig {
        preset: "260k".into(),
        data: DataConfig {
            paths: vec![corpus.to_path_buf()],
            separator: Some("%".into()),
            val_fraction: 0.1,
            ..DataConfig::default()
        },
        lr: 1e-3,
        warmup: 3,
        steps: 8,
        seq_len: 32,
        batch_tokens: 128,
        micro_batch: 2,
        eval_every: 4,
        eval_sequences: 4,
        checkpoint_every: 3,
        seed: 11,
        ..TrainConfig::default()
    }
}

fn weights_bytes(out: &Path) -> Vec<u8> {
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    std::fs::read(
        out.join("checkpoints")
            .join(latest.trim())
            .join("model.safetensors"),
    )
    .unwrap()
}

#[test]
fn stopped_and_resumed_run_ends_bit_identical() {
    let tok = common::tokenizer();
    let dir = common::tmp("resume");
    let corpus = common::write_corpus(&dir, 80);
    let cache = dir.join("cache");
    let go = AtomicBool::new(false);

    let straight = dir.join("straight");
    let mut t = Trainer::new(config(&corpus), &tok, &straight, &cache, false).unwrap();
    let summary = t.run(&go, &mut |_| {}).unwrap();
    assert_eq!(summary.steps, 8);
    let last = summary.last.unwrap();
    assert!(last.val_loss.is_some() && last.loss.is_finite());

    // Stop after step 5: a checkpoint at 3 exists; the stop writes one at 5.
    let split = dir.join("split");
    let stop = AtomicBool::new(false);
    let mut t = Trainer::new(config(&corpus), &tok, &split, &cache, false).unwrap();
    let s = t
        .run(&stop, &mut |e| {
            if let Event::Step(m) = e {
                if m.step == 5 {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .unwrap();
    assert!(s.stopped && s.steps == 5);
    drop(t);
    let mut t = Trainer::new(config(&corpus), &tok, &split, &cache, true).unwrap();
    assert_eq!(t.step(), 5);
    assert_eq!(t.run(&go, &mut |_| {}).unwrap().steps, 8);
    assert_eq!(weights_bytes(&straight), weights_bytes(&split));

    let lines = |p: &Path| std::fs::read_to_string(p.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = lines(&split)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());
    // Same losses, step by step (tokens/s differ, so compare the loss field).
    let losses = |p: &Path| -> Vec<f64> {
        lines(p)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(losses(&straight), losses(&split));
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let tok = common::tokenizer();
    let dir = common::tmp("refuse");
    let corpus = common::write_corpus(&dir, 80);
    let cache = dir.join("cache");
    let out = dir.join("run");
    let mut cfg = config(&corpus);
    cfg.steps = 3;
    Trainer::new(cfg.clone(), &tok, &out, &cache, false)
        .unwrap()
        .run(&AtomicBool::new(false), &mut |_| {})
        .unwrap();
    cfg.lr = 2e-3;
    let err = Trainer::new(cfg, &tok, &out, &cache, true)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn loss_falls_on_a_repetitive_corpus() {
    let tok = common::tokenizer();
    let dir = common::tmp("learns");
    let corpus = common::write_corpus(&dir, 80);
    let mut cfg = config(&corpus);
    cfg.steps = 30;
    cfg.lr = 3e-3;
    let mut losses = Vec::new();
    Trainer::new(cfg, &tok, &dir.join("run"), &dir.join("cache"), false)
        .unwrap()
        .run(&AtomicBool::new(false), &mut |e| {
            if let Event::Step(m) = e {
                losses.push(m.loss);
            }
        })
        .unwrap();
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    // The initial loss is about ln(vocab) = ln(320) = 5.77.
    assert!((first - (320f64).ln()).abs() < 0.3, "{first}");
    assert!(last < 0.7 * first, "{first} -> {last}");
}
