//! GGUF v3 writer. Tensor bytes are produced one tensor at a time by a callback, so a
//! conversion never holds more than one tensor in memory. The file appears atomically
//! (written to a temporary name, synced, then renamed).

use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::reader::tensor_size;
use crate::types::GgmlType;
use crate::value::Value;

const ALIGNMENT: u64 = 32;

/// A tensor to be written: its name, ggml-order dims and type. Its bytes come later.
#[derive(Debug, Clone)]
pub struct TensorToWrite {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

/// Collects metadata and tensor descriptions, then writes a GGUF file.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorToWrite>,
}

impl GgufWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a metadata entry.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Adds a tensor description.
    pub fn add_tensor(&mut self, t: TensorToWrite) {
        self.tensors.push(t);
    }

    /// Writes the file; `data(i)` returns the bytes of tensor `i`, which must be exactly the
    /// size its type and dims call for.
    pub fn write(
        &self,
        path: &Path,
        mut data: impl FnMut(usize, &TensorToWrite) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let file = path.display().to_string();
        let tmp = path.with_extension("gguf.partial");
        let io = |source| Error::Io {
            file: file.clone(),
            source,
        };
        let invalid = |msg: String| Error::Invalid {
            file: file.clone(),
            msg,
        };

        let mut sizes = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let size = tensor_size(&t.dims, t.ggml_type).ok_or_else(|| {
                invalid(format!(
                    "tensor `{}`: dims {:?} are not whole {} blocks",
                    t.name, t.dims, t.ggml_type
                ))
            })?;
            sizes.push(size);
        }

        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut head, k);
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        for (t, &size) in self.tensors.iter().zip(&sizes) {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + size).div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        pad(&mut head);

        let f = std::fs::File::create(&tmp).map_err(io)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(&head).map_err(io)?;
        for (i, (t, &size)) in self.tensors.iter().zip(&sizes).enumerate() {
            let bytes = data(i, t)?;
            if bytes.len() as u64 != size {
                return Err(invalid(format!(
                    "tensor `{}`: {} bytes given, {size} expected",
                    t.name,
                    bytes.len()
                )));
            }
            w.write_all(&bytes).map_err(io)?;
            let padding = (size.div_ceil(ALIGNMENT) * ALIGNMENT - size) as usize;
            w.write_all(&[0u8; ALIGNMENT as usize][..padding])
                .map_err(io)?;
        }
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn pad(buf: &mut Vec<u8>) {
    let len = (buf.len() as u64).div_ceil(ALIGNMENT) * ALIGNMENT;
    buf.resize(len as usize, 0);
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(*x as u8),
        Value::String(s) => put_string(buf, s),
        Value::Array(t, items) => {
            buf.extend_from_slice(&(*t as u32).to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            // Elements carry no tag of their own; nested arrays start with theirs.
            for item in items {
                put_value(buf, item);
            }
        }
    }
}
