//! Moving weights between the GGUF and Hugging Face layouts: GGUF -> `model.safetensors`
//! and `config.json` (dequantized to f32 or f16), and HF directory -> GGUF (f32, f16,
//! q8_0, q4_0, q4_1, ...). Tokenizer files are the tokenizer crate's business; callers pass its
//! GGUF metadata in and write its JSON files beside.

use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device};
use ferrollama_gguf::safetensors::{write_safetensors, StDtype, StOwned};
use ferrollama_gguf::{names, GgmlType, GgufFile, GgufWriter, TensorToWrite, Value};

use crate::config::Config;
use crate::convert::{file_type, tensor_type};
use crate::error::{Error, Result};
use crate::hf::{config_to_hf, permute_rope_rows, rotary_heads, HfWeights, RopeLayout};
use crate::layout::{self, global_name, Part};
use crate::weights::{candle_dtype, GgufWeights, WeightSource};

/// Writes `model.safetensors` and `config.json` for the weights of `src` into `dir`.
pub fn gguf_to_hf(
    src: &GgufFile,
    dir: &Path,
    dtype: StDtype,
    bos: Option<u32>,
    eos: Option<u32>,
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    let cfg = Config::from_gguf(src)?;
    if cfg.rope_freq_factors.is_some() {
        return Err(Error::Unsupported {
            file: src.header.file.clone(),
            msg: "models with Llama 3.1 RoPE frequency factors (rope_freqs.weight) cannot be exported to Hugging Face yet".into(),
        });
    }
    let weights = GgufWeights::new(src);
    let candle_dt = match dtype {
        StDtype::F32 => DType::F32,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
    };
    let total = src.header.tensors.len();
    let mut out = Vec::with_capacity(total);
    for (i, info) in src.header.tensors.iter().enumerate() {
        let hf_name = names::gguf_to_hf(&info.name).ok_or_else(|| Error::Unsupported {
            file: src.header.file.clone(),
            msg: format!("tensor `{}` has no Hugging Face name", info.name),
        })?;
        let t = weights
            .get(&hf_name)?
            .dequantize(&Device::Cpu)?
            .to_dtype(candle_dt)?;
        let mut data = tensor_bytes(&t)?;
        let shape = info.shape();
        if let (Some(n), [_, cols]) = (rotary_heads(&cfg, &hf_name), shape.as_slice()) {
            data = permute_rope_rows(&data, n, cols * dtype.size(), RopeLayout::GgufToHf)?;
        }
        out.push(StOwned {
            name: hf_name,
            dtype,
            shape,
            data,
        });
        progress(i + 1, total);
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    write_safetensors(&dir.join("model.safetensors"), &out)?;
    let config = serde_json::to_string_pretty(&config_to_hf(&cfg, bos, eos))
        .map_err(|e| Error::Internal(format!("encoding config.json: {e}")))?;
    std::fs::write(dir.join("config.json"), config).map_err(|e| io(dir, e))?;
    Ok(())
}

/// Writes a GGUF file from the HF checkpoint in `dir`, matrices in `target`, with
/// `tokenizer_meta` (the tokenizer's GGUF metadata, the chat template; a `general.name`
/// there replaces the directory's name) added.
pub fn hf_to_gguf(
    dir: &Path,
    out: &Path,
    target: GgmlType,
    tokenizer_meta: Vec<(String, Value)>,
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    let cfg = crate::hf::config_from_hf(dir)?;
    let weights = HfWeights::open(dir, cfg.clone())?;
    let ftype = file_type(target).ok_or_else(|| Error::UnsupportedType {
        action: "write",
        ty: target.to_string(),
    })?;
    let mut w = GgufWriter::new();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("general.name", Value::String(name));
    w.set("general.file_type", Value::U32(ftype));
    for (k, v) in cfg.to_gguf_metadata() {
        w.set(&k, v);
    }
    for (k, v) in tokenizer_meta {
        w.set(&k, v);
    }
    // The layout's tensors in llama.cpp's order (embedding, blocks, norm, head); the head
    // is written when the checkpoint has one, whatever `tie_word_embeddings` says, as the
    // loader uses it then. Other tensors (rotary `inv_freq` buffers) are recomputed.
    let mut shape = cfg.clone();
    shape.tie_word_embeddings = !weights.contains(&global_name(Part::Head));
    let mut plan = Vec::new();
    for spec in layout::tensors(&shape) {
        let t = weights.st.tensor(&spec.name)?;
        if t.shape != spec.shape {
            return Err(Error::Shape {
                file: dir.display().to_string(),
                name: spec.name,
                found: t.shape.clone(),
                expected: spec.shape,
            });
        }
        let gguf_name =
            names::hf_to_gguf(&spec.name).ok_or_else(|| Error::UnknownTensor(spec.name.clone()))?;
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        let ty = tensor_type(&gguf_name, &dims, target, !shape.tie_word_embeddings);
        w.add_tensor(TensorToWrite {
            name: gguf_name,
            dims,
            ggml_type: ty,
        });
        plan.push((spec.name, ty));
    }
    let factors = cfg.rope_freq_factors.clone();
    if let Some(f) = &factors {
        w.add_tensor(TensorToWrite {
            name: "rope_freqs.weight".into(),
            dims: vec![f.len() as u64],
            ggml_type: GgmlType::F32,
        });
    }
    let total = plan.len();
    w.write(out, |i, _| {
        let Some((hf, ty)) = plan.get(i) else {
            // The one tensor after the checkpoint's own: Llama 3.1's frequency factors.
            return Ok(factors
                .iter()
                .flatten()
                .flat_map(|x| x.to_le_bytes())
                .collect());
        };
        let bytes = (|| -> Result<Vec<u8>> {
            let f = weights.get(hf)?.dequantize(&Device::Cpu)?;
            let dt = candle_dtype(*ty).ok_or_else(|| Error::UnsupportedType {
                action: "write",
                ty: ty.to_string(),
            })?;
            Ok(QTensor::quantize(&f, dt)?.data()?.into_owned())
        })()
        .map_err(|e| ferrollama_gguf::Error::Invalid {
            file: out.display().to_string(),
            msg: format!("encoding `{hf}`: {e}"),
        })?;
        progress(i + 1, total);
        Ok(bytes)
    })?;
    Ok(())
}

/// Little-endian bytes of a contiguous f32/f16/bf16 tensor.
fn tensor_bytes(t: &candle_core::Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        other => {
            return Err(Error::UnsupportedType {
                action: "export",
                ty: format!("{other:?}"),
            })
        }
    })
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        file: path.display().to_string(),
        source,
    }
}
