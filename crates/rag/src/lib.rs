//! Retrieval for retrieval-augmented generation: documents cut into chunks ([`chunk`]),
//! embedded by a sentence encoder and kept with a full-text index in a [`Store`] (SQLite
//! by default, [`sqlite`]), found again by meaning (dense), by words (BM25) or by both
//! fused by reciprocal rank ([`search`]).

pub mod chunk;
pub mod error;
pub mod index;
pub mod ivf;
pub mod postgres;
pub mod prompt;
pub mod sqlite;
pub mod store;

use ferrollama_embed::Embedder;

pub use error::{Error, Result};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use store::{Chunk, Stats, Store, StoreMeta};

/// Opens the store `db`: a PostgreSQL URL (`postgres://` or `postgresql://`) or else a
/// SQLite file, created when absent.
pub fn open_store(db: &str) -> Result<Box<dyn Store + Send>> {
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        Ok(Box::new(PostgresStore::connect(db)?))
    } else {
        Ok(Box::new(SqliteStore::open(std::path::Path::new(db))?))
    }
}

/// How chunks are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Cosine of embeddings.
    Dense,
    /// BM25 over the words (FTS5).
    Bm25,
    /// Both, fused by reciprocal rank.
    Hybrid,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dense" => Ok(Self::Dense),
            "bm25" => Ok(Self::Bm25),
            "hybrid" => Ok(Self::Hybrid),
            _ => Err(Error::Argument(format!(
                "retrieval method `{s}`: dense, bm25 or hybrid"
            ))),
        }
    }
}

/// A chunk found, with its score under the method used and its ranks in the dense and
/// word lists (1-based; absent when it was not among their candidates).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hit {
    #[serde(flatten)]
    pub chunk: Chunk,
    pub score: f32,
    pub dense_rank: Option<usize>,
    pub bm25_rank: Option<usize>,
}

/// Reciprocal rank fusion's constant (Cormack et al. 2009): a rank r counts 1/(60 + r).
pub const RRF_K: f32 = 60.0;

/// Candidates taken from each list before fusing, at least.
const FUSION_DEPTH: usize = 50;

/// Fuses ranked lists by reciprocal rank: each id scores the sum of 1/(`RRF_K` + rank)
/// over the lists it is in. Best first; ties by the order of first appearance.
pub fn fuse(lists: &[&[i64]]) -> Vec<(i64, f32)> {
    let mut scores: Vec<(i64, f32)> = Vec::new();
    for list in lists {
        for (r, id) in list.iter().enumerate() {
            let s = 1.0 / (RRF_K + (r + 1) as f32);
            match scores.iter_mut().find(|(i, _)| i == id) {
                Some(e) => e.1 += s,
                None => scores.push((*id, s)),
            }
        }
    }
    // A stable sort keeps first appearance among equals.
    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
    scores
}

/// Checks that `store` was built with `embedder` (an empty store takes any).
pub fn check_encoder(store: &dyn Store, embedder: &Embedder) -> Result<()> {
    if let Some(m) = store.meta()? {
        let dim = embedder.encoder.config.hidden_size;
        if m.model != embedder.name() || m.dim != dim {
            return Err(Error::ModelMismatch {
                store: store.describe(),
                stored: m.model,
                stored_dim: m.dim,
                given: embedder.name().to_string(),
                given_dim: dim,
            });
        }
    }
    Ok(())
}

/// The `k` best chunks of `store` for `query` by `method`.
pub fn search(
    store: &dyn Store,
    embedder: &Embedder,
    query: &str,
    method: Method,
    k: usize,
) -> Result<Vec<Hit>> {
    check_encoder(store, embedder)?;
    let vector = if method == Method::Bm25 {
        Vec::new()
    } else {
        embedder.embed(&[query], 1)?.remove(0)
    };
    search_embedded(store, query, &vector, method, k)
}

/// [`search`] with the query already embedded (`vector`, by the store's encoder; unused
/// for BM25), so that many queries can be embedded in batches.
pub fn search_embedded(
    store: &dyn Store,
    query: &str,
    vector: &[f32],
    method: Method,
    k: usize,
) -> Result<Vec<Hit>> {
    let depth = if method == Method::Hybrid {
        k.max(FUSION_DEPTH)
    } else {
        k
    };
    let dense = if method == Method::Bm25 {
        Vec::new()
    } else {
        store.nearest(vector, depth)?
    };
    let words = if method == Method::Dense {
        Vec::new()
    } else {
        store.matching(query, depth)?
    };
    let dense_ids: Vec<i64> = dense.iter().map(|x| x.0).collect();
    let word_ids: Vec<i64> = words.iter().map(|x| x.0).collect();
    let ranked: Vec<(i64, f32)> = match method {
        Method::Dense => dense,
        Method::Bm25 => words,
        Method::Hybrid => fuse(&[&dense_ids, &word_ids]),
    };
    let ranked = &ranked[..ranked.len().min(k)];
    let ids: Vec<i64> = ranked.iter().map(|x| x.0).collect();
    let chunks = store.chunks(&ids)?;
    let rank_in = |list: &[i64], id: i64| list.iter().position(|&x| x == id).map(|p| p + 1);
    Ok(chunks
        .into_iter()
        .zip(ranked)
        .map(|(chunk, &(id, score))| Hit {
            dense_rank: rank_in(&dense_ids, id),
            bm25_rank: rank_in(&word_ids, id),
            chunk,
            score,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_by_reciprocal_rank() {
        // 1 (first and third: 1/61 + 1/63) just beats 7 (second in both: 2/62); 9 (first
        // in one list only) and 3 (third in one) follow.
        let f = fuse(&[&[1, 7, 3], &[9, 7, 1]]);
        assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 7, 9, 3]);
        assert!((f[0].1 - (1.0 / 61.0 + 1.0 / 63.0)).abs() < 1e-7);
        assert!((f[1].1 - 2.0 / 62.0).abs() < 1e-7);
        assert!(fuse(&[]).is_empty());
        assert_eq!("hybrid".parse::<Method>().unwrap(), Method::Hybrid);
        assert!("cosine".parse::<Method>().is_err());
    }
}
