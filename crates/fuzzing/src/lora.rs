//! LoRA adapters are downloaded files: a JSON config and a safetensors file of matrices.

use std::sync::OnceLock;

use ferrollama_gguf::GgufFile;
use ferrollama_model::{Config, GgufWeights, Llama};

use crate::{parts, scratch};

/// `adapter_config.json` and `adapter_model.safetensors`: read and checked against the
/// tiny test model's shapes, as `run --lora` and `serve --lora` do; an adapter that loads
/// is attached and the model runs.
pub fn adapter(data: &[u8]) {
    let p = parts::split(data, 2);
    let dir = scratch::write(&[
        ("adapter_config.json", p[0]),
        ("adapter_model.safetensors", p[1]),
    ]);
    let (cfg, _) = tiny();
    if ferrollama_model::adapters::inference_deltas(cfg, &dir, 1.0).is_err() {
        return;
    }
    let mut model = load_tiny();
    if model.attach_lora(&dir, 0.5).is_ok() {
        let mut cache = model.new_cache(8);
        let logits = model.forward(&[1, 7, 30], &mut cache, 1);
        assert!(logits.is_ok(), "an attached adapter fails to run");
    }
}

/// The tiny test model (`tests/data/tiny`): its config and file.
fn tiny() -> &'static (Config, GgufFile) {
    static CELL: OnceLock<(Config, GgufFile)> = OnceLock::new();
    CELL.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data/tiny/tiny-260k-q8_0.gguf");
        let file = GgufFile::open(&path).expect("the tiny test model");
        (Config::from_gguf(&file).expect("its config"), file)
    })
}

fn load_tiny() -> Llama {
    let (cfg, file) = tiny();
    Llama::load(&GgufWeights::new(file), cfg.clone(), 8).expect("loading the tiny model")
}
