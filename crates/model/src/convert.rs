//! Re-encoding a GGUF model's weights in another type (f32, f16, q8_0, q4_0, q4_1, ...):
//! matrices are dequantized to f32 and quantized again with candle's quantizers; vectors
//! (norms) stay f32, as llama-quantize keeps them. Metadata is carried across unchanged
//! except `general.file_type`.

use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::Device;
use ferrollama_gguf::{GgmlType, GgufFile, GgufWriter, TensorToWrite, Value};

use crate::error::{Error, Result};
use crate::weights::{candle_dtype, qtensor_from_bytes};

/// llama.cpp's `llama_ftype` for a file whose matrices are mostly of type `t`.
pub fn file_type(t: GgmlType) -> Option<u32> {
    Some(match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2K => 10,
        // Q3_K_S: the mostly-q3_K mix (our q3_K target is pure q3_K where rows allow).
        GgmlType::Q3K => 11,
        GgmlType::Q4K => 15,
        GgmlType::Q5K => 17,
        GgmlType::Q6K => 18,
        GgmlType::BF16 => 32,
        _ => return None,
    })
}

/// Writes `src` to `out` with every matrix in `target`. `progress(done, total)` is called
/// per tensor.
pub fn requantize(
    src: &GgufFile,
    out: &Path,
    target: GgmlType,
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    let ftype = file_type(target).ok_or_else(|| Error::UnsupportedType {
        action: "write",
        ty: target.to_string(),
    })?;
    let mut w = GgufWriter::new();
    for (k, v) in &src.header.metadata {
        w.set(k, v.clone());
    }
    w.set("general.file_type", Value::U32(ftype));
    let mut plan = Vec::new();
    let has_output = src.header.has_tensor("output.weight");
    for t in &src.header.tensors {
        let ty = tensor_type(&t.name, &t.dims, target, has_output);
        w.add_tensor(TensorToWrite {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: ty,
        });
        plan.push(ty);
    }
    let total = plan.len();
    w.write(out, |i, t| {
        let info = &src.header.tensors[i];
        let bytes = recode(src, info, plan[i]).map_err(|e| ferrollama_gguf::Error::Invalid {
            file: out.display().to_string(),
            msg: format!("re-encoding `{}`: {e}", t.name),
        })?;
        progress(i + 1, total);
        Ok(bytes)
    })?;
    Ok(())
}

/// `src` converted to `target` at `out` unless that file exists (the tests' converted
/// copies of the default model): written beside it under a name of this process and call
/// (the writer's own temporary name derives from it) and renamed into place, so
/// conversions running at once never share a file and `out` is never partial.
pub fn requantize_once(src: &Path, out: &Path, target: GgmlType) -> Result<()> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if out.exists() {
        return Ok(());
    }
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let part = out.with_file_name(format!("{stem}.{}-{call}.part.gguf", std::process::id()));
    let written = (|| -> Result<()> {
        requantize(&GgufFile::open(src)?, &part, target, |_, _| {})?;
        std::fs::rename(&part, out).map_err(|e| Error::Io {
            file: out.display().to_string(),
            source: e,
        })
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&part);
        if out.exists() {
            // Another process finished the same conversion first.
            return Ok(());
        }
    }
    written
}

/// The type llama-quantize gives a tensor when the file's type is `target`: vectors stay
/// f32; the output projection (or the token embedding standing in for it) keeps more bits
/// (q6_K, or q8_0 when its rows are not whole 256-blocks) under 4- and 5-bit targets;
/// rows that are not whole 256-blocks fall back as llama-quantize's `tensor_type_fallback`
/// does (q2_K, q3_K -> q4_0; q4_K -> q5_0; q5_K -> q5_1; q6_K -> q8_0), and rows that are
/// not whole blocks of that either to f16.
pub fn tensor_type(gguf_name: &str, dims: &[u64], target: GgmlType, has_output: bool) -> GgmlType {
    if dims.len() < 2 {
        return GgmlType::F32;
    }
    let is_head = gguf_name == "output.weight" || (!has_output && gguf_name == "token_embd.weight");
    let low_bit = !matches!(
        target,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    );
    let wanted = if is_head && low_bit {
        if dims[0].is_multiple_of(GgmlType::Q6K.block_size() as u64) {
            GgmlType::Q6K
        } else {
            GgmlType::Q8_0
        }
    } else {
        target
    };
    let fits = |t: GgmlType| dims[0].is_multiple_of(t.block_size() as u64);
    if fits(wanted) {
        return wanted;
    }
    let fallback = match wanted {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if fits(fallback) {
        fallback
    } else {
        GgmlType::F16
    }
}

fn recode(src: &GgufFile, info: &ferrollama_gguf::TensorInfo, to: GgmlType) -> Result<Vec<u8>> {
    let data = src.tensor_data(info);
    if info.ggml_type == to {
        return Ok(data.to_vec());
    }
    let from = candle_dtype(info.ggml_type).ok_or_else(|| Error::UnsupportedType {
        action: "read",
        ty: info.ggml_type.to_string(),
    })?;
    let to_dtype = candle_dtype(to).ok_or_else(|| Error::UnsupportedType {
        action: "write",
        ty: to.to_string(),
    })?;
    let q = qtensor_from_bytes(data, from, info.shape(), &info.name)?;
    let f = q.dequantize(&Device::Cpu)?;
    let out = QTensor::quantize(&f, to_dtype)?;
    Ok(out.data()?.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Conversions of one file to one place at once each finish, leaving one whole file and
    /// no temporary ones (the tiny committed model, to bf16).
    #[test]
    fn conversions_at_once_leave_one_whole_file() {
        let src =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny/tiny-260k-q8_0.gguf");
        let dir = std::env::temp_dir().join(format!("ferrollama-once-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("tiny.bf16.gguf");
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..3)
                .map(|_| s.spawn(|| requantize_once(&src, &out, GgmlType::BF16)))
                .collect();
            for r in runs {
                r.join().unwrap().unwrap();
            }
        });
        let file = GgufFile::open(&out).unwrap();
        assert!(file
            .header
            .tensors
            .iter()
            .any(|t| t.ggml_type == GgmlType::BF16));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["tiny.bf16.gguf"], "temporary files left behind");
        let missing = dir.join("missing.gguf");
        assert!(requantize_once(&dir.join("none.gguf"), &missing, GgmlType::BF16).is_err());
        assert!(!missing.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
