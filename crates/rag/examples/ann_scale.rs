//! The approximate index at a size where it matters: a SQLite store filled with N synthetic
//! 384-dimensional unit vectors in clusters (no encoder: the vectors are the point), then
//! the same queries (stored vectors, slightly moved) by exact scan and through the index at
//! several `nprobe`, alternating; recall@10 against the exact answer and ms per query.
//!
//!     cargo run --release -p ferrollama-rag --example ann_scale -- [N] [QUERIES]
//!
//! Prints a table and one JSON line. The timings include SQLite's reads (the index reads only
//! the probed lists' rows; the exact scan holds every vector in memory after its first query).

use std::time::Instant;

use ferrollama_embed::cluster::SplitMix;
use ferrollama_rag::store::NewChunk;
use ferrollama_rag::{SqliteStore, Store, StoreMeta};

/// Uniform in [-1, 1) from the project's seeded generator.
struct Rng(SplitMix);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0.unit() as f32 * 2.0 - 1.0
    }
}

fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let queries: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let dim = 384;
    let dir = tempfile::tempdir()?;
    let mut store = SqliteStore::open(&dir.path().join("scale.db"))?;
    store.set_meta(&StoreMeta {
        model: "synthetic".into(),
        dim,
        chunk_tokens: 128,
        overlap: 32,
    })?;
    let mut rng = Rng(SplitMix(42));
    let clusters = 2000;
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| rng.next()).collect())
        .collect();
    let vector = |rng: &mut Rng, i: usize| {
        let mut v: Vec<f32> = centres[i % clusters]
            .iter()
            .map(|c| c + 1.2 * rng.next())
            .collect();
        unit(&mut v);
        v
    };
    let t = Instant::now();
    let per_doc = 100;
    let mut kept = Vec::new();
    for d in 0..n.div_ceil(per_doc) {
        let chunks: Vec<NewChunk> = (0..per_doc.min(n - d * per_doc))
            .map(|j| {
                let i = d * per_doc + j;
                let v = vector(&mut rng, i);
                if i % (n / queries).max(1) == 0 && kept.len() < queries {
                    kept.push(v.clone());
                }
                NewChunk {
                    start: 0,
                    end: 1,
                    text: format!("chunk {i}"),
                    embedding: v,
                }
            })
            .collect();
        store.put_document(&format!("doc{d}"), "h", &chunks)?;
    }
    let fill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let lists = store.build_ann(None)?;
    let build = t.elapsed().as_secs_f64();
    // The queries: stored vectors moved a little.
    let qs: Vec<Vec<f32>> = kept
        .iter()
        .map(|v| {
            let mut q: Vec<f32> = v.iter().map(|x| x + 0.02 * rng.next()).collect();
            unit(&mut q);
            q
        })
        .collect();
    store.set_search(true, None);
    let truth: Vec<Vec<i64>> = qs
        .iter()
        .map(|q| {
            store
                .nearest(q, 10)
                .map(|h| h.into_iter().map(|x| x.0).collect())
        })
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    let probes = [8, (lists / 8).max(8), lists / 4];
    let mut exact_ms = Vec::new();
    let mut ann_ms = vec![Vec::new(); probes.len()];
    let mut recall = vec![0usize; probes.len()];
    for round in 0..2 {
        store.set_search(true, None);
        let t = Instant::now();
        for q in &qs {
            store.nearest(q, 10)?;
        }
        exact_ms.push(t.elapsed().as_secs_f64() * 1e3 / qs.len() as f64);
        for (p, &nprobe) in probes.iter().enumerate() {
            store.set_search(false, Some(nprobe));
            let t = Instant::now();
            for (q, want) in qs.iter().zip(&truth) {
                let got = store.nearest(q, 10)?;
                if round == 0 {
                    recall[p] += got.iter().filter(|g| want.contains(&g.0)).count();
                }
            }
            ann_ms[p].push(t.elapsed().as_secs_f64() * 1e3 / qs.len() as f64);
        }
    }
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    println!("{n} chunks of {dim} dims in {clusters} clusters; filled in {fill:.1} s; index of {lists} lists built in {build:.1} s; {} queries, best of 2 alternated rounds", qs.len());
    println!("| search | recall@10 | ms/query |\n|---|---:|---:|");
    println!("| exact | 1.000 | {:.2} |", best(&exact_ms));
    for (p, &nprobe) in probes.iter().enumerate() {
        let r = recall[p] as f64 / (10 * qs.len()) as f64;
        println!("| ivf nprobe {nprobe} | {r:.3} | {:.2} |", best(&ann_ms[p]));
        rows.push(serde_json::json!({"nprobe": nprobe, "recall_at_10": r, "ms_per_query": best(&ann_ms[p])}));
    }
    println!(
        "{}",
        serde_json::json!({"chunks": n, "dim": dim, "lists": lists, "build_s": build,
                           "exact_ms_per_query": best(&exact_ms), "ivf": rows})
    );
    Ok(())
}
