//! GGUF reader. The whole header is parsed from a byte slice with every count, length and
//! offset bounded by the bytes that remain, so a hostile file can neither panic us nor make
//! us allocate more than its own size. Tensor data stays in the memory map.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::types::GgmlType;
use crate::value::{Value, ValueType};

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;
/// Nesting of arrays inside arrays that we accept; real files use one level.
const MAX_ARRAY_DEPTH: u32 = 4;
/// Metadata array elements in one file, all arrays together. Each is a [`Value`] of 32
/// bytes in memory however small on disk (a `u8` is one byte there), so without a bound a
/// 100 MB file of byte arrays would cost 3 GB to parse. 8M is eight times what the largest
/// real vocabularies need (262k tokens: tokens, scores, types, merges).
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 23;

/// Where one tensor lives and what it holds.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (innermost) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data, from the type and dims.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Dims in row-major order, outermost first (the order candle and PyTorch use).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF header: metadata and tensor infos, without the data.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// Name used in error messages (usually the path).
    pub file: String,
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    /// Offset of the data section in the file.
    pub data_offset: u64,
}

/// A GGUF file: its header and a memory map of its bytes.
pub struct GgufFile {
    pub path: PathBuf,
    pub header: Gguf,
    mmap: memmap2::Mmap,
    identity: String,
}

impl GgufFile {
    /// Opens, maps and checks a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = path.display().to_string();
        let io = |source| Error::Io {
            file: file.clone(),
            source,
        };
        let f = std::fs::File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; a file truncated under us by another process
        // could fault, which is the accepted contract of mapping model files (llama.cpp does
        // the same). Every offset is checked against the length seen at open.
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
        let header = Gguf::parse(&mmap, &file)?;
        let identity = identity(&f.metadata().map_err(io)?);
        Ok(Self {
            path,
            header,
            mmap,
            identity,
        })
    }

    /// What identifies the file that was opened (read from the open handle, so a file
    /// renamed into place afterwards does not take its name): size and modification time,
    /// and on Unix device, inode and change time, which copying tools cannot preserve.
    /// Caches derived from the file are keyed by it.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The bytes of one tensor.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        // Bounds were checked against the file length in `Gguf::parse`.
        let start = (self.header.data_offset + info.offset) as usize;
        &self.mmap[start..start + info.size as usize]
    }

    /// Drops the pages of one tensor from this process's resident memory once a loader has
    /// copied it: they stay in the page cache and are read again if touched, but the file
    /// no longer counts twice (mapped and copied) toward the peak RSS. Advisory; a failure
    /// changes nothing but memory use.
    pub fn release(&self, info: &TensorInfo) {
        let page = 4096;
        let start = (self.header.data_offset + info.offset) as usize;
        let (from, to) = (
            start.div_ceil(page) * page,
            (start + info.size as usize) / page * page,
        );
        if to > from {
            // SAFETY: the map is shared and read-only, so dropping pages loses nothing: a later
            // read faults them back in from the file.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    from,
                    to - from,
                )
            };
        }
    }

    /// The bytes of the tensor with this name.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.header.tensor_info(name)?;
        Ok((info, self.tensor_data(info)))
    }
}

impl Gguf {
    /// Parses and checks a header; `file` names the source in errors.
    pub fn parse(bytes: &[u8], file: &str) -> Result<Self> {
        let mut r = Cursor {
            bytes,
            pos: 0,
            file,
            array_elements: 0,
        };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(r.invalid(format!(
                "not a GGUF file (magic {:?}, expected \"GGUF\"); ---> HINT: GGML/GGJT files must be converted with llama.cpp's convert scripts",
                String::from_utf8_lossy(magic)
            )));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(r.invalid(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each key-value takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info
        // at least 8 + 4 + 4 + 8 bytes. Counts beyond what the file can hold are lies.
        r.check_count(n_kv, 13, "metadata count")?;
        r.check_count(n_tensors, 24, "tensor count")?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = r.string(&format!("key of metadata entry {i}"))?;
            let ty = r.value_type(&key)?;
            let value = r.value(ty, &key, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.invalid(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, value));
        }

        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_int() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= 1 << 20 => a as u64,
                _ => {
                    return Err(r.invalid(format!(
                        "general.alignment {} is not a power of two",
                        v.describe()
                    )))
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let info = r.tensor_info(i, alignment)?;
            if tensor_index
                .insert(info.name.clone(), tensors.len())
                .is_some()
            {
                return Err(r.invalid(format!("tensor `{}` appears twice", info.name)));
            }
            tensors.push(info);
        }

        let data_offset = r.pos.div_ceil(alignment as usize) as u64 * alignment;
        let len = bytes.len() as u64;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.size));
            match end {
                Some(end) if end <= len => {}
                _ => {
                    return Err(r.invalid(format!(
                        "tensor `{}` ({} bytes at data offset {}) runs past the end of the file ({len} bytes); the file is truncated or corrupt",
                        t.name, t.size, t.offset
                    )))
                }
            }
        }
        Ok(Self {
            file: file.to_string(),
            version,
            metadata,
            index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    /// The value of a metadata key, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::MissingKey {
            file: self.file.clone(),
            key: key.into(),
        })
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &Value) -> Error {
        Error::WrongType {
            file: self.file.clone(),
            key: key.into(),
            expected,
            found: v.describe(),
        }
    }

    /// An integer key that must fit in `u64` (any stored integer width).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    /// A numeric key as `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| self.wrong(key, "a number", v))
    }

    /// A string key.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "a string", v))
    }

    /// A boolean key.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(self.wrong(key, "a boolean", v)),
        }
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.require(key)?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "an array of strings", v))?;
        arr.iter()
            .map(|e| {
                e.as_str()
                    .ok_or_else(|| self.wrong(key, "an array of strings", v))
            })
            .collect()
    }

    /// An array of numbers as `f32`.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        let v = self.require(key)?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "an array of numbers", v))?;
        arr.iter()
            .map(|e| {
                e.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.wrong(key, "an array of numbers", v))
            })
            .collect()
    }

    /// An array of integers as `i64`.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        let v = self.require(key)?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "an array of integers", v))?;
        arr.iter()
            .map(|e| {
                e.as_int()
                    .and_then(|i| i64::try_from(i).ok())
                    .ok_or_else(|| self.wrong(key, "an array of integers", v))
            })
            .collect()
    }

    /// The info of the tensor with this name.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::MissingTensor {
                file: self.file.clone(),
                name: name.into(),
            })
    }

    /// Whether a tensor with this name exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }
}

/// A bounded reader over the header bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a str,
    /// Metadata array elements read so far (see [`MAX_ARRAY_ELEMENTS`]).
    array_elements: u64,
}

impl<'a> Cursor<'a> {
    fn invalid(&self, msg: String) -> Error {
        Error::Invalid {
            file: self.file.to_string(),
            msg,
        }
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.invalid(format!(
                "file ends while reading {what} (needs {n} bytes at offset {}, {} left); the file is truncated",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn check_count(&self, n: u64, min_each: u64, what: &str) -> Result<()> {
        if n > self.remaining() / min_each {
            return Err(self.invalid(format!(
                "{what} {n} cannot fit in the {} bytes that remain; the header is corrupt",
                self.remaining()
            )));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.invalid(format!("{what} is not valid UTF-8: {e}")))
    }

    fn value_type(&mut self, key: &str) -> Result<ValueType> {
        let id = self.u32(&format!("type of `{key}`"))?;
        ValueType::from_id(id).ok_or_else(|| {
            self.invalid(format!("metadata key `{key}` has unknown value type {id}"))
        })
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(key)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(key)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            ValueType::U32 => Value::U32(self.u32(key)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            ValueType::U64 => Value::U64(self.u64(key)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            ValueType::Bool => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(self.invalid(format!(
                        "metadata key `{key}`: boolean byte {b} is neither 0 nor 1"
                    )))
                }
            },
            ValueType::String => Value::String(self.string(&format!("value of `{key}`"))?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(format!(
                        "metadata key `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem = self.value_type(key)?;
                let n = self.u64(&format!("length of array `{key}`"))?;
                self.check_count(n, elem.min_size(), &format!("length of array `{key}`"))?;
                self.array_elements = self.array_elements.saturating_add(n);
                if self.array_elements > MAX_ARRAY_ELEMENTS {
                    return Err(self.invalid(format!(
                        "metadata key `{key}`: more than {MAX_ARRAY_ELEMENTS} array elements in the file"
                    )));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }

    fn tensor_info(&mut self, i: u64, alignment: u64) -> Result<TensorInfo> {
        let name = self.string(&format!("name of tensor {i}"))?;
        let n_dims = self.u32(&format!("dimension count of `{name}`"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.invalid(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&format!("dimensions of `{name}`"))?);
        }
        let type_id = self.u32(&format!("type of `{name}`"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            self.invalid(format!(
                "tensor `{name}` has unknown or unsupported ggml type {type_id}"
            ))
        })?;
        let offset = self.u64(&format!("offset of `{name}`"))?;
        if offset % alignment != 0 {
            return Err(self.invalid(format!(
                "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let size = tensor_size(&dims, ggml_type)
            .filter(|_| {
                dims.iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                    .is_some()
            })
            .ok_or_else(|| {
                self.invalid(format!(
                    "tensor `{name}`: dims {dims:?} are not whole {ggml_type} blocks or overflow"
                ))
            })?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            size,
        })
    }
}

/// Bytes of a tensor with these ggml-order dims, or `None` on overflow or partial blocks.
pub fn tensor_size(dims: &[u64], ty: GgmlType) -> Option<u64> {
    let (&first, rest) = dims.split_first()?;
    let row = ty.row_bytes(first)?;
    rest.iter().try_fold(row, |acc, &d| acc.checked_mul(d))
}

fn identity(meta: &std::fs::Metadata) -> String {
    let nanos = |t: std::io::Result<std::time::SystemTime>| {
        t.ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos())
    };
    let mut id = format!("size {} mtime {}", meta.len(), nanos(meta.modified()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        id += &format!(
            " dev {} ino {} ctime {}.{:09}",
            meta.dev(),
            meta.ino(),
            meta.ctime(),
            meta.ctime_nsec()
        );
    }
    id
}
