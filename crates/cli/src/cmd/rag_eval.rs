//! `ferrollama rag eval`: how often each retrieval method puts a chunk of a question's
//! own source among its first k, on questions whose sources are known.

use std::io::Write;

use anyhow::Result;
use ferrollama_rag::{search_embedded, Hit, Method};

use super::rag::{read_questions, EvalArgs};

const METHODS: [Method; 3] = [Method::Dense, Method::Bm25, Method::Hybrid];

pub fn run(a: EvalArgs) -> Result<()> {
    let questions = read_questions(&a.questions)?;
    if questions.is_empty() {
        anyhow::bail!("{}: no questions", a.questions.display());
    }
    if a.k.is_empty() || a.k.contains(&0) {
        anyhow::bail!("--k takes positive numbers");
    }
    let (store, embedder) = a.store.open()?;
    ferrollama_rag::check_encoder(store.as_ref(), &embedder)?;
    let stats = ferrollama_store_stats(store.as_ref())?;
    let depth = *a.k.iter().max().unwrap_or(&1);
    let started = std::time::Instant::now();
    let texts: Vec<&str> = questions.iter().map(|q| q.0.as_str()).collect();
    let vectors = embedder.embed(&texts, 32)?;
    let embed_secs = started.elapsed().as_secs_f64();

    // Per method: the rank of the first chunk from a gold source, per question.
    let mut found: Vec<Vec<Option<usize>>> = Vec::new();
    let mut secs = Vec::new();
    let mut lists: Vec<Vec<Vec<Hit>>> = Vec::new();
    for method in METHODS {
        let t = std::time::Instant::now();
        let mut ranks = Vec::with_capacity(questions.len());
        let mut hits_all = Vec::new();
        for ((q, gold), v) in questions.iter().zip(&vectors) {
            let hits = search_embedded(store.as_ref(), q, v, method, depth)?;
            ranks.push(
                hits.iter()
                    .position(|h| gold.contains(&h.chunk.source))
                    .map(|p| p + 1),
            );
            if a.retrieved.is_some() {
                hits_all.push(hits);
            }
        }
        secs.push(t.elapsed().as_secs_f64());
        found.push(ranks);
        lists.push(hits_all);
    }
    if let Some(path) = &a.retrieved {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (i, (q, gold)) in questions.iter().enumerate() {
            let mut v = serde_json::json!({"question": q, "sources": gold});
            for (m, method) in METHODS.iter().enumerate() {
                v[serde_json::to_value(method)?.as_str().unwrap_or("?")] =
                    serde_json::to_value(&lists[m][i])?;
            }
            writeln!(f, "{v}")?;
        }
        f.flush()?;
    }

    let n = questions.len() as f64;
    let recall = |ranks: &[Option<usize>], k: usize| {
        ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / n
    };
    let mrr = |ranks: &[Option<usize>]| {
        ranks
            .iter()
            .map(|r| r.map_or(0.0, |r| 1.0 / r as f64))
            .sum::<f64>()
            / n
    };
    let mut results = serde_json::Map::new();
    for (m, method) in METHODS.iter().enumerate() {
        let mut r = serde_json::Map::new();
        for &k in &a.k {
            r.insert(format!("recall@{k}"), recall(&found[m], k).into());
        }
        r.insert(format!("mrr@{depth}"), mrr(&found[m]).into());
        r.insert("queries_per_s".into(), (n / secs[m].max(1e-9)).into());
        results.insert(
            serde_json::to_value(method)?.as_str().unwrap_or("?").into(),
            r.into(),
        );
    }
    let report = serde_json::json!({
        "questions": questions.len(),
        "store": {"documents": stats.0, "chunks": stats.1},
        "embedding_model": embedder.name(),
        "dense_search": match (a.store.exact, store.ann_lists()?) {
            (false, Some(lists)) => serde_json::json!({"approximate": {"lists": lists, "nprobe": a.store.nprobe.unwrap_or((lists / 8).max(8))}}),
            _ => serde_json::json!("exact"),
        },
        "question_embedding_s": embed_secs,
        "methods": results,
    });
    if a.json {
        println!("{report}");
        return Ok(());
    }
    let mut head = String::from("| method |");
    let mut rule = String::from("|---|");
    for &k in &a.k {
        head.push_str(&format!(" recall@{k} |"));
        rule.push_str("---:|");
    }
    head.push_str(&format!(" MRR@{depth} | queries/s |"));
    rule.push_str("---:|---:|");
    println!(
        "{} questions, {} documents in {} chunks, encoder {}",
        questions.len(),
        stats.0,
        stats.1,
        embedder.name()
    );
    println!("{head}\n{rule}");
    for (m, method) in METHODS.iter().enumerate() {
        let mut row = format!(
            "| {} |",
            serde_json::to_value(method)?.as_str().unwrap_or("?")
        );
        for &k in &a.k {
            row.push_str(&format!(" {:.3} |", recall(&found[m], k)));
        }
        row.push_str(&format!(
            " {:.3} | {:.0} |",
            mrr(&found[m]),
            n / secs[m].max(1e-9)
        ));
        println!("{row}");
    }
    Ok(())
}

fn ferrollama_store_stats(store: &dyn ferrollama_rag::Store) -> Result<(usize, usize)> {
    let s = store.stats()?;
    Ok((s.documents, s.chunks))
}
