//! Data parallelism: ranks that split each step's micro-batches and sum their gradients
//! train the same model as one process with the same global batch. Ranks here are threads
//! (`ThreadGroup`); `scripts/test-mpi-train.sh` runs the same comparison under `mpirun`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use ferrollama_train::collective::{Collective, ThreadGroup};
use ferrollama_train::data::DataConfig;
use ferrollama_train::{StepMetrics, TrainConfig, Trainer};

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
        lr: 2e-3,
        warmup: 2,
        steps: 6,
        seq_len: 32,
        // 4 micro-batches of 2 sequences per step.
        batch_tokens: 256,
        micro_batch: 2,
        eval_every: 3,
        eval_sequences: 4,
        checkpoint_every: 3,
        seed: 5,
        ..TrainConfig::default()
    }
}

fn metrics(out: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn final_weights(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("checkpoints/step-00000006/model.safetensors")).unwrap()
}

#[test]
fn two_ranks_train_the_single_process_model() {
    let tok = common::tokenizer();
    let dir = common::tmp("data-parallel");
    let corpus = common::write_corpus(&dir, 80);
    let cache = dir.join("cache");
    let go = AtomicBool::new(false);

    let alone = dir.join("alone");
    Trainer::new(config(&corpus), &tok, &alone, &cache, false)
        .unwrap()
        .run(&go, &mut |_| {})
        .unwrap();

    // A fresh cache, so the two ranks also share its first tokenization.
    let together = dir.join("together");
    let cache2 = dir.join("cache2");
    let (corpus, tok) = (&corpus, &tok);
    std::thread::scope(|s| {
        for group in ThreadGroup::new(2) {
            let (together, cache2, go) = (&together, &cache2, &go);
            s.spawn(move || {
                let mut t =
                    Trainer::new_in_group(config(corpus), tok, together, cache2, false, &group)
                        .unwrap();
                let summary = t.run(go, &mut |_| {}).unwrap();
                assert_eq!(summary.steps, 6, "rank {}", group.rank());
            });
        }
    });

    let (a, b) = (metrics(&alone), metrics(&together));
    assert_eq!(a.len(), 6);
    assert_eq!(b.len(), 6, "only the leader writes metrics, once per step");
    for (x, y) in a.iter().zip(&b) {
        let rel = (x.loss - y.loss).abs() / x.loss.abs();
        assert!(rel <= 1e-5, "step {}: {} vs {}", x.step, x.loss, y.loss);
        assert_eq!(x.val_loss.is_some(), y.val_loss.is_some());
    }
    // Gradients are summed in f64, which is exact here, so the split changes nothing.
    assert_eq!(final_weights(&alone), final_weights(&together));
}

#[test]
fn a_stop_on_one_rank_stops_all_after_the_same_step() {
    let tok = common::tokenizer();
    let dir = common::tmp("data-parallel-stop");
    let corpus = common::write_corpus(&dir, 80);
    let out = dir.join("run");
    let cache = dir.join("cache");
    let (corpus, tok) = (&corpus, &tok);
    let steps: Vec<u64> = std::thread::scope(|s| {
        let joins: Vec<_> = ThreadGroup::new(2)
            .into_iter()
            .map(|group| {
                let (out, cache) = (&out, &cache);
                s.spawn(move || {
                    let mut t =
                        Trainer::new_in_group(config(corpus), tok, out, cache, false, &group)
                            .unwrap();
                    // Only rank 1 is asked to stop, from its second step on.
                    let stop = AtomicBool::new(false);
                    let flag = &stop;
                    let summary = if group.rank() == 1 {
                        // The non-leader gets no events; raise its flag from another thread.
                        std::thread::scope(|inner| {
                            inner.spawn(|| {
                                std::thread::sleep(std::time::Duration::from_millis(1));
                                flag.store(true, Ordering::Relaxed);
                            });
                            t.run(flag, &mut |_| {}).unwrap()
                        })
                    } else {
                        t.run(flag, &mut |_| {}).unwrap()
                    };
                    assert!(summary.stopped, "rank {}", group.rank());
                    summary.steps
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    assert_eq!(steps[0], steps[1]);
    assert!(steps[0] < 6);
    // The leader checkpointed the step they stopped at.
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), format!("step-{:08}", steps[0]));
}
