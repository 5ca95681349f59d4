//! A cache of packed weights on disk. Our kernels need the weights repacked
//! (`ferrollama_kernels::packed`), which copies them at every load; with the cache, the
//! first load writes the packed matrices to one file and later loads read that file into
//! huge pages (see [`crate::huge_pages`]) or map it ([`Placement::Mapped`]: processes
//! running the same model then share the pages): the model's own tensors are not read and
//! nothing is repacked.
//!
//! One file per model path (named by a hash of it), holding a key of the model file's path,
//! identity (`GgufFile::identity`: size, modification time, and on Unix device, inode and
//! change time, read from the handle the weights are read from) and the packed layouts'
//! version: an edited or replaced model or a new layout replaces the file. A cache file that does not parse, does not match its key or
//! holds a matrix of the wrong size is ignored (and rewritten), never trusted. Writing a
//! file removes the cache files of models that no longer exist (temporary models, say).
//! Layout, little-endian:
//! `FLPACK` 0 1 | u32 key length, key | u32 count | count x (u16 name length, name, u8 kind,
//! u8 format, u64 n, u64 k, u64 offset, u64 length) | matrices at 64-byte aligned offsets.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferrollama_kernels::{
    KFormat, PackedBf16, PackedF16, PackedKMatrix, PackedMatrix, SharedBytes, Storage, WeightFormat,
};

use crate::huge_pages::{self, HugePageCopy, Placement};
use crate::linear::QuantMatrix;

const MAGIC: &[u8; 8] = b"FLPACK\x00\x01";
/// Bumped whenever a packed layout changes: older files are then not read. 2: bf16
/// matrices packed as bf16 (version 1 held them converted to f16).
const LAYOUT_VERSION: u32 = 2;
const ALIGN: usize = 64;

const BLOCK_FORMATS: [WeightFormat; 5] = [
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Q5_0,
    WeightFormat::Q5_1,
    WeightFormat::Q8_0,
];
/// Codes in the file are positions here: append, never reorder.
const K_FORMATS: [KFormat; 5] = [
    KFormat::Q4K,
    KFormat::Q5K,
    KFormat::Q6K,
    KFormat::Q2K,
    KFormat::Q3K,
];

/// What the cache found when opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheState {
    /// A valid file: matrices come from it.
    Hit,
    /// No file yet: matrices packed now are written at the end of the load.
    Miss,
    /// A file that could not be used (why): rebuilt like a miss.
    Broken(String),
}

/// The packed-weights cache of one model file.
pub struct PackCache {
    path: PathBuf,
    key: String,
    state: CacheState,
    mapped: HashMap<String, Arc<QuantMatrix>>,
    fresh: Mutex<Vec<(String, Arc<QuantMatrix>)>>,
}

impl PackCache {
    /// The cache in `dir` for the model file `model`, whose identity (as
    /// `GgufFile::identity` gives it) is `identity`, read into huge pages. Never fails: a
    /// cache that cannot be read is a miss (and says why in [`Self::state`]).
    pub fn open(dir: &Path, model: &Path, identity: &str) -> Self {
        Self::open_with(dir, model, identity, Placement::HugePages)
    }

    /// [`Self::open`] with the weights placed as `placement` asks.
    pub fn open_with(dir: &Path, model: &Path, identity: &str, placement: Placement) -> Self {
        let source = model.canonicalize().unwrap_or_else(|_| model.to_path_buf());
        let key = format!(
            "{}|{identity}|layout {LAYOUT_VERSION}",
            source.to_string_lossy()
        );
        let stem = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hash = fnv1a(source.to_string_lossy().as_bytes());
        let path = dir.join(format!("{stem}-{hash:016x}.packed"));
        let (state, mapped) = match read(&path, &key, placement) {
            Ok(Some(m)) => (CacheState::Hit, m),
            Ok(None) => (CacheState::Miss, HashMap::new()),
            Err(why) => (CacheState::Broken(why), HashMap::new()),
        };
        Self {
            path,
            key,
            state,
            mapped,
            fresh: Mutex::new(Vec::new()),
        }
    }

    pub fn state(&self) -> &CacheState {
        &self.state
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached matrix `name`, if the file holds it.
    pub fn get(&self, name: &str) -> Option<Arc<QuantMatrix>> {
        self.mapped.get(name).cloned()
    }

    /// A matrix packed during this load, to be written by [`Self::finish`].
    pub fn offer(&self, name: &str, m: &Arc<QuantMatrix>) {
        if self.state != CacheState::Hit {
            if let Ok(mut fresh) = self.fresh.lock() {
                fresh.push((name.to_string(), m.clone()));
            }
        }
    }

    /// Writes the matrices packed during this load, unless they came from the file.
    /// Returns whether a file was written.
    pub fn finish(&self) -> std::io::Result<bool> {
        let fresh = match self.fresh.lock() {
            Ok(f) => f,
            Err(_) => return Ok(false),
        };
        if self.state == CacheState::Hit || fresh.is_empty() {
            return Ok(false);
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Written beside and renamed: a reader never sees half a file, and a killed
        // writer leaves only a temporary file. The name is unique to this process and call
        // (two loads in one process must not share it) and created only if new.
        static WRITES: AtomicUsize = AtomicUsize::new(0);
        let tmp = self.path.with_extension(format!(
            "tmp-{}-{}",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let result =
            write(&tmp, &self.key, &fresh).and_then(|()| std::fs::rename(&tmp, &self.path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        if let Some(dir) = self.path.parent() {
            prune(dir, &self.path);
        }
        Ok(true)
    }
}

/// Removes cache files in `dir` (other than `keep`) whose model file is gone, and
/// temporary files that a killed writer left more than a day ago. Best effort.
fn prune(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = if path == keep {
            false
        } else if name.ends_with(".packed") {
            source_of(&path).is_some_and(|src| !src.exists())
        } else if is_our_temporary(&name) {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 86_400)
        } else {
            false
        };
        if stale {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// `{stem}-{16 hex digits}.tmp-{pid}-{n}`, as [`PackCache::finish`] names them.
fn is_our_temporary(name: &str) -> bool {
    let Some((head, tail)) = name.split_once(".tmp-") else {
        return false;
    };
    let hex = head.len() >= 17 && head.is_char_boundary(head.len() - 17) && {
        let (dash, digits) = head[head.len() - 17..].split_at(1);
        dash == "-" && digits.bytes().all(|b| b.is_ascii_hexdigit())
    };
    hex && tail
        .split('-')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The model path recorded in a cache file's key, unless it could not be recorded
/// faithfully (a path that is not UTF-8 is never pruned).
fn source_of(cache_file: &Path) -> Option<PathBuf> {
    let mut head = vec![0u8; 8 + 4 + 4096];
    let mut f = File::open(cache_file).ok()?;
    let got = std::io::Read::read(&mut f, &mut head).ok()?;
    let head = &head[..got];
    if head.get(..8)? != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(head.get(8..12)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(head.get(12..12 + len)?).ok()?;
    // "path|identity|layout v": the path is what precedes the last two fields.
    let path = key.rsplitn(3, '|').nth(2)?;
    (!path.contains(char::REPLACEMENT_CHARACTER)).then(|| PathBuf::from(path))
}

/// FNV-1a, 64 bits: a stable file name from the key (the key itself is checked on read).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// (kind, format code, n, k, bytes) of a matrix; None for a format without a code (not
/// written: it is packed again at every load rather than mislabelled).
fn kind_of(m: &QuantMatrix) -> Option<(u8, u8, usize, usize, &[u8])> {
    let (n, k) = m.shape();
    Some(match m {
        QuantMatrix::Blocks(p) => {
            let f = BLOCK_FORMATS.iter().position(|&f| f == p.format())?;
            (0, f as u8, n, k, p.packed_bytes())
        }
        QuantMatrix::K(p) => {
            let f = K_FORMATS.iter().position(|&f| f == p.format())?;
            (1, f as u8, n, k, p.packed_bytes())
        }
        QuantMatrix::F16(p) => (2, 0, n, k, p.packed_bytes()),
        QuantMatrix::Bf16(p) => (3, 0, n, k, p.packed_bytes()),
    })
}

fn write(path: &Path, key: &str, matrices: &[(String, Arc<QuantMatrix>)]) -> std::io::Result<()> {
    let matrices: Vec<_> = matrices
        .iter()
        .filter_map(|(name, m)| Some((name, kind_of(m)?)))
        .collect();
    let mut header = Vec::new();
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(key.len() as u32).to_le_bytes());
    header.extend_from_slice(key.as_bytes());
    header.extend_from_slice(&(matrices.len() as u32).to_le_bytes());
    let entry_bytes: usize = matrices
        .iter()
        .map(|(name, _)| 2 + name.len() + 2 + 32)
        .sum();
    let mut offset = (header.len() + entry_bytes).next_multiple_of(ALIGN);
    let mut layout = Vec::new();
    for (name, (kind, format, n, k, bytes)) in matrices {
        header.extend_from_slice(&(name.len() as u16).to_le_bytes());
        header.extend_from_slice(name.as_bytes());
        header.extend_from_slice(&[kind, format]);
        for v in [n, k, offset, bytes.len()] {
            header.extend_from_slice(&(v as u64).to_le_bytes());
        }
        layout.push((offset, bytes));
        offset = (offset + bytes.len()).next_multiple_of(ALIGN);
    }
    let mut out = std::io::BufWriter::new(File::options().write(true).create_new(true).open(path)?);
    out.write_all(&header)?;
    let mut at = header.len();
    for (start, bytes) in layout {
        out.write_all(&vec![0u8; start - at])?;
        out.write_all(bytes)?;
        at = start + bytes.len();
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// The matrices of the cache file at `path`: None if there is none, an error (why) if it
/// cannot be used.
fn read(
    path: &Path,
    key: &str,
    placement: Placement,
) -> Result<Option<HashMap<String, Arc<QuantMatrix>>>, String> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let bytes: SharedBytes = if placement == Placement::HugePages && huge_pages::available() {
        // A stale or foreign file is told by its first bytes, before a model-sized copy.
        check_key(&mut file, key)?;
        Arc::new(HugePageCopy::read(&mut file).map_err(|e| e.to_string())?)
    } else {
        // SAFETY: the map is read-only; like every memory-mapped model file, it assumes no
        // one truncates the file while it is mapped (we only ever replace it by renaming).
        Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?)
    };
    let mut r = Reader {
        bytes: (*bytes).as_ref(),
        at: 0,
    };
    if r.take(8)? != MAGIC {
        return Err("not a packed-weights file of this version".into());
    }
    let key_len = r.u32()? as usize;
    if r.take(key_len)? != key.as_bytes() {
        return Err("made from another file or another layout version".into());
    }
    let count = r.u32()? as usize;
    let mut entries = Vec::new();
    for _ in 0..count {
        let name_len = usize::from(r.u16()?);
        let name = String::from_utf8(r.take(name_len)?.to_vec()).map_err(|e| e.to_string())?;
        let kind_format = r.take(2)?;
        let (kind, format) = (kind_format[0], kind_format[1]);
        let [n, k, offset, len] = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
        let end = offset
            .checked_add(len)
            .ok_or("a matrix past the end of the file")?;
        let range = usize::try_from(offset).map_err(|e| e.to_string())?
            ..usize::try_from(end).map_err(|e| e.to_string())?;
        let n = usize::try_from(n).map_err(|e| e.to_string())?;
        let k = usize::try_from(k).map_err(|e| e.to_string())?;
        entries.push((name, kind, format, n, k, range));
    }
    let mut matrices = HashMap::new();
    for (name, kind, format, n, k, range) in entries {
        let m = matrix(&bytes, kind, format, n, k, range).map_err(|e| format!("`{name}`: {e}"))?;
        matrices.insert(name, Arc::new(m));
    }
    Ok(Some(matrices))
}

/// Whether the file starts with this version's magic and `key` (the reader checks both
/// again on the whole file).
fn check_key(file: &mut File, key: &str) -> Result<(), String> {
    let mut head = vec![0u8; MAGIC.len() + 4 + key.len()];
    std::io::Read::read_exact(file, &mut head)
        .map_err(|_| "not a packed-weights file of this version")?;
    if &head[..MAGIC.len()] != MAGIC {
        return Err("not a packed-weights file of this version".into());
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if len != key.len() || &head[12..] != key.as_bytes() {
        return Err("made from another file or another layout version".into());
    }
    Ok(())
}

fn matrix(
    bytes: &SharedBytes,
    kind: u8,
    format: u8,
    n: usize,
    k: usize,
    range: Range<usize>,
) -> Result<QuantMatrix, String> {
    let storage = Storage::shared(bytes.clone(), range).map_err(|e| e.to_string())?;
    let bad_format = || format!("unknown format {kind}/{format}");
    match kind {
        0 => {
            let f = *BLOCK_FORMATS
                .get(usize::from(format))
                .ok_or_else(bad_format)?;
            PackedMatrix::from_packed(f, n, k, storage).map(QuantMatrix::Blocks)
        }
        1 => {
            let f = *K_FORMATS.get(usize::from(format)).ok_or_else(bad_format)?;
            PackedKMatrix::from_packed(f, n, k, storage).map(QuantMatrix::K)
        }
        2 => PackedF16::from_packed(n, k, storage).map(QuantMatrix::F16),
        3 => PackedBf16::from_packed(n, k, storage).map(QuantMatrix::Bf16),
        _ => return Err(bad_format()),
    }
    .map_err(|e| e.to_string())
}

/// Reads little-endian fields, erring at the end of the bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(len).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or("the file ends inside its header")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_temporary_files_count_as_ours() {
        assert!(is_our_temporary("model-0123456789abcdef.tmp-42-0"));
        assert!(!is_our_temporary("model-0123456789abcdeg.tmp-42-0"));
        assert!(!is_our_temporary("notes.tmp-42"));
        assert!(!is_our_temporary("model-0123456789abcdef.tmp-42-x"));
        assert!(!is_our_temporary("model-0123456789abcdef.packed"));
    }

    #[test]
    fn a_key_that_is_not_utf8_is_never_pruned() {
        let dir = std::env::temp_dir().join(format!("ferrollama-pack-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("x.packed");
        let key = format!("/gone/m\u{FFFD}del.gguf|size 1|layout {LAYOUT_VERSION}");
        let mut bytes = MAGIC.to_vec();
        bytes.extend((key.len() as u32).to_le_bytes());
        bytes.extend(key.as_bytes());
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(source_of(&file), None);
        let key = format!("/gone/model.gguf|size 1|layout {LAYOUT_VERSION}");
        let mut bytes = MAGIC.to_vec();
        bytes.extend((key.len() as u32).to_le_bytes());
        bytes.extend(key.as_bytes());
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(source_of(&file), Some(PathBuf::from("/gone/model.gguf")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
