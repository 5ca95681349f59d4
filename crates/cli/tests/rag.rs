//! `ferrollama rag` end to end: index, search, eval and ask, bad stores, and an index run
//! killed with SIGKILL again and again, each time leaving a store that opens, passes
//! SQLite's checks and holds every committed document whole, then finishing as an
//! uninterrupted run does.

use std::path::Path;
use std::process::Command;

use ferrollama_rag::{SqliteStore, Store};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrollama"))
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `n` short documents, each about its own made-up animal, and a few long ones.
fn corpus(dir: &Path, n: usize) {
    let colours = ["red", "green", "blue", "yellow", "purple", "orange", "grey"];
    for i in 0..n {
        let text = format!(
            "The animal number {i} is called the {c}-{i} beast. It lives in valley {v} and eats \
             {f} seeds every morning. Its fur is {c}, and it sleeps {h} hours a day.",
            c = colours[i % colours.len()],
            v = i * 7 % 31,
            f = ["sunflower", "pumpkin", "poppy", "sesame"][i % 4],
            h = 8 + i % 9,
        );
        std::fs::write(dir.join(format!("doc{i:03}.txt")), text).unwrap();
    }
    for j in 0..3 {
        let text: String = (0..80)
            .map(|s| format!("Long record {j} sentence {s} tells of the weather on day {s}. "))
            .collect();
        std::fs::write(dir.join(format!("long{j}.txt")), text).unwrap();
    }
}

/// Every document's chunks, by source: (ordinal, start, end, text, embedding).
type Contents = Vec<(String, Vec<(usize, usize, usize, String)>)>;

fn contents(db: &Path) -> Contents {
    let s = SqliteStore::open(db).unwrap();
    s.check().unwrap();
    let stats = s.stats().unwrap();
    let all: Vec<i64> = (1..=(stats.chunks as i64) * 20).collect();
    let chunks = s.chunks(&all).unwrap();
    s.documents()
        .unwrap()
        .into_iter()
        .map(|d| {
            let mut cs: Vec<_> = chunks
                .iter()
                .filter(|c| c.source == d.source)
                .map(|c| (c.ordinal, c.start, c.end, c.text.clone()))
                .collect();
            cs.sort();
            assert_eq!(cs.len(), d.chunks, "{}", d.source);
            (d.source, cs)
        })
        .collect()
}

#[test]
fn index_killed_at_random_points_keeps_what_it_committed_and_resumes() {
    let docs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    corpus(docs.path(), 150);
    let index = |db: &Path| {
        let mut c = bin();
        c.args(["rag", "index", "--batch", "2", "--db"])
            .arg(db)
            .arg(docs.path());
        c
    };
    let reference_db = work.path().join("reference.db");
    let started = std::time::Instant::now();
    ok(&mut index(&reference_db));
    let full = started.elapsed();
    let reference = contents(&reference_db);
    assert_eq!(reference.len(), 153);

    // Each round indexes afresh and is killed at a time spread over a whole run (model
    // loading, embedding, commits), drawn from a seeded generator so that a failure can be
    // replayed; the last store a kill left half-built is then finished.
    let db = work.path().join("killed.db");
    let partial = work.path().join("partial.db");
    let mut x: u64 = 0x5EED;
    let mut seen = Vec::new();
    for _ in 0..8 {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = full.mul_f64(0.1 + 0.85 * ((x >> 33) as f64 / (1u64 << 31) as f64));
        let mut child = index(&db)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if !db.exists() {
            seen.push(0);
            continue;
        }
        // What was committed is whole and equal to the reference's.
        let now = contents(&db);
        for (source, chunks) in &now {
            let r = reference.iter().find(|r| &r.0 == source).unwrap();
            assert_eq!(&r.1, chunks, "{source}");
        }
        seen.push(now.len());
        if !now.is_empty() && now.len() < reference.len() {
            for suffix in ["", "-wal", "-shm"] {
                let from = format!("{}{suffix}", db.display());
                if Path::new(&from).exists() {
                    std::fs::copy(&from, format!("{}{suffix}", partial.display())).unwrap();
                }
            }
        }
    }
    assert!(
        partial.exists(),
        "no kill landed mid-run: documents after each kill {seen:?}"
    );
    let out = index(&partial).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(" unchanged"), "{stderr}");
    assert_eq!(contents(&partial), reference);
}

#[test]
fn search_eval_and_ask_from_the_command_line() {
    let docs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    corpus(docs.path(), 12);
    let db = work.path().join("s.db");
    let dbs = db.to_str().unwrap();

    // Asking an empty store is an error that says what to do.
    let out = bin()
        .args(["rag", "ask", "--db", dbs, "anything?"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rag index"));

    ok(bin()
        .args(["rag", "index", "--ann", "--db", dbs])
        .arg(docs.path()));
    let out = ok(bin().args([
        "rag",
        "search",
        "--db",
        dbs,
        "--json",
        "-k",
        "2",
        "the purple-4 beast",
    ]));
    let hits: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), 2);
    assert!(
        hits[0]["source"].as_str().unwrap().ends_with("doc004.txt"),
        "{hits:?}"
    );
    assert!(hits[0]["text"].as_str().unwrap().contains("purple-4"));

    // Recall on questions whose sources are known.
    let q = work.path().join("q.jsonl");
    let lines: String = [(4, "purple-4"), (9, "yellow-9"), (11, "purple-11")]
        .iter()
        .map(|(i, name)| {
            format!(
                "{}\n",
                serde_json::json!({
                    "question": format!("Where does the {name} beast live?"),
                    "source": docs.path().join(format!("doc{i:03}.txt")),
                })
            )
        })
        .collect();
    std::fs::write(&q, lines).unwrap();
    let out = ok(bin()
        .args(["rag", "eval", "--db", dbs, "--json", "--questions"])
        .arg(&q));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["questions"], 3);
    // Built by --ann: 48 chunks, 7 lists (about the square root), all probed by default
    // (at least 8).
    assert_eq!(r["dense_search"]["approximate"]["lists"], 7, "{r}");
    assert_eq!(r["methods"]["bm25"]["recall@5"], 1.0, "{r}");
    assert_eq!(r["methods"]["hybrid"]["recall@5"], 1.0, "{r}");

    // The chat model answers with the sources before the question; they are returned.
    let out = ok(bin().args([
        "rag",
        "ask",
        "--db",
        dbs,
        "--json",
        "-k",
        "2",
        "-n",
        "12",
        "--temperature",
        "0",
        "What does the green-8 beast eat?",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sources"].as_array().unwrap().len(), 2);
    assert!(
        v["sources"][0]["text"]
            .as_str()
            .unwrap()
            .contains("green-8"),
        "{v}"
    );
    assert!(!v["answer"].as_str().unwrap().is_empty());

    // A file that is not a store is refused and left alone.
    let junk = work.path().join("junk.db");
    std::fs::write(&junk, "not a database ".repeat(100)).unwrap();
    let out = bin()
        .args(["rag", "search", "--db"])
        .arg(&junk)
        .arg("x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.db"));
    assert!(std::fs::read_to_string(&junk)
        .unwrap()
        .starts_with("not a database"));
}
