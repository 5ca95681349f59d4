//! The PostgreSQL store: the shared store behaviour against a real server. Needs one:
//! `scripts/test-postgres-store.sh` starts a private PostgreSQL (Debian's) on the loopback
//! address and runs these with `FERROLLAMA_TEST_POSTGRES` set to its URL; CI runs it.

mod common;

use ferrollama_rag::{PostgresStore, Store};

fn url() -> String {
    std::env::var("FERROLLAMA_TEST_POSTGRES")
        .expect("FERROLLAMA_TEST_POSTGRES: run scripts/test-postgres-store.sh")
}

/// Drops the store's tables, so that a test starts from an empty database.
fn reset(url: &str) {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.batch_execute("DROP TABLE IF EXISTS rag_chunks, rag_documents, rag_meta")
        .unwrap();
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test-postgres-store.sh"]
fn postgres_store_behaves_as_every_store() {
    let url = url();
    reset(&url);
    common::conformance(&|| Box::new(PostgresStore::connect(&url).unwrap()));
    // A wrong password or database is a clear error naming the store without secrets.
    let bad = url.replace("ferrollama_test", "no_such_database");
    let e = PostgresStore::connect(&bad)
        .err()
        .expect("connected")
        .to_string();
    assert!(e.contains("no_such_database"), "{e}");
    let mut s = PostgresStore::connect(&url).unwrap();
    assert_eq!(s.stats().unwrap().chunks, 0);
    // No approximate index here (no pgvector in the registries): said, not pretended.
    let e = s.build_ann(None).unwrap_err().to_string();
    assert!(e.contains("exact"), "{e}");
}
