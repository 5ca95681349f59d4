//! Where weights come from. The model asks for tensors by their Hugging Face names; a
//! source maps them to its own layout. Quantized tensors stay quantized.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use ferrollama_gguf::{names, GgmlType, GgufFile};

use crate::error::{Error, Result};

/// A store of named weight tensors.
pub trait WeightSource {
    /// The tensor with this HF name, with its stored (possibly quantized) type.
    fn get(&self, hf_name: &str) -> Result<QTensor>;
    /// Whether the source holds a tensor with this HF name.
    fn contains(&self, hf_name: &str) -> bool;
    /// The name of the file, for error messages.
    fn file(&self) -> &str;
}

/// Weights read from a GGUF file.
pub struct GgufWeights<'a> {
    pub file: &'a GgufFile,
    device: Device,
}

impl<'a> GgufWeights<'a> {
    /// Weights of `file`, placed on the CPU.
    pub fn new(file: &'a GgufFile) -> Self {
        Self { file, device: Device::Cpu }
    }

    fn gguf_name(&self, hf_name: &str) -> Result<String> {
        names::hf_to_gguf(hf_name)
            .ok_or_else(|| Error::Input(format!("`{hf_name}` is not a Llama tensor name")))
    }
}

impl WeightSource for GgufWeights<'_> {
    fn get(&self, hf_name: &str) -> Result<QTensor> {
        let name = self.gguf_name(hf_name)?;
        let (info, bytes) = self.file.tensor(&name)?;
        let dtype = candle_dtype(info.ggml_type).ok_or_else(|| Error::Unsupported {
            file: self.file.header.file.clone(),
            msg: format!("tensor `{name}` has type {}, which cannot be computed with", info.ggml_type),
        })?;
        let storage = QStorage::from_data(Cow::Borrowed(bytes), &self.device, dtype)?;
        Ok(QTensor::new(storage, info.shape())?)
    }

    fn contains(&self, hf_name: &str) -> bool {
        names::hf_to_gguf(hf_name).is_some_and(|n| self.file.header.has_tensor(&n))
    }

    fn file(&self) -> &str {
        &self.file.header.file
    }
}

/// candle's name for a ggml type.
pub fn candle_dtype(t: GgmlType) -> Option<GgmlDType> {
    Some(match t {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q8_1 => GgmlDType::Q8_1,
        GgmlType::Q2K => GgmlDType::Q2K,
        GgmlType::Q3K => GgmlDType::Q3K,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
        GgmlType::Q8K => GgmlDType::Q8K,
        _ => return None,
    })
}

/// The ggml type for a candle quantized type.
pub fn ggml_type(t: GgmlDType) -> GgmlType {
    match t {
        GgmlDType::F32 => GgmlType::F32,
        GgmlDType::F16 => GgmlType::F16,
        GgmlDType::BF16 => GgmlType::BF16,
        GgmlDType::Q4_0 => GgmlType::Q4_0,
        GgmlDType::Q4_1 => GgmlType::Q4_1,
        GgmlDType::Q5_0 => GgmlType::Q5_0,
        GgmlDType::Q5_1 => GgmlType::Q5_1,
        GgmlDType::Q8_0 => GgmlType::Q8_0,
        GgmlDType::Q8_1 => GgmlType::Q8_1,
        GgmlDType::Q2K => GgmlType::Q2K,
        GgmlDType::Q3K => GgmlType::Q3K,
        GgmlDType::Q4K => GgmlType::Q4K,
        GgmlDType::Q5K => GgmlType::Q5K,
        GgmlDType::Q6K => GgmlType::Q6K,
        GgmlDType::Q8K => GgmlType::Q8K,
    }
}
