//! PPO on a real (tiny) GGUF checkpoint with a rule as the reward (short answers score
//! high, so the effect is known): the iterations raise the held-out reward, the KL to the
//! reference starts at exactly 0 (the adapter starts as a no-op and the reference is the
//! model with it switched off) and grows; a run stopped in its sampling, its update and
//! its final measurement, and resumed each time, ends with the same bytes as one run
//! straight through; full-weight PPO (its reference a second copy) learns and resumes too;
//! bad settings are refused.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{tiny_model, write_prompts, Short};
use ferrollama_model::lora::{LoraConfig, TARGETS};
use ferrollama_train::finetune::SftConfig;
use ferrollama_train::policy::Sampling;
use ferrollama_train::ppo::{Ppo, PpoConfig, PpoEval, PpoEvent, PpoMetrics};

fn config(prompts: &Path) -> PpoConfig {
    PpoConfig {
        prompts: prompts.to_path_buf(),
        val_fraction: 0.25,
        iterations: 10,
        rollouts: 16,
        minibatch: 8,
        ppo_epochs: 2,
        sampling: Sampling {
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 24,
            stop: vec![".".into()],
            parallel: 4,
        },
        val_samples: 2,
        tuning: SftConfig {
            model: tiny_model(),
            seq_len: 80,
            micro_batch: 4,
            lr: 4e-3,
            seed: 3,
            lora: Some(LoraConfig {
                rank: 4,
                alpha: 8.0,
                dropout: 0.0,
                targets: TARGETS.iter().map(|t| t.0).collect(),
                rslora: false,
            }),
            ..PpoConfig::default().tuning
        },
        ..PpoConfig::default()
    }
}

/// Runs (or resumes) in `out`; with `stop_at`, sets the stop flag at the first event it
/// accepts. The measurements, or None when stopped.
fn run(
    cfg: &PpoConfig,
    out: &Path,
    resume: bool,
    stop_at: Option<&dyn Fn(&PpoEvent) -> bool>,
) -> Option<Vec<PpoEval>> {
    let mut ppo = Ppo::new(cfg.clone(), out, resume, &Short).unwrap();
    let stop = AtomicBool::new(false);
    ppo.run(&stop, &mut |e| {
        if stop_at.is_some_and(|f| f(&e)) {
            stop.store(true, Ordering::Relaxed);
        }
    })
    .unwrap()
}

fn metrics(dir: &Path) -> Vec<PpoMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn iterations_raise_the_reward_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = write_prompts(dir.path());
    let cfg = config(&prompts);
    let straight = dir.path().join("straight");
    let evals = run(&cfg, &straight, false, None).unwrap();
    let m = metrics(&straight);
    for x in &m {
        eprintln!(
            "iteration {}: reward {:.3}, KL {:.4}, entropy {:.3}, clip {:.3}, approx KL {:.4}, value loss {:.4}",
            x.iteration, x.reward.mean, x.kl, x.entropy, x.clip_fraction, x.approx_kl, x.value_loss
        );
    }
    for e in &evals {
        eprintln!(
            "after {}: held-out reward {:.3}, KL {:.4}, finished {:.2}",
            e.iteration, e.heldout.reward.mean, e.heldout.kl, e.heldout.finished
        );
    }
    assert_eq!(evals.len(), 2);
    assert_eq!(m.len(), 10);
    // The adapter starts as a no-op: the first iteration's answers are the reference's.
    assert_eq!(m[0].kl, 0.0);
    assert_eq!(evals[0].heldout.kl, 0.0);
    assert!(evals[1].heldout.kl > 0.0, "{evals:?}");
    assert!(
        evals[1].heldout.reward.mean > evals[0].heldout.reward.mean + 0.5,
        "{evals:?}"
    );
    assert!(m
        .iter()
        .all(|x| x.entropy > 0.0 && x.value_loss.is_finite()));
    assert!(m.iter().any(|x| x.clip_fraction > 0.0), "{m:?}");
    for f in [
        "model.gguf",
        "adapter/adapter_config.json",
        "evals.jsonl",
        "eval/iter-10.jsonl",
    ] {
        assert!(straight.join(f).exists(), "{f}");
    }
    // The adapter written holds the LoRA matrices and not the value head.
    let adapter = std::fs::read(straight.join("adapter/adapter_model.safetensors")).unwrap();
    let text = String::from_utf8_lossy(&adapter);
    assert!(text.contains("lora_A") && !text.contains("value.weight"));

    // Stopped three times (sampling, updating, the last measurement), resumed each time.
    let stopped = dir.path().join("stopped");
    let stops: [&dyn Fn(&PpoEvent) -> bool; 3] = [
        &|e| {
            matches!(
                e,
                PpoEvent::Sampling {
                    iteration: 2,
                    heldout: false,
                    done: 5,
                    ..
                }
            )
        },
        &|e| matches!(e, PpoEvent::Stage { iteration: 4, what } if what.starts_with("log-prob")),
        &|e| {
            matches!(
                e,
                PpoEvent::Sampling {
                    iteration: 10,
                    heldout: true,
                    done: 3,
                    ..
                }
            )
        },
    ];
    for (i, at) in stops.into_iter().enumerate() {
        assert!(run(&cfg, &stopped, i > 0, Some(at)).is_none(), "stop {i}");
    }
    let resumed = run(&cfg, &stopped, true, None).unwrap();
    let bytes = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    for f in [
        "model.gguf",
        "adapter/adapter_model.safetensors",
        "iter-4/rollouts.jsonl",
        "iter-6/rollouts.jsonl",
        "eval/iter-10.jsonl",
        "evals.jsonl",
    ] {
        assert_eq!(bytes(&straight, f), bytes(&stopped, f), "{f}");
    }
    assert_eq!(evals, resumed);
    let strip = |v: Vec<PpoMetrics>| {
        v.into_iter()
            .map(|mut x| {
                x.tokens_per_s = 0.0;
                x
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(m), strip(metrics(&stopped)));

    // Not reused silently; not resumed with other settings; more iterations may follow.
    let e = Ppo::new(cfg.clone(), &straight, false, &Short)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    let mut other = cfg.clone();
    other.kl_coef = 0.05;
    let e = Ppo::new(other, &straight, true, &Short)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("other settings"), "{e}");
    let mut more = cfg;
    more.iterations = 11;
    assert!(Ppo::new(more, &straight, true, &Short).is_ok());
}

#[test]
fn settings_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = write_prompts(dir.path());
    let err = |cfg: PpoConfig| {
        Ppo::new(cfg, &dir.path().join("run"), false, &Short)
            .err()
            .expect("refused")
            .to_string()
    };
    let mut dropout = config(&prompts);
    dropout.tuning.lora.as_mut().unwrap().dropout = 0.1;
    assert!(err(dropout).contains("dropout"));
    let mut short = config(&prompts);
    short.tuning.seq_len = 16;
    assert!(err(short).contains("--seq-len"));
    let mut no_value = config(&prompts);
    no_value.vf_coef = 0.0;
    assert!(err(no_value).contains("vf_coef"));
    let mut greedy = config(&prompts);
    greedy.sampling.temperature = 0.0;
    assert!(err(greedy).contains("temperature"));
}

#[test]
fn full_weight_ppo_learns_against_a_copy_of_the_start_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = write_prompts(dir.path());
    let mut cfg = config(&prompts);
    cfg.tuning.lora = None;
    cfg.tuning.lr = 2e-3;
    cfg.iterations = 6;
    let straight = dir.path().join("straight");
    let evals = run(&cfg, &straight, false, None).unwrap();
    let m = metrics(&straight);
    for e in &evals {
        eprintln!(
            "full weights, after {}: held-out reward {:.3}, KL {:.4}",
            e.iteration, e.heldout.reward.mean, e.heldout.kl
        );
    }
    // The reference is the start exactly: nothing moved yet, nothing to pay.
    assert_eq!(m[0].kl, 0.0);
    assert_eq!(evals[0].heldout.kl, 0.0);
    assert!(evals[1].heldout.kl > 0.0, "{evals:?}");
    assert!(
        evals[1].heldout.reward.mean > evals[0].heldout.reward.mean + 0.3,
        "{evals:?}"
    );
    assert!(straight.join("model.gguf").exists() && !straight.join("adapter").exists());
    assert!(
        !straight.join("iter-3/policy").exists(),
        "the sampled policy is not kept"
    );
    let stopped = dir.path().join("stopped");
    let at_sampling = |e: &PpoEvent| {
        matches!(
            e,
            PpoEvent::Sampling {
                iteration: 3,
                heldout: false,
                done: 5,
                ..
            }
        )
    };
    assert!(run(&cfg, &stopped, false, Some(&at_sampling)).is_none());
    assert_eq!(run(&cfg, &stopped, true, None).unwrap(), evals);
    let bytes = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(
        bytes(&straight, "model.gguf"),
        bytes(&stopped, "model.gguf")
    );
}
