//! The trained model as files other tools load: a Hugging Face directory (`config.json`,
//! f32 `model.safetensors`, `tokenizer.json`) and a GGUF file made from it by the model
//! crate's converter, which llama.cpp and ferrollama's own loaders read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferrollama_gguf::{GgmlType, Value};
use ferrollama_tokenizer::Tokenizer;

use crate::checkpoint::{save_tensors, write_synced};
use crate::error::{Error, Result};
use ferrollama_model::TrainableLlama;

/// Why a model with Llama 3.1 RoPE frequency factors but not the parameters they came from
/// (a GGUF file keeps only the factors) cannot be exported yet: the export goes through a
/// Hugging Face directory, whose `config.json` states the scaling by its parameters, so the
/// exported model would silently rotate wrong.
pub const LLAMA3_EXPORT: &str = "models with Llama 3.1 RoPE frequency factors read from a GGUF file cannot be exported yet (the export writes a Hugging Face config.json, which states the parameters the factors came from, and GGUF keeps only the factors); start from the model's Hugging Face directory instead";

/// What an exported model carries beside its weights.
pub struct ExportInfo<'a> {
    pub tokenizer: &'a Tokenizer,
    /// The chat template of the model trained from (none for a model trained from scratch).
    pub chat_template: Option<&'a str>,
    /// `general.name` of the GGUF file (and `_name_or_path` of config.json).
    pub name: &'a str,
}

/// Writes `out/hf/` and `out/model.gguf` (matrices in `gguf_type`); returns their paths.
/// The files depend only on the weights and `info`, never on how the run got there.
pub fn export(
    model: &TrainableLlama,
    info: &ExportInfo,
    out: &Path,
    gguf_type: GgmlType,
) -> Result<(PathBuf, PathBuf)> {
    let tokenizer = info.tokenizer;
    if model.config.rope_freq_factors.is_some() && model.config.rope_llama3.is_none() {
        return Err(Error::ModelMismatch(LLAMA3_EXPORT.into()));
    }
    let hf = out.join("hf");
    std::fs::create_dir_all(&hf).map_err(|e| crate::error::io(&hf, e))?;
    // The weights as the model computes with them: a LoRA adapter merged in.
    let weights: BTreeMap<String, candle_core::Tensor> = model
        .weight_names()
        .map(|n| Ok((n.to_string(), model.effective_weight(n)?)))
        .collect::<Result<_>>()?;
    save_tensors(&hf.join("model.safetensors"), &weights)?;
    let mut config =
        ferrollama_model::hf::config_to_hf(&model.config, tokenizer.bos(), tokenizer.eos());
    config["_name_or_path"] = serde_json::Value::String(info.name.to_string());
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::Internal(format!("encoding config.json: {e}")))?;
    write_synced(&hf.join("config.json"), text.as_bytes())?;
    tokenizer.write_hf_dir(&hf, info.chat_template)?;
    let gguf = out.join("model.gguf");
    let mut meta = tokenizer.vocab().to_gguf_metadata();
    if let Some(t) = info.chat_template {
        meta.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    }
    meta.push(("general.name".into(), Value::String(info.name.into())));
    ferrollama_model::export::hf_to_gguf(&hf, &gguf, gguf_type, meta, |_, _| {})?;
    Ok((hf, gguf))
}
