//! What a store of chunks does, whatever holds it: documents replaced whole and atomically
//! (a reader, or a run killed half-way, sees a document's old chunks or its new ones, never
//! a mix), nearest chunks by embedding, best chunks by words.

use crate::error::Result;

/// The encoder and chunking a store was built with; a store holds one kind only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreMeta {
    /// The encoder's name (its directory's name).
    pub model: String,
    /// Its vectors' length.
    pub dim: usize,
    /// Word pieces per chunk at most, and the overlap asked for.
    pub chunk_tokens: usize,
    pub overlap: usize,
}

/// A chunk to store, with its embedding.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// Byte range in the document.
    pub start: usize,
    pub end: usize,
    pub text: String,
    pub embedding: Vec<f32>,
}

/// A document as stored: where it came from and what its bytes were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentInfo {
    pub source: String,
    pub sha256: String,
    pub chunks: usize,
}

/// A stored chunk.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Chunk {
    pub id: i64,
    /// The document's source (its path when indexed from a file).
    pub source: String,
    /// The chunk's place in its document (0, 1, ...).
    pub ordinal: usize,
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// How many of each thing a store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub documents: usize,
    pub chunks: usize,
}

/// A store of chunks with their embeddings and a full-text index.
pub trait Store {
    /// A name for messages (the file, or the database URL without its password).
    fn describe(&self) -> String;
    /// The encoder and chunking recorded, if anything was indexed yet.
    fn meta(&self) -> Result<Option<StoreMeta>>;
    /// Records them; a store that holds chunks of another kind refuses.
    fn set_meta(&mut self, meta: &StoreMeta) -> Result<()>;
    /// Every document, by source.
    fn documents(&self) -> Result<Vec<DocumentInfo>>;
    /// Replaces the document `source` (or adds it) by `chunks`, in one transaction.
    fn put_document(&mut self, source: &str, sha256: &str, chunks: &[NewChunk]) -> Result<()>;
    /// Removes the document and its chunks, in one transaction.
    fn remove_document(&mut self, source: &str) -> Result<()>;
    /// The `k` chunks whose embeddings have the highest cosine with `query`, best first,
    /// with that cosine. Exact: every chunk is compared.
    fn nearest(&self, query: &[f32], k: usize) -> Result<Vec<(i64, f32)>>;
    /// The `k` chunks that best match the words of `query` (BM25 where the store has it),
    /// best first, with a score where higher is better.
    fn matching(&self, query: &str, k: usize) -> Result<Vec<(i64, f32)>>;
    /// The chunks with these ids, in the order asked (ids not found are left out).
    fn chunks(&self, ids: &[i64]) -> Result<Vec<Chunk>>;
    fn stats(&self) -> Result<Stats>;
    /// Builds (or rebuilds) an approximate index for [`Store::nearest`] with `lists`
    /// lists (default: about the square root of the chunk count); returns the count.
    fn build_ann(&mut self, lists: Option<usize>) -> Result<usize> {
        let _ = lists;
        Err(crate::Error::Store {
            store: self.describe(),
            msg: "this store has no approximate index; its scan is exact".into(),
        })
    }
    /// The approximate index's list count, if the store has one.
    fn ann_lists(&self) -> Result<Option<usize>> {
        Ok(None)
    }
    /// How [`Store::nearest`] searches when an approximate index exists: exactly anyway,
    /// or through the `nprobe` nearest lists (default: an eighth of them, at least 8).
    fn set_search(&mut self, exact: bool, nprobe: Option<usize>) {
        let _ = (exact, nprobe);
    }
}

impl StoreMeta {
    /// As the stores keep it: key and value text.
    pub fn pairs(&self) -> [(&'static str, String); 4] {
        [
            ("model", self.model.clone()),
            ("dim", self.dim.to_string()),
            ("chunk_tokens", self.chunk_tokens.to_string()),
            ("overlap", self.overlap.to_string()),
        ]
    }

    /// Read back from those pairs (`get` finds a key's value); None when nothing was
    /// recorded yet.
    pub fn from_pairs(store: &str, get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(model) = get("model") else {
            return Ok(None);
        };
        let num = |k: &str| -> Result<usize> {
            get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| crate::Error::Store {
                    store: store.to_string(),
                    msg: format!("meta `{k}` missing or not a number"),
                })
        };
        Ok(Some(Self {
            model,
            dim: num("dim")?,
            chunk_tokens: num("chunk_tokens")?,
            overlap: num("overlap")?,
        }))
    }
}

/// Refuses to record `meta` in a store that holds chunks of another encoder.
pub fn check_meta_change(store: &dyn Store, meta: &StoreMeta) -> Result<()> {
    if let Some(old) = store.meta()? {
        if (old.model != meta.model || old.dim != meta.dim) && store.stats()?.chunks > 0 {
            return Err(crate::Error::ModelMismatch {
                store: store.describe(),
                stored: old.model,
                stored_dim: old.dim,
                given: meta.model.clone(),
                given_dim: meta.dim,
            });
        }
    }
    Ok(())
}

/// The words of a query for a full-text search: runs of letters and digits, lower-cased,
/// each once, in order. Operators and quotes a user types are not syntax here.
pub fn query_words(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w = w.to_lowercase();
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

/// The `k` largest `(id, score)` pairs, best first (ties by id, so results are stable).
pub fn top_k(scores: impl Iterator<Item = (i64, f32)>, k: usize) -> Vec<(i64, f32)> {
    let mut all: Vec<(i64, f32)> = scores.filter(|(_, s)| s.is_finite()).collect();
    let by = |a: &(i64, f32), b: &(i64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if all.len() > k && k > 0 {
        all.select_nth_unstable_by(k - 1, by);
        all.truncate(k);
    }
    all.sort_by(by);
    all.truncate(k);
    all
}

/// Little-endian f32 bytes of a vector, as stores keep embeddings.
pub fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The vector of `bytes`, if they are whole f32s of length `dim`.
pub fn bytes_vector(bytes: &[u8], dim: usize) -> Option<Vec<f32>> {
    if bytes.len() != dim * 4 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_top_k_and_bytes() {
        assert_eq!(
            query_words("What IS \"the\" boiling-point of water? water OR NEAR(x)"),
            ["what", "is", "the", "boiling", "point", "of", "water", "or", "near", "x"]
        );
        assert!(query_words("?? -- \"").is_empty());
        let t = top_k(
            [(1, 0.5), (2, 0.9), (3, f32::NAN), (4, 0.9), (5, 0.1)].into_iter(),
            3,
        );
        assert_eq!(t, [(2, 0.9), (4, 0.9), (1, 0.5)]);
        assert!(top_k([(1, 1.0)].into_iter(), 0).is_empty());
        let v = [1.5f32, -2.0, 0.0];
        assert_eq!(bytes_vector(&vector_bytes(&v), 3).unwrap(), v);
        assert!(bytes_vector(&[0u8; 5], 1).is_none());
    }
}
