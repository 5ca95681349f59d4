//! A scratch directory for targets whose parser reads files (a checkpoint directory, an
//! adapter): one per process and thread, emptied before each input, removed by nobody (the
//! fuzzer runs millions of inputs; creating a directory each time would dominate). Memory-
//! backed `/dev/shm` when there is one.

use std::path::{Path, PathBuf};

/// An empty directory for the current input.
pub fn dir() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!(
        "ferrollama-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    if let Ok(entries) = std::fs::read_dir(&d) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    } else {
        std::fs::create_dir_all(&d).expect("creating the fuzz scratch directory");
    }
    d
}

/// Writes `files` (name, bytes) into a fresh scratch directory; empty parts are left out,
/// so an input can stand for a directory that lacks a file.
pub fn write(files: &[(&str, &[u8])]) -> PathBuf {
    let d = dir();
    for (name, bytes) in files {
        if !bytes.is_empty() {
            std::fs::write(d.join(name), bytes).expect("writing a fuzz scratch file");
        }
    }
    d
}
