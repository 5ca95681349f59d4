//! The SQLite store without an encoder: the shared store behaviour, SQLite's own checks
//! after each step, and files that are not stores.

mod common;

use common::{chunk, meta};
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
