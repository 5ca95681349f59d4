//! The SQLite store without an encoder: the shared store behaviour, SQLite's own checks
//! after each step, and files that are not stores.

mod common;

use common::{chunk, meta};
use ferrollama_rag::store::NewChunk;
use ferrollama_rag::{SqliteStore, Store};

#[test]
fn put_replace_remove_search_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    common::conformance(&|| Box::new(SqliteStore::open(&path).unwrap()));
    SqliteStore::open(&path).unwrap().check().unwrap();
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

/// The approximate index: probing every list is the exact scan; chunks added after the
/// build join a list and are found; the index survives a reopen; another encoder in an
/// emptied store drops it; an empty store cannot have one.
#[test]
fn the_approximate_index_agrees_with_the_exact_scan_when_it_probes_every_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ann.db");
    let mut s = SqliteStore::open(&path).unwrap();
    let dim = 8;
    s.set_meta(&ferrollama_rag::StoreMeta {
        dim,
        ..meta("enc", dim)
    })
    .unwrap();
    assert!(s.build_ann(None).is_err(), "an empty store got an index");
    let mut x: u64 = 7;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let mut vec = move || (0..dim).map(|_| next()).collect::<Vec<f32>>();
    let doc = |d: usize, vecs: &mut dyn FnMut() -> Vec<f32>| -> Vec<NewChunk> {
        (0..20)
            .map(|j| NewChunk {
                start: 0,
                end: 1,
                text: format!("doc {d} chunk {j}"),
                embedding: vecs(),
            })
            .collect()
    };
    for d in 0..15 {
        s.put_document(&format!("d{d}"), "h", &doc(d, &mut vec))
            .unwrap();
    }
    assert_eq!(s.build_ann(Some(12)).unwrap(), 12);
    assert_eq!(s.ann_lists().unwrap(), Some(12));
    // Added after the build: assigned to lists as they come.
    s.put_document("late", "h", &doc(99, &mut vec)).unwrap();
    let queries: Vec<Vec<f32>> = (0..20).map(|_| vec()).collect();
    let search =
        |s: &mut SqliteStore, exact: bool, nprobe: Option<usize>| -> Vec<Vec<(i64, f32)>> {
            s.set_search(exact, nprobe);
            queries.iter().map(|q| s.nearest(q, 5).unwrap()).collect()
        };
    let exact = search(&mut s, true, None);
    assert_eq!(search(&mut s, false, Some(12)), exact);
    // A query of another width is an error through the index too (the 12 x 8 centroid
    // values divide evenly by 4, so only the width check catches it).
    s.set_search(false, None);
    assert!(s.nearest(&[1.0, 0.0, 0.0, 0.0], 3).is_err());
    let few = search(&mut s, false, Some(2));
    let overlap: usize = few
        .iter()
        .zip(&exact)
        .map(|(f, e)| f.iter().filter(|x| e.iter().any(|y| y.0 == x.0)).count())
        .sum();
    // Two lists of twelve: most true neighbours, not all of them.
    assert!(overlap > 0 && overlap < 100, "{overlap}");
    s.check().unwrap();
    drop(s);
    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.ann_lists().unwrap(), Some(12));
    assert_eq!(search(&mut s, false, Some(12)), exact);
    // Emptied and given another encoder: the old centroids go.
    for d in 0..15 {
        s.remove_document(&format!("d{d}")).unwrap();
    }
    s.remove_document("late").unwrap();
    s.set_meta(&meta("other", 3)).unwrap();
    assert_eq!(s.ann_lists().unwrap(), None);
    s.put_document("a", "h", &[chunk("x", [1.0, 0.0, 0.0])])
        .unwrap();
    assert_eq!(s.nearest(&[1.0, 0.0, 0.0], 1).unwrap().len(), 1);
}
