//! The SQLite store without an encoder: documents replaced and removed whole, exact
//! nearest neighbours, BM25 with stemming, what survives a reopen, and files that are
//! not stores.

use ferrollama_rag::store::NewChunk;
use ferrollama_rag::{SqliteStore, Store, StoreMeta};

fn meta(model: &str, dim: usize) -> StoreMeta {
    StoreMeta {
        model: model.into(),
        dim,
        chunk_tokens: 128,
        overlap: 32,
    }
}

fn chunk(text: &str, v: [f32; 3]) -> NewChunk {
    NewChunk {
        start: 0,
        end: text.len(),
        text: text.into(),
        embedding: v.to_vec(),
    }
}

#[test]
fn put_replace_remove_search_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let mut s = SqliteStore::open(&path).unwrap();
        assert!(s.meta().unwrap().is_none());
        s.set_meta(&meta("enc", 3)).unwrap();
        s.put_document(
            "a.txt",
            "h1",
            &[
                chunk("Water boils at one hundred degrees.", [1.0, 0.0, 0.0]),
                chunk("Ice melts when it is warmed.", [0.0, 1.0, 0.0]),
            ],
        )
        .unwrap();
        s.put_document(
            "b.txt",
            "h2",
            &[chunk(
                "Photosynthesis makes sugar from light.",
                [0.0, 0.0, 2.0],
            )],
        )
        .unwrap();
        assert_eq!(s.stats().unwrap().chunks, 3);
        // Nearest by cosine: the length of a stored vector does not matter.
        let n = s.nearest(&[0.1, 0.0, 1.0], 2).unwrap();
        let texts: Vec<String> = s
            .chunks(&n.iter().map(|x| x.0).collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|c| c.text)
            .collect();
        assert_eq!(texts[0], "Photosynthesis makes sugar from light.");
        assert!((n[0].1 - 1.0 / 1.01f32.sqrt()).abs() < 1e-6);
        // BM25 with Porter stemming: "boiling" finds "boils"; FTS5 syntax is not syntax.
        let m = s.matching("boiling water? NEAR(\"x\" OR", 5).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(s.chunks(&[m[0].0]).unwrap()[0].source, "a.txt");
        assert!(m[0].1 > 0.0);
        assert!(s.matching("?!", 5).unwrap().is_empty());
        // Replacing a document drops its old chunks from both indexes.
        s.put_document(
            "a.txt",
            "h3",
            &[chunk("Steam is water as a gas.", [1.0, 1.0, 0.0])],
        )
        .unwrap();
        assert!(s.matching("boils", 5).unwrap().is_empty());
        assert_eq!(s.matching("steam", 5).unwrap().len(), 1);
        assert_eq!(s.nearest(&[1.0, 0.0, 0.0], 10).unwrap().len(), 2);
        s.check().unwrap();
    }
    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.meta().unwrap().unwrap(), meta("enc", 3));
    let docs = s.documents().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!((docs[0].sha256.as_str(), docs[0].chunks), ("h3", 1));
    // Another encoder is refused while chunks are stored.
    let e = s.set_meta(&meta("other", 3)).unwrap_err().to_string();
    assert!(e.contains("enc") && e.contains("other"), "{e}");
    s.remove_document("a.txt").unwrap();
    s.remove_document("b.txt").unwrap();
    assert_eq!(s.stats().unwrap().chunks, 0);
    assert!(s.matching("steam", 5).unwrap().is_empty());
    assert!(s.nearest(&[1.0, 0.0, 0.0], 3).unwrap().is_empty());
    s.check().unwrap();
    // Empty, it takes another encoder.
    s.set_meta(&meta("other", 3)).unwrap();
}

#[test]
fn a_query_of_the_wrong_length_and_files_that_are_not_stores() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut s = SqliteStore::open(&path).unwrap();
    s.set_meta(&meta("enc", 3)).unwrap();
    s.put_document("a", "h", &[chunk("x y", [1.0, 0.0, 0.0])])
        .unwrap();
    assert!(s.nearest(&[1.0, 0.0], 1).is_err());
    drop(s);

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"this is not a database, it is text".repeat(200)).unwrap();
    let e = SqliteStore::open(&junk)
        .err()
        .expect("junk opened")
        .to_string();
    assert!(e.contains("junk.db"), "{e}");
    // The junk is left as it was.
    assert!(std::fs::read(&junk).unwrap().starts_with(b"this is not"));

    // A truncated store: a clear error (or, if SQLite can read what is left, a store
    // whose checks say what is wrong), never a panic.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.db");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    if let Ok(s) = SqliteStore::open(&cut) {
        let _ = s.check();
        let _ = s.nearest(&[1.0, 0.0, 0.0], 1);
    }
}
