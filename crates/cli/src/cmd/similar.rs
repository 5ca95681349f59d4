//! `ferrollama similar`: texts compared by their embeddings: each text's nearest
//! neighbours by cosine, the whole cosine matrix, or k-means clusters (as the sources
//! cluster a list of questions).

use std::io::Write;

use anyhow::Result;
use ferrollama_embed::cluster::{kmeans, nearest};

use crate::cmd::embed::Inputs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub inputs: Inputs,
    /// Neighbours listed per text.
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    /// Print the cosine matrix (a JSON list of rows) instead of neighbours.
    #[arg(long)]
    pub matrix: bool,
    /// Group the texts into this many clusters (spherical k-means) instead.
    #[arg(long)]
    pub clusters: Option<usize>,
    /// The seed of the clustering's k-means++ start.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    let texts = a.inputs.texts()?;
    let e = a.inputs.embedder()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vectors = e.embed(&refs, a.inputs.batch)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if a.matrix {
        let rows: Vec<Vec<f32>> = vectors
            .iter()
            .map(|v| {
                vectors
                    .iter()
                    .map(|w| ferrollama_embed::cosine(v, w))
                    .collect()
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string(&rows)?)?;
        return Ok(out.flush()?);
    }
    if let Some(k) = a.clusters {
        if k == 0 {
            anyhow::bail!("--clusters must be at least 1");
        }
        let c = kmeans(&vectors, k, a.seed);
        for (t, cluster) in texts.iter().zip(&c.assignment) {
            writeln!(
                out,
                "{}",
                serde_json::json!({"text": t, "cluster": cluster})
            )?;
        }
        out.flush()?;
        for cluster in 0..c.centroids.len() {
            let members: Vec<&str> = texts
                .iter()
                .zip(&c.assignment)
                .filter(|(_, &x)| x == cluster)
                .map(|(t, _)| t.as_str())
                .collect();
            eprintln!(
                "cluster {cluster} ({} texts): {}",
                members.len(),
                members.join(" | ")
            );
        }
        eprintln!("k-means settled after {} iterations", c.iterations);
        return Ok(());
    }
    for (i, t) in texts.iter().enumerate() {
        let n: Vec<serde_json::Value> = nearest(&vectors, i, a.top)
            .into_iter()
            .map(|(j, c)| serde_json::json!({"text": texts[j], "cosine": c}))
            .collect();
        writeln!(out, "{}", serde_json::json!({"text": t, "neighbours": n}))?;
    }
    Ok(out.flush()?)
}
