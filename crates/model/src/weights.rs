//! Where weights come from. The model asks for tensors by their Hugging Face names; a
//! source maps them to its own layout. Quantized tensors stay quantized.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use ferrollama_gguf::{names, GgmlType, GgufFile};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::linear::QuantMatrix;
use crate::pack_cache::PackCache;

/// A store of named weight tensors.
pub trait WeightSource {
    /// The tensor with this HF name, with its stored (possibly quantized) type.
    fn get(&self, hf_name: &str) -> Result<QTensor>;
    /// Whether the source holds a tensor with this HF name.
    fn contains(&self, hf_name: &str) -> bool;
    /// The name of the file, for error messages.
    fn file(&self) -> &str;
    /// A packed matrix kept from an earlier load (`key`: the weight's name, or the names
    /// of stacked weights joined by `+`), if the source has a cache.
    fn packed(&self, _key: &str) -> Option<Arc<QuantMatrix>> {
        None
    }
    /// Hands a matrix packed during this load to the cache, if any.
    fn offer_packed(&self, _key: &str, _m: &Arc<QuantMatrix>) {}
}

/// Weights read from a GGUF file.
pub struct GgufWeights<'a> {
    pub file: &'a GgufFile,
    cache: Option<&'a PackCache>,
}

impl<'a> GgufWeights<'a> {
    /// Weights of `file`, placed on the CPU.
    pub fn new(file: &'a GgufFile) -> Self {
        Self { file, cache: None }
    }

    /// Weights of `file` whose packed matrices come from (or go to) `cache`.
    pub fn with_pack_cache(file: &'a GgufFile, cache: &'a PackCache) -> Self {
        Self {
            file,
            cache: Some(cache),
        }
    }

    fn gguf_name(&self, hf_name: &str) -> Result<String> {
        names::hf_to_gguf(hf_name).ok_or_else(|| Error::UnknownTensor(hf_name.to_string()))
    }
}

impl WeightSource for GgufWeights<'_> {
    fn get(&self, hf_name: &str) -> Result<QTensor> {
        let name = self.gguf_name(hf_name)?;
        let (info, bytes) = self.file.tensor(&name)?;
        let dtype = candle_dtype(info.ggml_type).ok_or_else(|| Error::Unsupported {
            file: self.file.header.file.clone(),
            msg: format!(
                "tensor `{name}` has type {}, which cannot be computed with",
                info.ggml_type
            ),
        })?;
        let tensor = qtensor_from_bytes(bytes, dtype, info.shape(), &name)?;
        self.file.release(info);
        Ok(tensor)
    }

    fn contains(&self, hf_name: &str) -> bool {
        names::hf_to_gguf(hf_name).is_some_and(|n| self.file.header.has_tensor(&n))
    }

    fn file(&self) -> &str {
        &self.file.header.file
    }

    fn packed(&self, key: &str) -> Option<Arc<QuantMatrix>> {
        self.cache?.get(key)
    }

    fn offer_packed(&self, key: &str, m: &Arc<QuantMatrix>) {
        if let Some(c) = self.cache {
            c.offer(key, m);
        }
    }
}

/// Opens the checkpoint at `path` (a GGUF file, or a Hugging Face directory with
/// `config.json` and safetensors) and hands `f` its weights and configuration, whose
/// `tie_word_embeddings` follows the weights (an HF checkpoint may hold an `lm_head` that
/// its config calls tied; the loaders use the head then).
pub fn with_checkpoint<R>(
    path: &std::path::Path,
    f: impl FnOnce(&dyn WeightSource, Config) -> Result<R>,
) -> Result<R> {
    let head = crate::layout::global_name(crate::layout::Part::Head);
    if path.is_dir() {
        let mut config = crate::hf::config_from_hf(path)?;
        let weights = crate::hf::HfWeights::open(path, config.clone())?;
        config.tie_word_embeddings = !weights.contains(&head);
        return f(&weights, config);
    }
    let file = GgufFile::open(path)?;
    let config = Config::from_gguf(&file)?;
    f(&GgufWeights::new(&file), config)
}

/// Strictest alignment of candle's block types (f32 fields).
const BLOCK_ALIGN: usize = 4;

/// A candle tensor of type `dtype` from stored bytes. candle reads the bytes as a slice of
/// its block structs and asserts (panics) on a misaligned pointer or a partial block, so
/// bytes at an odd offset (GGUF allows an alignment of 1) are copied to an aligned buffer
/// first and partial blocks are an error.
pub fn qtensor_from_bytes(
    bytes: &[u8],
    dtype: GgmlDType,
    shape: Vec<usize>,
    name: &str,
) -> Result<QTensor> {
    let elements: usize = shape.iter().product();
    if !bytes.len().is_multiple_of(dtype.type_size())
        || elements / dtype.block_size() * dtype.type_size() != bytes.len()
    {
        return Err(Error::TensorData {
            name: name.to_string(),
            msg: format!(
                "{} bytes do not hold {shape:?} values of type {dtype:?}",
                bytes.len()
            ),
        });
    }
    let aligned;
    let data = if (bytes.as_ptr() as usize).is_multiple_of(BLOCK_ALIGN) {
        bytes
    } else {
        let mut buf = vec![0u8; bytes.len() + BLOCK_ALIGN];
        let off = buf.as_ptr().align_offset(BLOCK_ALIGN);
        buf[off..off + bytes.len()].copy_from_slice(bytes);
        aligned = buf;
        &aligned[off..off + bytes.len()]
    };
    let storage = QStorage::from_data(Cow::Borrowed(data), &Device::Cpu, dtype)?;
    Ok(QTensor::new(storage, shape)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misaligned_bytes_are_copied_not_a_panic() {
        let values = [1.5f32, -2.0, 3.25, 0.0];
        let mut bytes = vec![0u8];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        // bytes[1..] starts at an odd address.
        let q = qtensor_from_bytes(&bytes[1..], GgmlDType::F32, vec![2, 2], "t").unwrap();
        let got: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, values);
    }

    #[test]
    fn partial_blocks_are_an_error() {
        let err = qtensor_from_bytes(&[0u8; 35], GgmlDType::Q8_0, vec![32], "t").unwrap_err();
        assert!(err.to_string().contains("tensor `t`"), "{err}");
        assert!(qtensor_from_bytes(&[0u8; 34], GgmlDType::Q8_0, vec![64], "t").is_err());
    }
}
