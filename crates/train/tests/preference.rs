//! Preference training on a real (tiny) GGUF checkpoint: DPO with LoRA and in full, and a
//! LoRA reward model. DPO's first step's loss is ln 2 (the policy is its reference); the
//! held-out preference figures rise; a stopped and resumed run ends bit-identical to one
//! run straight through (DPO's reference read back from the run directory); a resume with
//! another objective setting is refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ferrollama_generate::ChatFormat;
use ferrollama_model::lora::{LoraConfig, TARGETS};
use ferrollama_tokenizer::Tokenizer;
use ferrollama_train::finetune::SftConfig;
use ferrollama_train::preference::{
    Objective, PairConfig, PairEvent, PairTrainer, PreferenceData, PreferenceLoss,
};

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny/tiny-260k-q8_0.gguf")
}

/// Pairs with a rule to learn: the chosen answer calls the thing kind, the rejected bad.
/// (A preference on word order alone, "The a is the b of the a" over its mirror, is
/// beyond this tiny model: what raises one pair's chosen raises another's rejected.)
fn write_pairs(dir: &Path) -> PathBuf {
    let words = [
        "cat", "dog", "sun", "tree", "boat", "rain", "star", "fish", "bird", "moon", "king",
        "ship", "road", "sand", "wind", "fire",
    ];
    let mut text = String::new();
    for i in 0..64 {
        let (a, b) = (words[i % 16], words[(i * 7 + 3) % 16]);
        let rec = serde_json::json!({"prompt": format!("Tell me about {a} and {b}."),
            "chosen": format!("The {a} is kind to the {b}."),
            "rejected": format!("The {a} is bad to the {b}.")});
        text.push_str(&format!("{rec}\n"));
    }
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn dpo(beta: f64) -> Objective {
    Objective::Dpo {
        beta,
        loss: PreferenceLoss::Sigmoid,
        nll: 0.0,
    }
}

fn config(data: &Path, lora: bool, objective: Objective) -> PairConfig {
    PairConfig {
        objective,
        tuning: SftConfig {
            model: tiny_model(),
            data: data.to_path_buf(),
            val_fraction: 0.25,
            seq_len: 64,
            batch_size: 8,
            micro_batch: 4,
            steps: Some(12),
            lr: if lora { 3e-3 } else { 1e-3 },
            checkpoint_every: 4,
            eval_every: 6,
            seed: 3,
            lora: lora.then(|| LoraConfig {
                rank: 4,
                alpha: 8.0,
                dropout: 0.0,
                targets: TARGETS.iter().map(|t| t.0).collect(),
                rslora: false,
            }),
            ..PairConfig::dpo().tuning
        },
    }
}

fn prepare(cfg: &PairConfig, tok: &Tokenizer) -> PreferenceData {
    PreferenceData::load(&cfg.tuning, &ChatFormat::Llama2, tok, true).unwrap()
}

fn latest_weights(out: &Path) -> Vec<u8> {
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    std::fs::read(
        out.join("checkpoints")
            .join(latest.trim())
            .join("model.safetensors"),
    )
    .unwrap()
}

fn learns_and_resumes(lora: bool, objective: Objective) {
    let tok = Tokenizer::from_gguf_path(tiny_model()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&write_pairs(dir.path()), lora, objective.clone());
    let is_dpo = matches!(objective, Objective::Dpo { .. });
    let go = AtomicBool::new(false);

    let straight = dir.path().join("straight");
    let mut t = PairTrainer::new(cfg.clone(), prepare(&cfg, &tok), &tok, &straight, false).unwrap();
    assert_eq!((t.data.train.len(), t.data.val.len()), (48, 16));
    let (mut first, mut initial, mut last) = (None, None, None);
    t.run(&go, &mut |e| match e {
        PairEvent::Initial(s) => initial = Some(*s),
        PairEvent::Step(m) => {
            first.get_or_insert(m.loss);
            if let Some(v) = m.val {
                last = Some(v);
            }
        }
        _ => {}
    })
    .unwrap();
    let (initial, last) = (initial.unwrap(), last.unwrap());
    if is_dpo {
        // The policy is its reference at the start: h = 0 exactly.
        assert!(
            (first.unwrap() - std::f64::consts::LN_2).abs() < 1e-6,
            "{first:?}"
        );
        assert!((initial.loss - std::f64::consts::LN_2).abs() < 1e-6);
        assert_eq!(initial.objective_margin, 0.0);
        assert!(last.margin > initial.margin, "{initial:?} -> {last:?}");
    }
    assert!(
        last.loss < initial.loss,
        "held-out loss {} -> {}",
        initial.loss,
        last.loss
    );
    assert!(
        last.loss < 0.3 && last.objective_accuracy > 0.9 && last.accuracy > 0.9,
        "{last:?}"
    );

    let split = dir.path().join("split");
    let stop = AtomicBool::new(false);
    let mut t = PairTrainer::new(cfg.clone(), prepare(&cfg, &tok), &tok, &split, false).unwrap();
    let s = t
        .run(&stop, &mut |e| {
            if let PairEvent::Step(m) = e {
                if m.step == 5 {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        })
        .unwrap();
    assert!(s.stopped && s.steps == 5);
    drop(t);
    let mut t = PairTrainer::new(cfg.clone(), prepare(&cfg, &tok), &tok, &split, true).unwrap();
    assert_eq!(t.step(), 5);
    assert_eq!(t.run(&go, &mut |_| {}).unwrap().steps, 12);
    assert_eq!(latest_weights(&straight), latest_weights(&split));

    let mut other = cfg.clone();
    other.objective = match objective {
        Objective::Dpo { .. } => dpo(0.2),
        Objective::Reward { use_margin } => Objective::Reward {
            use_margin: !use_margin,
        },
    };
    let err = PairTrainer::new(other.clone(), prepare(&other, &tok), &tok, &split, true)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn lora_dpo_learns_and_resumes_bit_identical() {
    learns_and_resumes(true, dpo(0.5));
}

#[test]
fn full_dpo_learns_and_resumes_bit_identical() {
    learns_and_resumes(false, dpo(0.5));
}

#[test]
fn lora_reward_model_learns_and_resumes_bit_identical() {
    learns_and_resumes(true, Objective::Reward { use_margin: true });
}

#[test]
fn dropout_and_bad_beta_are_refused() {
    let tok = Tokenizer::from_gguf_path(tiny_model()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&write_pairs(dir.path()), true, dpo(0.5));
    if let Some(l) = cfg.tuning.lora.as_mut() {
        l.dropout = 0.1;
    }
    let data = prepare(&cfg, &tok);
    assert!(PairTrainer::new(cfg, data, &tok, dir.path(), false).is_err());
    let cfg = config(&write_pairs(dir.path()), true, dpo(0.0));
    let data = prepare(&cfg, &tok);
    assert!(PairTrainer::new(cfg, data, &tok, dir.path(), false).is_err());
}
