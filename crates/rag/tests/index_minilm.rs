//! Indexing real text with the real encoder (all-MiniLM-L6-v2, fetched on first use):
//! long documents cut into chunks that are their own bytes, search by meaning and by
//! words, and re-indexing that touches only what changed.

use std::path::{Path, PathBuf};

use ferrollama_embed::Embedder;
use ferrollama_rag::index::{index, ChunkOptions};
use ferrollama_rag::{search, Method, SqliteStore, Store};

fn embedder() -> Embedder {
    let dir = ferrollama_assets::default_embedding_model().expect("fetching all-MiniLM-L6-v2");
    Embedder::open(&dir).unwrap()
}

/// A long document: 60 different sentences about the solar system.
fn long_text() -> String {
    let planets = [
        "Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune",
    ];
    let facts = [
        "orbits the Sun once in a while, on a path that is nearly a circle",
        "has a surface that astronomers have mapped with telescopes and probes",
        "shows phases or bands that change over months of careful watching",
        "was visited by spacecraft that sent back pictures of its clouds and rocks",
        "has a day whose length differs a great deal from the length of its year",
        "keeps moons or rings that are studied to learn how it formed",
        "reflects sunlight, which is why it shines in the night sky",
        "is named after a god of the old Roman stories",
    ];
    let mut s = String::new();
    for i in 0..60 {
        s.push_str(&format!(
            "{} {}. ",
            planets[i % planets.len()],
            facts[(i / planets.len() + i) % facts.len()]
        ));
        if i % 10 == 9 {
            s.push_str("\n\n");
        }
    }
    s
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn index_search_and_reindex() {
    let e = embedder();
    let docs = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let long = long_text();
    write(docs.path(), "planets.txt", &long);
    write(
        docs.path(),
        "water.md",
        "Water boils at 100 degrees Celsius at sea level. At the top of a high mountain the air \
         pressure is lower, so water boils at a lower temperature there.",
    );
    write(
        docs.path(),
        "cells.txt",
        "Mitochondria are the organelles where cells turn sugar and oxygen into energy.",
    );
    std::fs::create_dir(docs.path().join(".hidden")).unwrap();
    write(&docs.path().join(".hidden"), "secret.txt", "never indexed");

    let mut store = SqliteStore::open(&db.path().join("s.db")).unwrap();
    let opts = ChunkOptions::default();
    let paths = vec![docs.path().to_path_buf()];
    let r = index(&mut store, &e, &paths, &opts, |_, _, _| {}).unwrap();
    assert_eq!((r.added, r.replaced, r.unchanged, r.removed), (3, 0, 0, 0));
    store.check().unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.documents, 3);
    // The long document (about 900 word pieces) is cut into several 128-piece chunks.
    let planets = store
        .documents()
        .unwrap()
        .into_iter()
        .find(|d| d.source.ends_with("planets.txt"))
        .unwrap();
    assert!(planets.chunks >= 7, "{} chunks", planets.chunks);
    assert_eq!(stats.chunks, planets.chunks + 2);
    // Each chunk is its document's own bytes, read back whole by the encoder.
    let all: Vec<i64> = (1..=stats.chunks as i64 + 10).collect();
    for c in store.chunks(&all).unwrap() {
        if c.source.ends_with("planets.txt") {
            assert_eq!(&long[c.start..c.end], c.text);
            assert!(e.token_ids(&c.text).unwrap().len() <= 130);
        }
    }

    // By meaning: no word of the query is in the answer's sentence but "water".
    let hits = search(
        &store,
        &e,
        "How hot must water get before it turns to steam?",
        Method::Dense,
        3,
    )
    .unwrap();
    assert!(hits[0].chunk.source.ends_with("water.md"), "{hits:?}");
    let hits = search(
        &store,
        &e,
        "Where do cells make their energy?",
        Method::Dense,
        1,
    )
    .unwrap();
    assert!(hits[0].chunk.source.ends_with("cells.txt"));
    // By words, and both.
    let hits = search(&store, &e, "mitochondria organelles", Method::Bm25, 3).unwrap();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].chunk.source.ends_with("cells.txt"));
    assert_eq!(hits[0].bm25_rank, Some(1));
    let hits = search(
        &store,
        &e,
        "boiling point of water on a mountain",
        Method::Hybrid,
        3,
    )
    .unwrap();
    assert!(hits[0].chunk.source.ends_with("water.md"));
    assert!(hits[0].dense_rank.is_some() && hits[0].bm25_rank.is_some());

    // Again: nothing changed, nothing embedded.
    let r = index(&mut store, &e, &paths, &opts, |_, _, _| {}).unwrap();
    assert_eq!((r.added, r.replaced, r.unchanged, r.chunks), (0, 0, 3, 0));
    // One changed, one gone, one binary: replaced, removed, skipped.
    write(
        docs.path(),
        "cells.txt",
        "Chloroplasts are where plant cells make sugar from light.",
    );
    std::fs::remove_file(docs.path().join("water.md")).unwrap();
    std::fs::write(docs.path().join("blob.bin"), [0u8, 159, 146, 150]).unwrap();
    let r = index(&mut store, &e, &paths, &opts, |_, _, _| {}).unwrap();
    assert_eq!((r.added, r.replaced, r.unchanged, r.removed), (0, 1, 1, 1));
    assert_eq!(r.skipped.len(), 1);
    assert!(r.skipped[0].0.ends_with("blob.bin"));
    assert!(search(&store, &e, "mitochondria", Method::Bm25, 3)
        .unwrap()
        .is_empty());
    assert_eq!(
        search(&store, &e, "chloroplasts", Method::Bm25, 3)
            .unwrap()
            .len(),
        1
    );
    store.check().unwrap();
    // Another chunk size: every document is cut again.
    let small = ChunkOptions {
        tokens: 32,
        overlap: 8,
        ..opts
    };
    let r = index(&mut store, &e, &paths, &small, |_, _, _| {}).unwrap();
    assert_eq!(r.replaced, 2);
    assert!(store.stats().unwrap().chunks > stats.chunks);
    store.check().unwrap();
}
