//! Time per execution of each fuzz target on its seeds (no sanitizer), to find targets
//! too slow to reach the fuzzing budget: `cargo run --release -p ferrollama-fuzzing
//! --example time_targets [-- TARGET [DIR]]`; DIR holds one folder per target (default:
//! the seeds; `fuzz/corpus` times what a campaign actually runs).

use std::time::Instant;

fn main() {
    ferrollama_fuzzing::run_parallel_loops_inline();
    let only = std::env::args().nth(1).filter(|t| t != "all");
    let root = std::env::args().nth(2).map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"),
        std::path::PathBuf::from,
    );
    for t in ferrollama_fuzzing::TARGETS {
        if only.as_deref().is_some_and(|o| o != t.name) {
            continue;
        }
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(root.join(t.name))
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        seeds.sort();
        for s in &seeds {
            ferrollama_fuzzing::run(t.name, s); // warm caches (vocabularies, models)
        }
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed().as_secs_f64() < 2.0 {
            for s in &seeds {
                ferrollama_fuzzing::run(t.name, s);
                n += 1;
            }
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        println!(
            "{:16} {:>9.1} us/exec on its {} inputs",
            t.name,
            us,
            seeds.len()
        );
    }
}
