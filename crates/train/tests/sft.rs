//! Supervised fine-tuning of a real (tiny) GGUF checkpoint: the held-out loss on the
//! answers falls, a stopped and resumed run ends bit-identical to one run straight through,
//! and a resume with other settings is refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ferrollama_generate::ChatFormat;
use ferrollama_tokenizer::Tokenizer;
use ferrollama_train::finetune::{FineTuner, SftConfig, SftData};
use ferrollama_train::Event;

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny/tiny-260k-q8_0.gguf")
}

/// Conversations with a rule to learn: the answer repeats the question's word twice.
fn write_data(dir: &Path) -> PathBuf {
    let words = [
        "cat", "dog", "sun", "tree", "boat", "rain", "star", "fish", "bird", "moon", "king",
        "ship", "road", "sand", "wind", "fire",
    ];
    let mut text = String::new();
    for (i, w) in words.iter().cycle().take(48).enumerate() {
        let prompt = format!("Say {w} twice, {i}.");
        let rec = serde_json::json!({"prompt": prompt, "completion": format!("{w} {w}")});
        text.push_str(&format!("{rec}\n"));
    }
    let path = dir.join("data.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn config(data: &Path) -> SftConfig {
    SftConfig {
        model: tiny_model(),
        data: data.to_path_buf(),
        val_fraction: 0.2,
        seq_len: 96,
        batch_size: 4,
        micro_batch: 2,
        epochs: 3,
        lr: 3e-3,
        checkpoint_every: 4,
        eval_every: 5,
        seed: 5,
        ..SftConfig::default()
    }
}

fn prepare(cfg: &SftConfig, tok: &Tokenizer) -> SftData {
    SftData::load(cfg, &ChatFormat::Llama2, tok).unwrap()
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

#[test]
fn fine_tuning_learns_and_resumes_bit_identical() {
    let tok = Tokenizer::from_gguf_path(tiny_model()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let cfg = config(&data);
    let go = AtomicBool::new(false);

    let straight = dir.path().join("straight");
    let mut t = FineTuner::new(cfg.clone(), prepare(&cfg, &tok), &tok, &straight, false).unwrap();
    assert!(!t.data.val.is_empty() && t.data.train.len() + t.data.val.len() == 48);
    let total = t.total_steps();
    assert!(total >= 6, "{total} steps");
    let before = t.validation_loss().unwrap().unwrap();
    let summary = t.run(&go, &mut |_| {}).unwrap();
    let after = summary.last.unwrap().val_loss.unwrap();
    assert!(after < 0.7 * before, "held-out loss {before} -> {after}");

    let split = dir.path().join("split");
    let stop = AtomicBool::new(false);
    let mut t = FineTuner::new(cfg.clone(), prepare(&cfg, &tok), &tok, &split, false).unwrap();
    let s = t
        .run(&stop, &mut |e| {
            if let Event::Step(m) = e {
                if m.step == 3 {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        })
        .unwrap();
    assert!(s.stopped && s.steps == 3);
    drop(t);
    let mut t = FineTuner::new(cfg.clone(), prepare(&cfg, &tok), &tok, &split, true).unwrap();
    assert_eq!(t.step(), 3);
    assert_eq!(t.run(&go, &mut |_| {}).unwrap().steps, total);
    assert_eq!(latest_weights(&straight), latest_weights(&split));

    let mut other = cfg.clone();
    other.lr = 1e-3;
    let err = FineTuner::new(other.clone(), prepare(&other, &tok), &tok, &split, true)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn rows_longer_than_the_model_and_empty_data_are_refused() {
    let tok = Tokenizer::from_gguf_path(tiny_model()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let mut cfg = config(&data);
    cfg.seq_len = 100_000;
    let err = FineTuner::new(cfg.clone(), prepare(&cfg, &tok), &tok, dir.path(), false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("context"), "{err}");
    // Every answer past a 4-token cut: nothing left to learn.
    cfg.seq_len = 4;
    let err = SftData::load(&cfg, &ChatFormat::Llama2, &tok)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no conversation"), "{err}");
}

/// LoRA with dropout: only the adapters move, the held-out loss falls, a stopped and
/// resumed run ends bit-identical (the dropout masks replay), and the adapter written in
/// PEFT's layout loads back into the base model with the same logits.
#[test]
fn lora_learns_resumes_and_saves_a_peft_adapter() {
    use ferrollama_model::layout::Part;
    use ferrollama_model::lora::{read_peft_dir, LoraConfig};
    let tok = Tokenizer::from_gguf_path(tiny_model()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let mut cfg = config(&data);
    cfg.lr = 1e-2;
    cfg.lora = Some(LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: vec![Part::Query, Part::Value, Part::Up, Part::Down],
        rslora: false,
    });
    let go = AtomicBool::new(false);
    let straight = dir.path().join("straight");
    let mut t = FineTuner::new(cfg.clone(), prepare(&cfg, &tok), &tok, &straight, false).unwrap();
    assert!(t.model.params().all(|(n, _)| n.contains(".lora_")));
    let before = t.validation_loss().unwrap().unwrap();
    let summary = t.run(&go, &mut |_| {}).unwrap();
    let after = summary.last.unwrap().val_loss.unwrap();
    assert!(after < 0.8 * before, "held-out loss {before} -> {after}");

    let adapter = dir.path().join("adapter");
    ferrollama_train::finetune::save_peft_adapter(&t.model, &adapter, "tiny").unwrap();
    let (lcfg, tensors) = read_peft_dir(&adapter).unwrap();
    assert_eq!(lcfg.targets.len(), 4);
    let mut again = ferrollama_model::TrainableLlama::open(&tiny_model(), 96).unwrap();
    again.attach_lora(lcfg, 0, Some(tensors)).unwrap();
    let ids =
        candle_core::Tensor::new(&[[1u32, 5, 9, 13, 17, 2]], &candle_core::Device::Cpu).unwrap();
    let logits = |m: &ferrollama_model::TrainableLlama| {
        m.forward(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(logits(&again), logits(&t.model));

    let split = dir.path().join("split");
    let stop = AtomicBool::new(false);
    let mut t2 = FineTuner::new(cfg.clone(), prepare(&cfg, &tok), &tok, &split, false).unwrap();
    t2.run(&stop, &mut |e| {
        if let Event::Step(m) = e {
            if m.step == 2 {
                stop.store(true, Ordering::Relaxed);
            }
        }
    })
    .unwrap();
    drop(t2);
    let mut t2 = FineTuner::new(cfg.clone(), prepare(&cfg, &tok), &tok, &split, true).unwrap();
    assert_eq!(t2.step(), 2);
    t2.run(&go, &mut |_| {}).unwrap();
    assert_eq!(latest_weights(&straight), latest_weights(&split));
}
