//! The embedded store: one SQLite file (rusqlite's bundled SQLite) holding documents,
//! chunks with their embeddings as little-endian f32 blobs, and an FTS5 index of the
//! chunks' text (Porter-stemmed) for BM25. Write-ahead logging with full syncs: a document
//! is one transaction, so a run killed at any point leaves every committed document whole
//! and the rest absent. Dense search compares the query with every chunk, from a copy of
//! the vectors read once per opened store (and again after a write).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::ivf;
use crate::store::{
    bytes_vector, query_words, top_k, vector_bytes, Chunk, DocumentInfo, NewChunk, Stats, Store,
    StoreMeta,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    chunks INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    document INTEGER NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    text TEXT NOT NULL,
    embedding BLOB NOT NULL,
    list INTEGER
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document);
CREATE TABLE IF NOT EXISTS ivf (list INTEGER PRIMARY KEY, centroid BLOB NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, content='chunks', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
";

/// Normalised vectors of every chunk, in one block, for the exact scan; with the
/// approximate index, the rows of each list.
struct Vectors {
    ids: Vec<i64>,
    dim: usize,
    data: Vec<f32>,
    lists: Vec<Vec<u32>>,
    /// Rows in no list (none while the index is whole).
    unlisted: Vec<u32>,
}

/// A store in one SQLite file.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    vectors: RefCell<Option<Vectors>>,
    /// The approximate index's centroids (lists x dim), once read; `Some(None)`: none.
    centroids: RefCell<Option<Option<Vec<f32>>>>,
    exact: bool,
    nprobe: Option<usize>,
}

impl SqliteStore {
    /// Opens the store at `path`, creating it when absent. A file that is not such a store
    /// (not SQLite, or SQLite without these tables' shape) is an error, not overwritten.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| sql_error(path, e))?;
        let s = Self {
            conn,
            path: path.to_path_buf(),
            vectors: RefCell::new(None),
            centroids: RefCell::new(None),
            exact: false,
            nprobe: None,
        };
        s.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| s.err(e))?;
        // WAL keeps readers going during an index run; FULL syncs make a commit durable
        // before the next document starts.
        s.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| s.err(e))?;
        s.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| s.err(e))?;
        s.conn.execute_batch(SCHEMA).map_err(|e| s.err(e))?;
        // Stores written before the approximate index lack the `list` column.
        let has_list: bool = s
            .conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('chunks') WHERE name = 'list'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| s.err(e))?
            > 0;
        if !has_list {
            s.conn
                .execute_batch("ALTER TABLE chunks ADD COLUMN list INTEGER")
                .map_err(|e| s.err(e))?;
        }
        s.conn
            .execute_batch("CREATE INDEX IF NOT EXISTS chunks_by_list ON chunks(list)")
            .map_err(|e| s.err(e))?;
        Ok(s)
    }

    /// SQLite's own checks of the file and of the full-text index against the chunks.
    pub fn check(&self) -> Result<()> {
        let r: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if r != "ok" {
            return Err(self.msg(format!("integrity check: {r}")));
        }
        self.conn
            .execute(
                "INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)",
                [],
            )
            .map_err(|e| self.err(e))?;
        let bad: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM documents d WHERE d.chunks != \
                 (SELECT count(*) FROM chunks c WHERE c.document = d.id)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if bad != 0 {
            return Err(self.msg(format!("{bad} documents do not hold their chunk count")));
        }
        Ok(())
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        sql_error(&self.path, e)
    }

    fn msg(&self, msg: String) -> Error {
        Error::Store {
            store: self.describe(),
            msg,
        }
    }

    fn load_vectors(&self) -> Result<()> {
        if self.vectors.borrow().is_some() {
            return Ok(());
        }
        let Some(meta) = self.meta()? else {
            *self.vectors.borrow_mut() = Some(Vectors {
                ids: Vec::new(),
                dim: 0,
                data: Vec::new(),
                lists: Vec::new(),
                unlisted: Vec::new(),
            });
            return Ok(());
        };
        let n_lists = self.centroids()?.map_or(0, |c| c.len() / meta.dim.max(1));
        let mut stmt = self
            .conn
            .prepare("SELECT id, embedding, list FROM chunks ORDER BY id")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        let mut v = Vectors {
            ids: Vec::new(),
            dim: meta.dim,
            data: Vec::new(),
            lists: vec![Vec::new(); n_lists],
            unlisted: Vec::new(),
        };
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let id: i64 = row.get(0).map_err(|e| self.err(e))?;
            let bytes: Vec<u8> = row.get(1).map_err(|e| self.err(e))?;
            let list: Option<i64> = row.get(2).map_err(|e| self.err(e))?;
            let r = v.ids.len() as u32;
            match list.and_then(|l| v.lists.get_mut(l as usize)) {
                Some(members) => members.push(r),
                None => v.unlisted.push(r),
            }
            let mut x = bytes_vector(&bytes, meta.dim).ok_or_else(|| {
                self.msg(format!(
                    "chunk {id}: an embedding of {} bytes, not {} f32s",
                    bytes.len(),
                    meta.dim
                ))
            })?;
            ferrollama_embed::normalize(&mut x);
            v.ids.push(id);
            v.data.extend_from_slice(&x);
        }
        *self.vectors.borrow_mut() = Some(v);
        Ok(())
    }
}

impl SqliteStore {
    /// The approximate index's centroids, read once; None when the store has none.
    fn centroids(&self) -> Result<Option<Vec<f32>>> {
        if let Some(c) = self.centroids.borrow().as_ref() {
            return Ok(c.clone());
        }
        let dim = self.meta()?.map_or(0, |m| m.dim);
        let mut stmt = self
            .conn
            .prepare("SELECT centroid FROM ivf ORDER BY list")
            .map_err(|e| self.err(e))?;
        let blobs: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))?;
        let c = if blobs.is_empty() || dim == 0 {
            None
        } else {
            let mut all = Vec::with_capacity(blobs.len() * dim);
            for b in &blobs {
                all.extend(bytes_vector(b, dim).ok_or_else(|| {
                    self.msg(format!(
                        "an index centroid of {} bytes, not {dim} f32s",
                        b.len()
                    ))
                })?);
            }
            Some(all)
        };
        *self.centroids.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    /// The list a new chunk's embedding belongs to, when the store has an index.
    fn list_of(&self, embedding: &[f32]) -> Result<Option<i64>> {
        let Some(c) = self.centroids()? else {
            return Ok(None);
        };
        if embedding.is_empty() || c.len() % embedding.len() != 0 {
            return Err(self.msg(format!(
                "an embedding of {} values against an index of another width",
                embedding.len()
            )));
        }
        let mut v = embedding.to_vec();
        ferrollama_embed::normalize(&mut v);
        Ok(Some(ivf::nearest_lists(&c, v.len(), &v, 1)[0] as i64))
    }

    /// Nearest chunks through the index: the query against the vectors of its `nprobe`
    /// nearest lists only (and any chunk in no list).
    fn nearest_approximate(
        &self,
        centroids: &[f32],
        q: &[f32],
        k: usize,
    ) -> Result<Vec<(i64, f32)>> {
        self.load_vectors()?;
        let guard = self.vectors.borrow();
        let Some(v) = guard.as_ref() else {
            return Ok(Vec::new());
        };
        let dim = q.len();
        if dim != v.dim {
            return Err(self.msg(format!(
                "a query of {dim} dimensions against vectors of {}",
                v.dim
            )));
        }
        let lists = centroids.len() / dim.max(1);
        let nprobe = self.nprobe.unwrap_or((lists / 8).max(8));
        let probe = ivf::nearest_lists(centroids, dim, q, nprobe);
        let rows = probe
            .iter()
            .filter_map(|&l| v.lists.get(l as usize))
            .flatten()
            .chain(&v.unlisted);
        let scores = rows.map(|&r| {
            let r = r as usize;
            let x = &v.data[r * dim..(r + 1) * dim];
            (v.ids[r], x.iter().zip(q).map(|(a, b)| a * b).sum::<f32>())
        });
        Ok(top_k(scores, k))
    }
}

fn sql_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::Store {
        store: path.display().to_string(),
        msg: e.to_string(),
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn meta(&self) -> Result<Option<StoreMeta>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM meta")
            .map_err(|e| self.err(e))?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))?;
        StoreMeta::from_pairs(&self.describe(), |k| {
            rows.iter().find(|r| r.0 == k).map(|r| r.1.clone())
        })
    }

    fn set_meta(&mut self, meta: &StoreMeta) -> Result<()> {
        crate::store::check_meta_change(self, meta)?;
        // Another encoder (the store is empty, or it would have been refused): the index's
        // centroids live in the old encoder's space.
        if self
            .meta()?
            .is_some_and(|old| old.model != meta.model || old.dim != meta.dim)
        {
            self.conn
                .execute("DELETE FROM ivf", [])
                .map_err(|e| self.err(e))?;
            *self.centroids.borrow_mut() = None;
        }
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sql_error(&self.path, e))?;
        for (k, v) in meta.pairs() {
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )
            .map_err(|e| sql_error(&self.path, e))?;
        }
        tx.commit().map_err(|e| sql_error(&self.path, e))?;
        *self.vectors.borrow_mut() = None;
        Ok(())
    }

    fn documents(&self) -> Result<Vec<DocumentInfo>> {
        let mut stmt = self
            .conn
            .prepare("SELECT source, sha256, chunks FROM documents ORDER BY source")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DocumentInfo {
                    source: r.get(0)?,
                    sha256: r.get(1)?,
                    chunks: r.get::<_, i64>(2)? as usize,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    fn put_document(&mut self, source: &str, sha256: &str, chunks: &[NewChunk]) -> Result<()> {
        let lists = chunks
            .iter()
            .map(|c| self.list_of(&c.embedding))
            .collect::<Result<Vec<_>>>()?;
        let path = self.path.clone();
        let e = |e: rusqlite::Error| sql_error(&path, e);
        let tx = self.conn.transaction().map_err(e)?;
        let old: Option<i64> = tx
            .query_row(
                "SELECT id FROM documents WHERE source = ?1",
                [source],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        if let Some(id) = old {
            tx.execute("DELETE FROM chunks WHERE document = ?1", [id])
                .map_err(e)?;
            tx.execute("DELETE FROM documents WHERE id = ?1", [id])
                .map_err(e)?;
        }
        tx.execute(
            "INSERT INTO documents(source, sha256, chunks) VALUES (?1, ?2, ?3)",
            params![source, sha256, chunks.len() as i64],
        )
        .map_err(e)?;
        let doc = tx.last_insert_rowid();
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO chunks(document, ordinal, start, end, text, embedding, list) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(e)?;
            for (i, (c, list)) in chunks.iter().zip(lists).enumerate() {
                ins.execute(params![
                    doc,
                    i as i64,
                    c.start as i64,
                    c.end as i64,
                    c.text,
                    vector_bytes(&c.embedding),
                    list
                ])
                .map_err(e)?;
            }
        }
        tx.commit().map_err(e)?;
        *self.vectors.borrow_mut() = None;
        Ok(())
    }

    fn remove_document(&mut self, source: &str) -> Result<()> {
        let path = self.path.clone();
        let e = |e: rusqlite::Error| sql_error(&path, e);
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute(
            "DELETE FROM chunks WHERE document IN (SELECT id FROM documents WHERE source = ?1)",
            [source],
        )
        .map_err(e)?;
        tx.execute("DELETE FROM documents WHERE source = ?1", [source])
            .map_err(e)?;
        tx.commit().map_err(e)?;
        *self.vectors.borrow_mut() = None;
        Ok(())
    }

    fn nearest(&self, query: &[f32], k: usize) -> Result<Vec<(i64, f32)>> {
        if !self.exact {
            if let Some(c) = self.centroids()? {
                if c.len() % query.len().max(1) != 0 {
                    return Err(self.msg(format!(
                        "a query of {} dimensions against an index of another width",
                        query.len()
                    )));
                }
                let mut q = query.to_vec();
                ferrollama_embed::normalize(&mut q);
                return self.nearest_approximate(&c, &q, k);
            }
        }
        self.load_vectors()?;
        let guard = self.vectors.borrow();
        let Some(v) = guard.as_ref() else {
            return Ok(Vec::new());
        };
        if v.ids.is_empty() {
            return Ok(Vec::new());
        }
        if query.len() != v.dim {
            return Err(self.msg(format!(
                "a query of {} dimensions against vectors of {}",
                query.len(),
                v.dim
            )));
        }
        let mut q = query.to_vec();
        ferrollama_embed::normalize(&mut q);
        let scores = v
            .ids
            .iter()
            .zip(v.data.chunks_exact(v.dim))
            .map(|(&id, x)| {
                let dot: f32 = x.iter().zip(&q).map(|(a, b)| a * b).sum();
                (id, dot)
            });
        Ok(top_k(scores, k))
    }

    fn matching(&self, query: &str, k: usize) -> Result<Vec<(i64, f32)>> {
        let words = query_words(query);
        if words.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        // Each word quoted (so it is a term, never FTS5 syntax), any of them may match.
        let expr = words
            .iter()
            .map(|w| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(" OR ");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT rowid, bm25(chunks_fts) AS score FROM chunks_fts \
                 WHERE chunks_fts MATCH ?1 ORDER BY score, rowid LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![expr, k as i64], |r| {
                // FTS5's bm25() is negated so that smaller sorts first; flip it back.
                Ok((r.get::<_, i64>(0)?, -(r.get::<_, f64>(1)? as f32)))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    fn chunks(&self, ids: &[i64]) -> Result<Vec<Chunk>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT c.id, d.source, c.ordinal, c.start, c.end, c.text \
                 FROM chunks c JOIN documents d ON d.id = c.document WHERE c.id = ?1",
            )
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let c = stmt
                .query_row([id], |r| {
                    Ok(Chunk {
                        id: r.get(0)?,
                        source: r.get(1)?,
                        ordinal: r.get::<_, i64>(2)? as usize,
                        start: r.get::<_, i64>(3)? as usize,
                        end: r.get::<_, i64>(4)? as usize,
                        text: r.get(5)?,
                    })
                })
                .optional()
                .map_err(|e| self.err(e))?;
            out.extend(c);
        }
        Ok(out)
    }

    fn build_ann(&mut self, lists: Option<usize>) -> Result<usize> {
        *self.vectors.borrow_mut() = None;
        self.load_vectors()?;
        let (ids, lists_n, centroids, assignment) = {
            let guard = self.vectors.borrow();
            let Some(v) = guard.as_ref().filter(|v| !v.ids.is_empty()) else {
                return Err(
                    self.msg("an approximate index needs chunks: index documents first".into())
                );
            };
            let n = v.ids.len();
            let lists = lists.unwrap_or_else(|| ivf::default_lists(n)).clamp(1, n);
            let centroids = ivf::train(&v.data, v.dim, lists, 0x5EED);
            let assignment = ivf::assign(&centroids, v.dim, &v.data);
            (v.ids.clone(), lists, centroids, assignment)
        };
        let dim = centroids.len() / lists_n;
        let path = self.path.clone();
        let e = |e: rusqlite::Error| sql_error(&path, e);
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute("DELETE FROM ivf", []).map_err(e)?;
        {
            let mut ins = tx
                .prepare("INSERT INTO ivf(list, centroid) VALUES (?1, ?2)")
                .map_err(e)?;
            for (l, c) in centroids.chunks_exact(dim).enumerate() {
                ins.execute(params![l as i64, vector_bytes(c)]).map_err(e)?;
            }
            let mut upd = tx
                .prepare("UPDATE chunks SET list = ?1 WHERE id = ?2")
                .map_err(e)?;
            for (id, l) in ids.iter().zip(&assignment) {
                upd.execute(params![*l as i64, id]).map_err(e)?;
            }
        }
        tx.commit().map_err(e)?;
        *self.centroids.borrow_mut() = Some(Some(centroids));
        *self.vectors.borrow_mut() = None;
        Ok(lists_n)
    }

    fn ann_lists(&self) -> Result<Option<usize>> {
        let dim = self.meta()?.map_or(1, |m| m.dim.max(1));
        Ok(self.centroids()?.map(|c| c.len() / dim))
    }

    fn set_search(&mut self, exact: bool, nprobe: Option<usize>) {
        self.exact = exact;
        self.nprobe = nprobe;
    }

    fn stats(&self) -> Result<Stats> {
        let count = |sql: &str| -> Result<usize> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as usize)
                .map_err(|e| self.err(e))
        };
        Ok(Stats {
            documents: count("SELECT count(*) FROM documents")?,
            chunks: count("SELECT count(*) FROM chunks")?,
        })
    }
}
