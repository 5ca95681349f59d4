//! LoRA adapters are downloaded files: a JSON config and a safetensors file of matrices.

use std::cell::RefCell;

use ferrollama_gguf::GgufFile;
use ferrollama_model::llama::SeqBatch;
use ferrollama_model::{Config, GgufWeights, Llama};

use crate::{parts, scratch};

/// Adapters one loaded model takes before it is loaded afresh (each stays in memory).
const ADAPTERS_PER_MODEL: usize = 64;

/// `adapter_config.json` and `adapter_model.safetensors`: read and checked against the
/// tiny test model's shapes as `serve --lora-module` does; an adapter that loads runs, in a
/// batch beside a sequence without it.
pub fn adapter(data: &[u8]) {
    let p = parts::split(data, 2);
    let dir = scratch::write(&[
        ("adapter_config.json", p[0]),
        ("adapter_model.safetensors", p[1]),
    ]);
    MODEL.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot
            .as_ref()
            .is_none_or(|m| m.adapter_count() >= ADAPTERS_PER_MODEL)
        {
            *slot = Some(load_tiny());
        }
        let Some(model) = slot.as_mut() else { return };
        let Ok(id) = model.load_adapter(&dir, 0.5) else {
            return;
        };
        let (mut a, mut b) = (model.new_cache(8), model.new_cache(8));
        let seqs = [
            SeqBatch {
                tokens: &[1, 7, 30],
                outputs: 1,
                adapter: Some(id),
            },
            SeqBatch {
                tokens: &[1, 7],
                outputs: 1,
                adapter: None,
            },
        ];
        let logits = model.forward_batch(&seqs, &mut [&mut a, &mut b]);
        assert!(logits.is_ok(), "a loaded adapter fails to run");
    });
}

thread_local! {
    static MODEL: RefCell<Option<Llama>> = const { RefCell::new(None) };
}

/// The tiny test model (`tests/data/tiny`).
fn load_tiny() -> Llama {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/tiny/tiny-260k-q8_0.gguf");
    let file = GgufFile::open(&path).expect("the tiny test model");
    let cfg: Config = Config::from_gguf(&file).expect("its config");
    Llama::load(&GgufWeights::new(&file), cfg, 8).expect("loading the tiny model")
}
