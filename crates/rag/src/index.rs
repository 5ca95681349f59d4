//! Indexing files into a store: every text file under the paths given, cut into chunks,
//! embedded and stored one document per transaction. A file whose bytes are unchanged
//! (SHA-256) is skipped, a changed one replaced, and one gone from an indexed directory
//! removed; a run stopped anywhere is taken up by running it again.

use std::path::{Path, PathBuf};

use ferrollama_embed::Embedder;
use sha2::{Digest, Sha256};

use crate::chunk;
use crate::error::{Error, Result};
use crate::store::{NewChunk, Store, StoreMeta};

/// How documents are cut.
#[derive(Debug, Clone, Copy)]
pub struct ChunkOptions {
    /// Word pieces per chunk at most (capped at what the encoder reads, less [CLS] and
    /// [SEP]).
    pub tokens: usize,
    /// Word pieces shared by consecutive chunks, about.
    pub overlap: usize,
    /// Chunks per forward pass of the encoder.
    pub batch: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        // all-MiniLM-L6-v2 was trained on 128-piece inputs.
        Self {
            tokens: 128,
            overlap: 32,
            batch: 32,
        }
    }
}

/// What an index run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct IndexReport {
    pub added: usize,
    pub replaced: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Files left out, with why (not UTF-8 text, unreadable).
    pub skipped: Vec<(String, String)>,
    /// Chunks written in this run.
    pub chunks: usize,
}

/// One file to index: its source key (its canonical path) and where it was found.
#[derive(Debug, Clone)]
pub struct Input {
    pub source: String,
    pub path: PathBuf,
}

/// The files under `paths` (files as given, directories walked; names starting with `.`
/// left out), sorted, and the directories walked (whose vanished files are removed).
pub fn collect(paths: &[PathBuf]) -> Result<(Vec<Input>, Vec<String>)> {
    let mut files = Vec::new();
    let mut roots = Vec::new();
    for p in paths {
        let canon = p.canonicalize().map_err(|e| Error::io(p, e))?;
        if canon.is_dir() {
            roots.push(format!("{}/", canon.display()));
            walk(&canon, &mut files)?;
        } else {
            files.push(canon);
        }
    }
    files.sort();
    files.dedup();
    Ok((
        files
            .into_iter()
            .map(|p| Input {
                source: p.display().to_string(),
                path: p,
            })
            .collect(),
        roots,
    ))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        let kind = e.file_type().map_err(|err| Error::io(&p, err))?;
        if kind.is_dir() {
            walk(&p, out)?;
        } else if kind.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// The text of a file, or why it is not indexed.
fn read_text(path: &Path) -> std::result::Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.contains(&0) {
        return Err("binary (holds NUL bytes)".into());
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 ({e})"))
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The chunks of `text` with their embeddings.
pub fn embed_document(
    embedder: &Embedder,
    text: &str,
    opts: &ChunkOptions,
) -> Result<Vec<NewChunk>> {
    Ok(embed_documents(embedder, &[text], opts)?.remove(0))
}

/// The chunks of each text with their embeddings, the chunks of all of them embedded
/// together (so that many short documents still fill the encoder's batches).
pub fn embed_documents(
    embedder: &Embedder,
    texts: &[&str],
    opts: &ChunkOptions,
) -> Result<Vec<Vec<NewChunk>>> {
    let size = opts
        .tokens
        .min(embedder.max_tokens.saturating_sub(2))
        .max(1);
    let mut spans = Vec::with_capacity(texts.len());
    let mut pieces_all: Vec<&str> = Vec::new();
    for text in texts {
        let pieces = embedder.piece_offsets(text)?;
        let s = chunk::spans(text, &pieces, size, opts.overlap);
        pieces_all.extend(s.iter().map(|s| text.get(s.start..s.end).unwrap_or("")));
        spans.push(s);
    }
    let mut vectors = embedder.embed(&pieces_all, opts.batch)?.into_iter();
    let mut pieces_all = pieces_all.into_iter();
    Ok(spans
        .into_iter()
        .map(|s| {
            s.iter()
                .zip(pieces_all.by_ref())
                .zip(vectors.by_ref())
                .map(|((s, t), v)| NewChunk {
                    start: s.start,
                    end: s.end,
                    text: t.to_string(),
                    embedding: v,
                })
                .collect()
        })
        .collect())
}

/// Documents embedded together: up to this many bytes of text, and up to eight batches'
/// worth of documents (so a run commits as it goes, not all at the end).
const GROUP_BYTES: usize = 256 * 1024;
const GROUP_BATCHES: usize = 8;

/// A document read and waiting to be embedded and stored.
struct Pending {
    source: String,
    hash: String,
    text: String,
    replaces: bool,
}

/// Embeds the pending documents together and stores each in its own transaction.
fn flush(
    store: &mut dyn Store,
    embedder: &Embedder,
    opts: &ChunkOptions,
    pending: &mut Vec<Pending>,
    report: &mut IndexReport,
) -> Result<()> {
    let texts: Vec<&str> = pending.iter().map(|p| p.text.as_str()).collect();
    let chunks = embed_documents(embedder, &texts, opts)?;
    for (p, chunks) in pending.iter().zip(chunks) {
        store.put_document(&p.source, &p.hash, &chunks)?;
        report.chunks += chunks.len();
        if p.replaces {
            report.replaced += 1;
        } else {
            report.added += 1;
        }
    }
    pending.clear();
    Ok(())
}

/// Brings `store` up to date with the files under `paths`. `progress` hears each file
/// (index, count, source) before it is read.
pub fn index(
    store: &mut dyn Store,
    embedder: &Embedder,
    paths: &[PathBuf],
    opts: &ChunkOptions,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<IndexReport> {
    let meta = StoreMeta {
        model: embedder.name().to_string(),
        dim: embedder.encoder.config.hidden_size,
        chunk_tokens: opts.tokens,
        overlap: opts.overlap,
    };
    let old_meta = store.meta()?;
    store.set_meta(&meta)?;
    // Chunked otherwise before: every document is cut again.
    let rechunk = old_meta.is_some_and(|m| m != meta);
    let (inputs, roots) = collect(paths)?;
    let known: std::collections::HashMap<String, String> = store
        .documents()?
        .into_iter()
        .map(|d| (d.source, d.sha256))
        .collect();
    let mut report = IndexReport::default();
    let mut pending = Vec::new();
    let mut pending_bytes = 0;
    for (i, input) in inputs.iter().enumerate() {
        progress(i, inputs.len(), &input.source);
        let text = match read_text(&input.path) {
            Ok(t) => t,
            Err(why) => {
                // Indexed before as text: what it holds now is not, so it goes.
                if known.contains_key(&input.source) {
                    store.remove_document(&input.source)?;
                    report.removed += 1;
                }
                report.skipped.push((input.source.clone(), why));
                continue;
            }
        };
        let hash = sha256_hex(text.as_bytes());
        let old = known.get(&input.source);
        if old == Some(&hash) && !rechunk {
            report.unchanged += 1;
            continue;
        }
        pending_bytes += text.len();
        pending.push(Pending {
            source: input.source.clone(),
            hash,
            text,
            replaces: old.is_some(),
        });
        if pending_bytes >= GROUP_BYTES || pending.len() >= opts.batch.max(1) * GROUP_BATCHES {
            flush(store, embedder, opts, &mut pending, &mut report)?;
            pending_bytes = 0;
        }
    }
    flush(store, embedder, opts, &mut pending, &mut report)?;
    let present: std::collections::HashSet<&str> =
        inputs.iter().map(|i| i.source.as_str()).collect();
    for source in known.keys() {
        let under_root = roots.iter().any(|r| source.starts_with(r.as_str()));
        if under_root && !present.contains(source.as_str()) {
            store.remove_document(source)?;
            report.removed += 1;
        }
    }
    Ok(report)
}
