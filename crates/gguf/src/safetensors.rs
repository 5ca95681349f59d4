//! Hugging Face checkpoints: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`, memory-mapped; and writing one `model.safetensors`.
//! Header parsing and bounds checks are the `safetensors` crate's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, TensorInfo as StInfo};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// Element types we compute with from safetensors files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDtype {
    F32,
    F16,
    BF16,
}

impl StDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StDtype::F32 => 4,
            StDtype::F16 | StDtype::BF16 => 2,
        }
    }
}

/// One tensor of a safetensors checkpoint.
#[derive(Debug, Clone)]
pub struct StTensor<'a> {
    pub dtype: StDtype,
    /// Row-major shape, outermost first.
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

struct Shard {
    path: PathBuf,
    mmap: memmap2::Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// The safetensors files of one checkpoint directory.
pub struct SafetensorsDir {
    pub dir: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name -> shard index.
    index: HashMap<String, usize>,
}

impl SafetensorsDir {
    /// Opens `dir/model.safetensors`, or every shard named by
    /// `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = read_text(&index_path)?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| invalid(&index_path, format!("not valid JSON: {e}")))?;
            let map = json["weight_map"]
                .as_object()
                .ok_or_else(|| invalid(&index_path, "has no `weight_map` object".into()))?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            names.sort();
            names.dedup();
            for n in &names {
                if n.contains('/') || n.contains('\\') || n.starts_with('.') {
                    return Err(invalid(
                        &index_path,
                        format!("shard name `{n}` must be a plain file name in the directory"),
                    ));
                }
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(invalid(
                dir,
                "holds neither model.safetensors nor model.safetensors.index.json".into(),
            ));
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for path in files {
            let f = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
            // SAFETY: read-only map of a model file; see GgufFile::open.
            let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io(&path, e))?;
            let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| invalid(&path, format!("not a valid safetensors file: {e}")))?;
            for name in metadata.tensors().keys() {
                if index.insert(name.clone(), shards.len()).is_some() {
                    return Err(invalid(
                        &path,
                        format!("tensor `{name}` appears in two shards"),
                    ));
                }
            }
            shards.push(Shard {
                path,
                mmap,
                header_len,
                metadata,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            index,
        })
    }

    /// Names of every tensor.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Whether a tensor with this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The tensor with this name.
    pub fn tensor(&self, name: &str) -> Result<StTensor<'_>> {
        let &i = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            file: self.dir.display().to_string(),
            name: name.into(),
        })?;
        let shard = &self.shards[i];
        let tensors = shard.metadata.tensors();
        let info: &StInfo = tensors
            .get(name)
            .ok_or_else(|| invalid(&shard.path, format!("tensor `{name}` vanished")))?;
        let dtype = match info.dtype {
            Dtype::F32 => StDtype::F32,
            Dtype::F16 => StDtype::F16,
            Dtype::BF16 => StDtype::BF16,
            other => {
                return Err(invalid(
                    &shard.path,
                    format!("tensor `{name}` has type {other:?}; f32, f16 and bf16 are supported"),
                ))
            }
        };
        let (start, end) = info.data_offsets;
        let base = 8 + shard.header_len;
        // read_metadata checked that the offsets lie within the file.
        Ok(StTensor {
            dtype,
            shape: info.shape.clone(),
            data: &shard.mmap[base + start..base + end],
        })
    }
}

/// A tensor to write: name, dtype, shape and bytes.
pub struct StOwned {
    pub name: String,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl safetensors::View for &StOwned {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            StDtype::F32 => Dtype::F32,
            StDtype::F16 => Dtype::F16,
            StDtype::BF16 => Dtype::BF16,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `tensors` to one safetensors file (with `{"format": "pt"}` metadata, which
/// `transformers` expects).
pub fn write_safetensors(path: &Path, tensors: &[StOwned]) -> Result<()> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        tensors.iter().map(|t| (t.name.clone(), t)),
        Some(meta),
        path,
    )
    .map_err(|e| invalid(path, format!("writing safetensors: {e}")))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| io(path, e))
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        file: path.display().to_string(),
        source,
    }
}

fn invalid(path: &Path, msg: String) -> Error {
    Error::Invalid {
        file: path.display().to_string(),
        msg,
    }
}
