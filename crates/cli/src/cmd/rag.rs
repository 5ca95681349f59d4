//! `ferrollama rag`: retrieval-augmented generation. `index` cuts files into chunks,
//! embeds them and keeps them in a store; `search` finds chunks; `ask` has the chat model
//! answer from the chunks found and cite them; `eval` measures retrieval on questions
//! whose source documents are known.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrollama_embed::Embedder;
use ferrollama_rag::index::{self, ChunkOptions};
use ferrollama_rag::{Hit, Method, Store};

use crate::args::{ModelArgs, SamplingArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: RagCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum RagCommand {
    /// Index files and directories (text files, UTF-8) into the store: new and changed
    /// files are chunked and embedded, unchanged ones skipped, vanished ones removed.
    Index(IndexArgs),
    /// The chunks that best match a query.
    Search(SearchArgs),
    /// Answer a question from the chunks found, citing them as [1], [2], ...
    Ask(AskArgs),
    /// Recall@k of dense, BM25 and hybrid retrieval on questions with known sources.
    Eval(EvalArgs),
}

/// The store and its encoder.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// The store: a SQLite file (created when absent), or a PostgreSQL database as
    /// `postgres://user[:password]@host[:port]/database` (tables created when absent).
    #[arg(long)]
    pub db: String,
    /// The sentence encoder (a sentence-transformers directory; default all-MiniLM-L6-v2,
    /// fetched on first use). A store is searched with the encoder that indexed it.
    #[arg(long)]
    pub embedding_model: Option<PathBuf>,
    /// Search exactly even when the store has an approximate index.
    #[arg(long)]
    pub exact: bool,
    /// Lists the approximate index probes per query (default: an eighth of them, at
    /// least 8); more is slower and closer to exact.
    #[arg(long)]
    pub nprobe: Option<usize>,
}

impl StoreArgs {
    pub fn open(&self) -> Result<(Box<dyn Store + Send>, Embedder)> {
        let mut store = ferrollama_rag::open_store(&self.db)?;
        store.set_search(self.exact, self.nprobe);
        let dir = match &self.embedding_model {
            Some(d) => d.clone(),
            None => ferrollama_assets::default_embedding_model()?,
        };
        Ok((store, Embedder::open(&dir)?))
    }
}

#[derive(clap::Args, Debug)]
pub struct IndexArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Word pieces per chunk at most.
    #[arg(long, default_value_t = 128)]
    pub chunk_tokens: usize,
    /// Word pieces shared by consecutive chunks, about.
    #[arg(long, default_value_t = 32)]
    pub overlap: usize,
    /// Chunks per forward pass of the encoder.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Then build (or rebuild) the approximate index for dense search (an inverted file:
    /// k-means lists; SQLite stores). Chunks added later join their nearest list; rebuild
    /// when the store has grown a lot.
    #[arg(long)]
    pub ann: bool,
    /// The approximate index's lists (default: about the square root of the chunks).
    #[arg(long, requires = "ann")]
    pub lists: Option<usize>,
    /// Files and directories (walked; names starting with `.` left out).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// dense (embeddings), bm25 (words) or hybrid (both, fused by reciprocal rank).
    #[arg(long, default_value = "hybrid")]
    pub method: Method,
    /// Chunks to return.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    /// One JSON line per chunk instead of a table.
    #[arg(long)]
    pub json: bool,
    pub query: String,
}

#[derive(clap::Args, Debug)]
pub struct AskArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[arg(long, default_value = "hybrid")]
    pub method: Method,
    /// Chunks given to the model.
    #[arg(short, long, default_value_t = 4)]
    pub k: usize,
    /// Most tokens in the answer.
    #[arg(short = 'n', long, default_value_t = 256)]
    pub max_tokens: usize,
    /// The answer and its sources as one JSON object.
    #[arg(long)]
    pub json: bool,
    pub question: String,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// JSON Lines: `question` and `sources` (a list, or `source`: one) naming the
    /// documents that answer it (paths, as indexed).
    #[arg(long)]
    pub questions: PathBuf,
    /// The k of recall@k (comma-separated).
    #[arg(long, default_value = "1,5", value_delimiter = ',')]
    pub k: Vec<usize>,
    /// Also write, per question, the chunks each method found (JSON Lines).
    #[arg(long)]
    pub retrieved: Option<PathBuf>,
    /// The results as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        RagCommand::Index(a) => run_index(a),
        RagCommand::Search(a) => run_search(a),
        RagCommand::Ask(a) => super::rag_ask::run(a),
        RagCommand::Eval(a) => super::rag_eval::run(a),
    }
}

fn run_index(a: IndexArgs) -> Result<()> {
    let (mut store, embedder) = a.store.open()?;
    let opts = ChunkOptions {
        tokens: a.chunk_tokens,
        overlap: a.overlap,
        batch: a.batch,
    };
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = index::index(store.as_mut(), &embedder, &a.paths, &opts, |i, n, _| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    if a.ann {
        let t = std::time::Instant::now();
        let lists = store.build_ann(a.lists)?;
        eprintln!(
            "approximate index: {lists} lists, built in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    for (source, why) in &report.skipped {
        eprintln!("skipped {source}: {why}");
    }
    let stats = store.stats()?;
    eprintln!(
        "{}: {} added, {} replaced, {} unchanged, {} removed; {} chunks embedded in {:.1} s; \
         the store holds {} documents, {} chunks",
        store.describe(),
        report.added,
        report.replaced,
        report.unchanged,
        report.removed,
        report.chunks,
        started.elapsed().as_secs_f64(),
        stats.documents,
        stats.chunks
    );
    Ok(())
}

fn run_search(a: SearchArgs) -> Result<()> {
    let (store, embedder) = a.store.open()?;
    let hits = ferrollama_rag::search(store.as_ref(), &embedder, &a.query, a.method, a.k)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        for h in &hits {
            writeln!(out, "{}", serde_json::to_string(h)?)?;
        }
        return Ok(());
    }
    if hits.is_empty() {
        eprintln!(
            "nothing found (the store holds {} chunks)",
            store.stats()?.chunks
        );
    }
    for (i, h) in hits.iter().enumerate() {
        writeln!(out, "{}", describe_hit(i + 1, h))?;
    }
    Ok(())
}

/// `[n] source #ordinal (bytes a-b) score` and the chunk's text on one line, shortened.
pub fn describe_hit(n: usize, h: &Hit) -> String {
    let text: String = h
        .chunk
        .text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let short: String = text.chars().take(160).collect();
    let more = if short.len() < text.len() { "..." } else { "" };
    format!(
        "[{n}] {} #{} (bytes {}-{}) score {:.4}\n    {short}{more}",
        h.chunk.source, h.chunk.ordinal, h.chunk.start, h.chunk.end, h.score
    )
}

/// Reads the questions file of `rag eval`: (question, its sources).
pub fn read_questions(path: &PathBuf) -> Result<Vec<(String, Vec<String>)>> {
    let body = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}: line {}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(at)?;
        let q = v
            .get("question")
            .and_then(|q| q.as_str())
            .with_context(|| format!("{}: no `question` string", at()))?;
        let sources: Vec<String> = match (v.get("sources"), v.get("source")) {
            (Some(serde_json::Value::Array(a)), _) => a
                .iter()
                .map(|s| s.as_str().map(canonical))
                .collect::<Option<_>>()
                .with_context(|| format!("{}: `sources` holds a non-string", at()))?,
            (_, Some(serde_json::Value::String(s))) => vec![canonical(s)],
            _ => anyhow::bail!("{}: no `sources` list or `source` string", at()),
        };
        out.push((q.to_string(), sources));
    }
    Ok(out)
}

/// A source as the store keys it: the canonical path when it names a file here.
fn canonical(s: &str) -> String {
    std::fs::canonicalize(s)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| s.to_string())
}
