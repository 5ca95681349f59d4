//! Training data: text files, directories of them, or JSONL with a text field, tokenized
//! once (documents in parallel) into binary shards of little-endian u32 token ids, one for
//! training and one held out for validation, cached by the inputs and the tokenizer. The
//! shards are memory-mapped, so a corpus larger than memory trains; sequences are packed
//! (each document is BOS + tokens + EOS, end to end) and visited in an order fixed by the
//! seed, so the data position is a single count and a resumed run sees the same batches.

use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use ferrollama_tokenizer::Tokenizer;

use crate::error::{io, Error, Result};

/// Where the text comes from and how it splits into documents.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Text files, directories (read recursively, files in name order) or `.jsonl` files.
    pub paths: Vec<PathBuf>,
    /// The field of each JSONL object that holds its text.
    pub text_field: String,
    /// A line that separates documents inside a text file (`%` for fortune files); none:
    /// each file is one document.
    pub separator: Option<String>,
    /// Share of documents held out for validation, chosen by a hash of their index.
    pub val_fraction: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            text_field: "text".into(),
            separator: None,
            val_fraction: 0.05,
        }
    }
}

/// A file of token ids, memory-mapped.
pub struct Shard {
    path: PathBuf,
    map: Option<Mmap>,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| io(path, e))?;
        let len = file.metadata().map_err(|e| io(path, e))?.len();
        if len % 4 != 0 {
            return Err(Error::Invalid {
                file: path.display().to_string(),
                msg: format!("{len} bytes is not a whole number of u32 tokens; delete the cache directory to rebuild it"),
            });
        }
        // An empty file cannot be mapped; it simply holds no tokens.
        // SAFETY: the shard is ours, written once and renamed into place; nothing writes it
        // while it is mapped.
        let map = (len > 0)
            .then(|| unsafe { Mmap::map(&file) })
            .transpose()
            .map_err(|e| io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len() / 4)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens `start..start + n`.
    pub fn tokens(&self, start: usize, n: usize) -> Result<Vec<u32>> {
        let bytes = self
            .map
            .as_deref()
            .and_then(|m| m.get(start * 4..(start + n) * 4))
            .ok_or_else(|| Error::Invalid {
                file: self.path.display().to_string(),
                msg: format!("tokens {start}..{} are past the end", start + n),
            })?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// The tokenized corpus.
pub struct Corpus {
    pub train: Shard,
    pub val: Shard,
    /// Documents in each split.
    pub train_docs: usize,
    pub val_docs: usize,
    /// The held-out documents held no tokens (a corpus of one or a few documents), so the
    /// last `val_fraction` of the training tokens was held out instead.
    pub val_by_tokens: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Index {
    key: String,
    train_docs: usize,
    val_docs: usize,
    train_tokens: usize,
    val_tokens: usize,
    #[serde(default)]
    val_by_tokens: bool,
}

impl Corpus {
    /// Tokenizes the data of `cfg` into shards under `cache`, or opens the shards a
    /// previous run made from the same files (paths, sizes and modification times) with
    /// the same tokenizer and settings.
    pub fn prepare(cfg: &DataConfig, tokenizer: &Tokenizer, cache: &Path) -> Result<Self> {
        if cfg.paths.is_empty() {
            return Err(Error::Config("no training data: give --data PATH".into()));
        }
        if !(0.0..1.0).contains(&cfg.val_fraction) {
            return Err(Error::Config(format!(
                "val_fraction {} must be in [0, 1)",
                cfg.val_fraction
            )));
        }
        let files = list_files(&cfg.paths)?;
        let key = cache_key(cfg, &files, tokenizer)?;
        let dir = cache.join(&key);
        if let Some(corpus) = Self::open_cached(&dir, &key)? {
            return Ok(corpus);
        }
        let tmp = cache.join(format!("{key}.tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        let index = tokenize_into(cfg, &files, tokenizer, &tmp, &key)?;
        let index_path = tmp.join("index.json");
        let text = serde_json::to_string_pretty(&index)
            .map_err(|e| Error::Internal(format!("encoding the shard index: {e}")))?;
        std::fs::write(&index_path, text).map_err(|e| io(&index_path, e))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
        Self::open_cached(&dir, &key)?.ok_or_else(|| Error::Invalid {
            file: dir.display().to_string(),
            msg: "shards vanished right after they were written".into(),
        })
    }

    fn open_cached(dir: &Path, key: &str) -> Result<Option<Self>> {
        let Ok(text) = std::fs::read_to_string(dir.join("index.json")) else {
            return Ok(None);
        };
        let Ok(index) = serde_json::from_str::<Index>(&text) else {
            return Ok(None);
        };
        let train = Shard::open(&dir.join("train.bin"))?;
        let val = Shard::open(&dir.join("val.bin"))?;
        if index.key != key || train.len() != index.train_tokens || val.len() != index.val_tokens {
            return Ok(None);
        }
        Ok(Some(Self {
            train,
            val,
            train_docs: index.train_docs,
            val_docs: index.val_docs,
            val_by_tokens: index.val_by_tokens,
        }))
    }
}

/// The documents of `cfg`'s files in order, stopping once `max_bytes` of text are read:
/// the sample a vocabulary is learned from (SentencePiece's `input_sentence_size`).
pub fn read_documents(cfg: &DataConfig, max_bytes: usize) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    let mut bytes = 0usize;
    for file in list_files(&cfg.paths)? {
        if bytes >= max_bytes {
            break;
        }
        for_each_document(cfg, &file, |doc| {
            if bytes < max_bytes {
                bytes += doc.len();
                docs.push(doc);
            }
            Ok(())
        })?;
    }
    Ok(docs)
}

/// Entropy in nats of the shard's token frequencies: the loss of a model that knows
/// only how common each token is, the baseline a trained model must beat.
pub fn unigram_entropy(shard: &Shard, vocab_size: usize) -> Result<f64> {
    let mut counts = vec![0u64; vocab_size];
    const CHUNK: usize = 1 << 20;
    let mut start = 0;
    while start < shard.len() {
        let n = CHUNK.min(shard.len() - start);
        for id in shard.tokens(start, n)? {
            if let Some(c) = counts.get_mut(id as usize) {
                *c += 1;
            }
        }
        start += n;
    }
    let total = counts.iter().sum::<u64>() as f64;
    Ok(counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.ln()
        })
        .sum())
}

/// Every file named or under a named directory, in a stable order.
fn list_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .map(|e| e.map(|e| e.path()).map_err(|err| io(dir, err)))
            .collect::<Result<_>>()?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p
                .file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| io(p, e))?;
        if meta.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::Config(format!("no files found in {paths:?}")));
    }
    Ok(out)
}

fn cache_key(cfg: &DataConfig, files: &[PathBuf], tokenizer: &Tokenizer) -> Result<String> {
    let mut h = DefaultHasher::new();
    for f in files {
        let meta = std::fs::metadata(f).map_err(|e| io(f, e))?;
        f.hash(&mut h);
        meta.len().hash(&mut h);
        meta.modified().ok().hash(&mut h);
    }
    cfg.text_field.hash(&mut h);
    cfg.separator.hash(&mut h);
    cfg.val_fraction.to_bits().hash(&mut h);
    tokenizer.to_tokenizer_json().hash(&mut h);
    // Version 2: a corpus whose held-out documents hold no tokens is split by tokens.
    2u32.hash(&mut h);
    Ok(format!("{:016x}", h.finish()))
}

/// Whether document `i` is held out: a fixed hash of its index, so the split does not move
/// when the training seed does.
fn is_validation(i: usize, fraction: f64) -> bool {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % 1_000_000) < (fraction * 1_000_000.0) as u64
}

/// Documents read per parallel tokenization batch: enough to keep every core busy, few
/// enough that a big corpus never sits in memory whole.
const DOCS_PER_BATCH: usize = 4096;

fn tokenize_into(
    cfg: &DataConfig,
    files: &[PathBuf],
    tokenizer: &Tokenizer,
    dir: &Path,
    key: &str,
) -> Result<Index> {
    let mut train = ShardWriter::create(&dir.join("train.bin"))?;
    let mut val = ShardWriter::create(&dir.join("val.bin"))?;
    let (mut train_docs, mut val_docs, mut doc_index) = (0, 0, 0usize);
    let mut pending: Vec<String> = Vec::new();
    let mut flush = |docs: &mut Vec<String>, doc_index: &mut usize| -> Result<()> {
        let encoded: Vec<Vec<u32>> = docs.par_iter().map(|d| encode_doc(tokenizer, d)).collect();
        for ids in encoded {
            if is_validation(*doc_index, cfg.val_fraction) {
                val.write(&ids)?;
                val_docs += 1;
            } else {
                train.write(&ids)?;
                train_docs += 1;
            }
            *doc_index += 1;
        }
        docs.clear();
        Ok(())
    };
    for file in files {
        for_each_document(cfg, file, |doc| {
            pending.push(doc);
            if pending.len() >= DOCS_PER_BATCH {
                flush(&mut pending, &mut doc_index)?;
            }
            Ok(())
        })?;
    }
    flush(&mut pending, &mut doc_index)?;
    let (mut train_tokens, mut val_tokens) = (train.finish()?, val.finish()?);
    let val_by_tokens = val_tokens == 0 && cfg.val_fraction > 0.0 && train_tokens > 1;
    if val_by_tokens {
        let held = ((train_tokens as f64 * cfg.val_fraction).ceil() as usize).min(train_tokens - 1);
        move_tail(&dir.join("train.bin"), &dir.join("val.bin"), held)?;
        train_tokens -= held;
        val_tokens = held;
    }
    Ok(Index {
        key: key.to_string(),
        train_docs,
        val_docs,
        train_tokens,
        val_tokens,
        val_by_tokens,
    })
}

/// Moves the last `tokens` ids of shard `from` into the (empty) shard `to`.
fn move_tail(from: &Path, to: &Path, tokens: usize) -> Result<()> {
    let mut bytes = std::fs::read(from).map_err(|e| io(from, e))?;
    let cut = bytes.len() - tokens * 4;
    std::fs::write(to, &bytes[cut..]).map_err(|e| io(to, e))?;
    bytes.truncate(cut);
    std::fs::write(from, &bytes).map_err(|e| io(from, e))?;
    Ok(())
}

/// BOS + the document's tokens + EOS (where the vocabulary has them).
fn encode_doc(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    let mut ids = Vec::with_capacity(text.len() / 3 + 2);
    ids.extend(tokenizer.bos());
    ids.extend(tokenizer.encode(text, false, false));
    ids.extend(tokenizer.eos());
    ids
}

/// Calls `f` with each non-empty document of `file`: JSONL objects' text fields line by
/// line, or the text file split at separator lines.
fn for_each_document(
    cfg: &DataConfig,
    file: &Path,
    mut f: impl FnMut(String) -> Result<()>,
) -> Result<()> {
    let bad = |msg: String| Error::Invalid {
        file: file.display().to_string(),
        msg,
    };
    let reader = BufReader::new(File::open(file).map_err(|e| io(file, e))?);
    if file.extension().is_some_and(|e| e == "jsonl") {
        for (n, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| bad(format!("line {}: not JSON: {e}", n + 1)))?;
            let text = v
                .get(&cfg.text_field)
                .and_then(|t| t.as_str())
                .ok_or_else(|| {
                    bad(format!(
                        "line {}: no string field `{}`",
                        n + 1,
                        cfg.text_field
                    ))
                })?;
            if !text.trim().is_empty() {
                f(text.to_string())?;
            }
        }
        return Ok(());
    }
    let mut doc = String::new();
    for (n, line) in reader.split(b'\n').enumerate() {
        let bytes = line.map_err(|e| io(file, e))?;
        let line = String::from_utf8(bytes).map_err(|e| {
            bad(format!(
                "line {} is not UTF-8 (byte {} of the line); convert the file to UTF-8",
                n + 1,
                e.utf8_error().valid_up_to()
            ))
        })?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if cfg.separator.as_deref() == Some(line) {
            if !doc.trim().is_empty() {
                f(std::mem::take(&mut doc))?;
            }
            doc.clear();
            continue;
        }
        doc.push_str(line);
        doc.push('\n');
    }
    if !doc.trim().is_empty() {
        f(doc)?;
    }
    Ok(())
}

struct ShardWriter {
    path: PathBuf,
    out: BufWriter<File>,
    tokens: usize,
}

impl ShardWriter {
    fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|e| io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            tokens: 0,
        })
    }

    fn write(&mut self, ids: &[u32]) -> Result<()> {
        for id in ids {
            self.out
                .write_all(&id.to_le_bytes())
                .map_err(|e| io(&self.path, e))?;
        }
        self.tokens += ids.len();
        Ok(())
    }

    fn finish(self) -> Result<usize> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| io(&self.path, e))?;
        Ok(self.tokens)
    }
}

/// Packed sequences of `seq_len + 1` tokens (inputs and their next-token targets) cut from
/// a shard at multiples of `seq_len`, visited in a fresh seeded order every epoch.
pub struct Batches<'a> {
    shard: &'a Shard,
    seq_len: usize,
    seed: u64,
    n_seqs: usize,
    epoch: Option<(u64, Vec<u32>)>,
}

impl<'a> Batches<'a> {
    pub fn new(shard: &'a Shard, seq_len: usize, seed: u64) -> Result<Self> {
        let n_seqs = shard.len().saturating_sub(1) / seq_len.max(1);
        if n_seqs == 0 || seq_len == 0 {
            return Err(Error::TooLittleData {
                file: shard.path.display().to_string(),
                tokens: shard.len(),
                seq_len,
            });
        }
        Ok(Self {
            shard,
            seq_len,
            seed,
            n_seqs,
            epoch: None,
        })
    }

    /// Sequences in one pass over the shard.
    pub fn sequences_per_epoch(&self) -> usize {
        self.n_seqs
    }

    /// The `index`-th sequence of the whole run (epochs follow one another): its inputs
    /// and targets, `seq_len` tokens each.
    pub fn sequence(&mut self, index: u64) -> Result<(Vec<u32>, Vec<u32>)> {
        let epoch = index / self.n_seqs as u64;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<u32> = (0..self.n_seqs as u32).collect();
            let mut rng = ChaCha20Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9));
            order.shuffle(&mut rng);
            self.epoch = Some((epoch, order));
        }
        let order = &self
            .epoch
            .as_ref()
            .map(|(_, o)| o)
            .ok_or_else(|| Error::Internal("sequence order missing".into()))?;
        let seq = order[(index % self.n_seqs as u64) as usize] as usize;
        let mut tokens = self.shard.tokens(seq * self.seq_len, self.seq_len + 1)?;
        let targets = tokens[1..].to_vec();
        tokens.truncate(self.seq_len);
        Ok((tokens, targets))
    }

    /// The `i`-th sequence in shard order, for validation (no shuffling).
    pub fn in_order(&self, i: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        let mut tokens = self.shard.tokens(i * self.seq_len, self.seq_len + 1)?;
        let targets = tokens[1..].to_vec();
        tokens.truncate(self.seq_len);
        Ok((tokens, targets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_split_takes_about_the_asked_fraction() {
        let held = (0..100_000).filter(|&i| is_validation(i, 0.05)).count();
        assert!((4_500..5_500).contains(&held), "{held}");
        assert_eq!((0..1000).filter(|&i| is_validation(i, 0.0)).count(), 0);
    }
}
