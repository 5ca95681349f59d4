//! The store in PostgreSQL, for stores shared by several machines: the same tables as the
//! SQLite store (prefixed `rag_`), embeddings as `real[]` normalised at insert, and
//! PostgreSQL's own full-text search (an English `tsvector` column with a GIN index).
//! Debian's registry has no pgvector, so the dense search is an exact scan written in SQL
//! (a dot product over `unnest` of the two arrays); the word search ranks with
//! `ts_rank_cd`, PostgreSQL's cover density ranking, not BM25.

use std::cell::RefCell;

use postgres::{Client, NoTls};

use crate::error::{Error, Result};
use crate::store::{query_words, Chunk, DocumentInfo, NewChunk, Stats, Store, StoreMeta};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rag_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rag_documents (
    id BIGSERIAL PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    chunks INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rag_chunks (
    id BIGSERIAL PRIMARY KEY,
    document BIGINT NOT NULL REFERENCES rag_documents(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    start_byte BIGINT NOT NULL,
    end_byte BIGINT NOT NULL,
    text TEXT NOT NULL,
    embedding REAL[] NOT NULL,
    words TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', text)) STORED
);
CREATE INDEX IF NOT EXISTS rag_chunks_by_document ON rag_chunks(document);
CREATE INDEX IF NOT EXISTS rag_chunks_words ON rag_chunks USING GIN (words);
";

/// A store in a PostgreSQL database.
pub struct PostgresStore {
    client: RefCell<Client>,
    name: String,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database`, without TLS)
    /// and creates the tables when absent.
    pub fn connect(url: &str) -> Result<Self> {
        let name = redact(url);
        let mut client = Client::connect(url, NoTls).map_err(|e| Error::Store {
            store: name.clone(),
            msg: format!("connecting: {}", message(&e)),
        })?;
        // Another writer creating the tables at the same moment is not an error.
        client.batch_execute(SCHEMA).map_err(|e| Error::Store {
            store: name.clone(),
            msg: message(&e),
        })?;
        Ok(Self {
            client: RefCell::new(client),
            name,
        })
    }

    fn err(&self, e: postgres::Error) -> Error {
        Error::Store {
            store: self.name.clone(),
            msg: message(&e),
        }
    }
}

/// The server's own words when it sent an error (the client's `Display` says only "db
/// error"), else the client's.
fn message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => match d.detail() {
            Some(detail) => format!("{} ({detail})", d.message()),
            None => d.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_string(),
    }
}

impl Store for PostgresStore {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn meta(&self) -> Result<Option<StoreMeta>> {
        let rows = self
            .client
            .borrow_mut()
            .query("SELECT key, value FROM rag_meta", &[])
            .map_err(|e| self.err(e))?;
        StoreMeta::from_pairs(&self.name, |k| {
            rows.iter()
                .find(|r| r.get::<_, String>(0) == k)
                .map(|r| r.get::<_, String>(1))
        })
    }

    fn set_meta(&mut self, meta: &StoreMeta) -> Result<()> {
        crate::store::check_meta_change(self, meta)?;
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction().map_err(|e| self.err(e))?;
        for (k, v) in meta.pairs() {
            tx.execute(
                "INSERT INTO rag_meta(key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&k, &v],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn documents(&self) -> Result<Vec<DocumentInfo>> {
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT source, sha256, chunks FROM rag_documents ORDER BY source",
                &[],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| DocumentInfo {
                source: r.get(0),
                sha256: r.get(1),
                chunks: r.get::<_, i32>(2) as usize,
            })
            .collect())
    }

    fn put_document(&mut self, source: &str, sha256: &str, chunks: &[NewChunk]) -> Result<()> {
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction().map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM rag_documents WHERE source = $1", &[&source])
            .map_err(|e| self.err(e))?;
        let doc: i64 = tx
            .query_one(
                "INSERT INTO rag_documents(source, sha256, chunks) VALUES ($1, $2, $3) RETURNING id",
                &[&source, &sha256, &(chunks.len() as i32)],
            )
            .map_err(|e| self.err(e))?
            .get(0);
        let ins = tx
            .prepare(
                "INSERT INTO rag_chunks(document, ordinal, start_byte, end_byte, text, embedding) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .map_err(|e| self.err(e))?;
        for (i, c) in chunks.iter().enumerate() {
            let mut v = c.embedding.clone();
            ferrollama_embed::normalize(&mut v);
            tx.execute(
                &ins,
                &[
                    &doc,
                    &(i as i32),
                    &(c.start as i64),
                    &(c.end as i64),
                    &c.text,
                    &v,
                ],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn remove_document(&mut self, source: &str) -> Result<()> {
        self.client
            .borrow_mut()
            .execute("DELETE FROM rag_documents WHERE source = $1", &[&source])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn nearest(&self, query: &[f32], k: usize) -> Result<Vec<(i64, f32)>> {
        if let Some(m) = self.meta()? {
            if m.dim != query.len() {
                return Err(Error::Store {
                    store: self.name.clone(),
                    msg: format!(
                        "a query of {} dimensions against vectors of {}",
                        query.len(),
                        m.dim
                    ),
                });
            }
        }
        let mut q = query.to_vec();
        ferrollama_embed::normalize(&mut q);
        // In double precision: PostgreSQL raises an error when a `real` product underflows.
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT id, score FROM (SELECT c.id, \
                   (SELECT sum(a::float8 * b::float8) FROM unnest(c.embedding, $1::real[]) AS t(a, b))::real AS score \
                   FROM rag_chunks c) s \
                 ORDER BY score DESC, id LIMIT $2",
                &[&q, &(k as i64)],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn matching(&self, query: &str, k: usize) -> Result<Vec<(i64, f32)>> {
        let words = query_words(query);
        if words.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        // Letters and digits only, so each word is a plain term of the query; any may match.
        let expr = words.join(" | ");
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT c.id, ts_rank_cd(c.words, q) AS score \
                 FROM rag_chunks c, to_tsquery('english', $1) q \
                 WHERE c.words @@ q ORDER BY score DESC, c.id LIMIT $2",
                &[&expr, &(k as i64)],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn chunks(&self, ids: &[i64]) -> Result<Vec<Chunk>> {
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT c.id, d.source, c.ordinal, c.start_byte, c.end_byte, c.text \
                 FROM rag_chunks c JOIN rag_documents d ON d.id = c.document \
                 WHERE c.id = ANY($1)",
                &[&ids],
            )
            .map_err(|e| self.err(e))?;
        let found: Vec<Chunk> = rows
            .iter()
            .map(|r| Chunk {
                id: r.get(0),
                source: r.get(1),
                ordinal: r.get::<_, i32>(2) as usize,
                start: r.get::<_, i64>(3) as usize,
                end: r.get::<_, i64>(4) as usize,
                text: r.get(5),
            })
            .collect();
        Ok(ids
            .iter()
            .filter_map(|id| found.iter().find(|c| c.id == *id).cloned())
            .collect())
    }

    fn stats(&self) -> Result<Stats> {
        let row = self
            .client
            .borrow_mut()
            .query_one(
                "SELECT (SELECT count(*) FROM rag_documents), (SELECT count(*) FROM rag_chunks)",
                &[],
            )
            .map_err(|e| self.err(e))?;
        Ok(Stats {
            documents: row.get::<_, i64>(0) as usize,
            chunks: row.get::<_, i64>(1) as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_left_out_of_messages() {
        assert_eq!(
            super::redact("postgres://me:secret@db.local:5432/rag"),
            "postgres://me@db.local:5432/rag"
        );
        assert_eq!(super::redact("postgres://db/rag"), "postgres://db/rag");
    }
}
