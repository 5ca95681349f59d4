//! Rejection-sampling fine-tuning on a real (tiny) GGUF checkpoint with a rule as the
//! reward (short answers score high, so the effect is known): the rounds raise the held-out
//! reward, the KL to the start is reported, the kept answers are the best finished ones; a
//! run stopped in its sampling, its fine-tuning and its measurement, and resumed each time,
//! ends with the same bytes as one run straight through; a run directory is not silently
//! reused, nor resumed with other settings.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{tiny_model, write_prompts, Short};
use ferrollama_model::lora::{LoraConfig, TARGETS};
use ferrollama_train::finetune::SftConfig;
use ferrollama_train::policy::Sampling;
use ferrollama_train::rejection::{
    choose_best, PromptAnswers, RejectionSampling, RoundSummary, RsConfig, RsEvent,
};

fn config(prompts: &Path) -> RsConfig {
    RsConfig {
        prompts: prompts.to_path_buf(),
        val_fraction: 0.25,
        rounds: 2,
        samples: 4,
        sampling: Sampling {
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 24,
            stop: vec![".".into()],
            parallel: 4,
        },
        val_samples: 2,
        seed: 5,
        tuning: SftConfig {
            model: tiny_model(),
            seq_len: 64,
            batch_size: 8,
            micro_batch: 4,
            epochs: 2,
            lr: 1e-2,
            checkpoint_every: 2,
            seed: 3,
            lora: Some(LoraConfig {
                rank: 4,
                alpha: 8.0,
                dropout: 0.0,
                targets: TARGETS.iter().map(|t| t.0).collect(),
                rslora: false,
            }),
            ..RsConfig::default().tuning
        },
        ..RsConfig::default()
    }
}

/// Runs (or resumes) in `out`; with `stop_at`, sets the stop flag at the first event it
/// accepts. The summaries, or None when stopped.
fn run(
    cfg: &RsConfig,
    out: &Path,
    resume: bool,
    stop_at: Option<&dyn Fn(&RsEvent) -> bool>,
) -> Option<Vec<RoundSummary>> {
    let rs = RejectionSampling::new(cfg.clone(), out, resume, &Short).unwrap();
    let stop = AtomicBool::new(false);
    rs.run(&stop, &mut |e| {
        if stop_at.is_some_and(|f| f(&e)) {
            stop.store(true, Ordering::Relaxed);
        }
    })
    .unwrap()
}

#[test]
fn rounds_raise_the_reward_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = write_prompts(dir.path());
    let cfg = config(&prompts);
    let straight = dir.path().join("straight");
    let s = run(&cfg, &straight, false, None).unwrap();
    assert_eq!(s.len(), 3);
    for r in &s {
        eprintln!(
            "round {}: held-out reward {:.3} (finished {:.2}), KL {:.3}, sampled {:?}, kept {:?}",
            r.round,
            r.heldout.reward.mean,
            r.heldout.finished,
            r.heldout.kl,
            r.sampled.map(|d| d.mean),
            r.kept.map(|d| d.mean)
        );
    }
    assert_eq!(s[0].heldout.kl, 0.0);
    assert!(
        s[2].heldout.reward.mean > s[0].heldout.reward.mean + 0.5,
        "{s:?}"
    );
    assert!(s[1].heldout.kl > 0.0 && s[2].heldout.kl > 0.0, "{s:?}");
    for r in &s[1..] {
        let (sampled, kept) = (r.sampled.unwrap(), r.kept.unwrap());
        assert!(kept.mean > sampled.mean, "{r:?}");
        assert!(r.sft_steps > 0);
    }
    // Every kept answer is the best finished one of its prompt, and is what was learned.
    let samples = std::fs::read_to_string(straight.join("round-1/samples.jsonl")).unwrap();
    let best = std::fs::read_to_string(straight.join("round-1/best.jsonl")).unwrap();
    let mut learned = best.lines();
    for line in samples.lines() {
        let p: PromptAnswers = serde_json::from_str(line).unwrap();
        assert_eq!(p.best, choose_best(&p.answers));
        if let Some(b) = p.best {
            let rec: serde_json::Value = serde_json::from_str(learned.next().unwrap()).unwrap();
            assert_eq!(rec["messages"][1]["content"], p.answers[b].text.as_str());
        }
    }
    assert!(learned.next().is_none());
    for f in ["rewards.svg", "rewards.png", "rounds.jsonl", "model.gguf"] {
        assert!(straight.join(f).exists(), "{f}");
    }

    // Stopped three times (sampling, fine-tuning, measuring), resumed each time.
    let stopped = dir.path().join("stopped");
    let stops: [&dyn Fn(&RsEvent) -> bool; 3] = [
        &|e| {
            matches!(
                e,
                RsEvent::Sampling {
                    round: 1,
                    heldout: false,
                    done: 5,
                    ..
                }
            )
        },
        &|e| {
            matches!(e, RsEvent::Tuning { round: 1, event: ferrollama_train::Event::Step(m) }
                if m.step == 3)
        },
        &|e| {
            matches!(
                e,
                RsEvent::Sampling {
                    round: 2,
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
    assert_eq!(
        bytes(&straight, "model.gguf"),
        bytes(&stopped, "model.gguf")
    );
    for f in [
        "round-1/samples.jsonl",
        "round-2/samples.jsonl",
        "round-2/heldout.jsonl",
    ] {
        assert_eq!(bytes(&straight, f), bytes(&stopped, f), "{f}");
    }
    let strip = |v: &[RoundSummary]| {
        v.iter()
            .map(|r| (r.heldout.clone(), r.sampled, r.kept, r.sft_steps))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&s), strip(&resumed));

    // Not reused silently; not resumed with other settings.
    let e = RejectionSampling::new(cfg.clone(), &straight, false, &Short)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    let mut other = cfg.clone();
    other.samples = 3;
    let e = RejectionSampling::new(other, &straight, true, &Short)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("other settings"), "{e}");
    // More rounds may be added to a finished run.
    let mut more = cfg;
    more.rounds = 3;
    assert!(RejectionSampling::new(more, &straight, true, &Short).is_ok());
}
