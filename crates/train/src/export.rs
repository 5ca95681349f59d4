//! The trained model as files other tools load: a Hugging Face directory (`config.json`,
//! f32 `model.safetensors`, `tokenizer.json`) and a GGUF file made from it by the model
//! crate's converter, which llama.cpp and ferrollama's own loaders read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferrollama_gguf::GgmlType;
use ferrollama_tokenizer::Tokenizer;

use crate::checkpoint::{save_tensors, write_synced};
use crate::error::{Error, Result};
use crate::model::TrainModel;

/// Writes `out/hf/` and `out/model.gguf` (matrices in `gguf_type`); returns their paths.
pub fn export(
    model: &TrainModel,
    tokenizer: &Tokenizer,
    out: &Path,
    gguf_type: GgmlType,
) -> Result<(PathBuf, PathBuf)> {
    let hf = out.join("hf");
    std::fs::create_dir_all(&hf).map_err(|e| crate::error::io(&hf, e))?;
    let weights: BTreeMap<String, candle_core::Tensor> = model
        .params()
        .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
        .collect();
    save_tensors(&hf.join("model.safetensors"), &weights)?;
    let config =
        ferrollama_model::hf::config_to_hf(&model.config, tokenizer.bos(), tokenizer.eos());
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::Config(format!("encoding config.json: {e}")))?;
    write_synced(&hf.join("config.json"), text.as_bytes())?;
    tokenizer.write_hf_dir(&hf)?;
    let gguf = out.join("model.gguf");
    ferrollama_model::export::hf_to_gguf(
        &hf,
        &gguf,
        gguf_type,
        tokenizer.vocab().to_gguf_metadata(),
        |_, _| {},
    )?;
    Ok((hf, gguf))
}
