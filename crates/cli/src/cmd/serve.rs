//! `ferrollama serve`: the OpenAI-compatible HTTP server and chat page.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use ferrollama_server::{serve, ServeOptions};

use crate::args::{parse_adapter, ModelArgs};
use crate::load::load;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A GGUF file or Hugging Face directory; the default model is fetched on first use.
    #[arg(short, long)]
    pub model: Option<std::path::PathBuf>,
    /// Address to listen on; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on the API (also from FERROLLAMA_API_KEY).
    #[arg(long, env = "FERROLLAMA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests generated together in one batch.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Context positions shared by the parallel slots, as llama-server's -c (default: the
    /// model's context, at most 4096).
    #[arg(short = 'c', long)]
    pub ctx: Option<usize>,
    /// Repack the weights at load instead of reading the cached packed copy.
    #[arg(long)]
    pub no_pack_cache: bool,
    /// Map the cached packed copy (pages shared between processes) instead of reading it
    /// into huge pages.
    #[arg(long)]
    pub map_weights: bool,
    /// A LoRA adapter (PEFT's layout) applied to every request without merging, scaled by
    /// SCALE (default 1); repeatable.
    #[arg(long = "lora", value_name = "DIR[:SCALE]")]
    pub lora: Vec<String>,
    /// A LoRA adapter served under NAME: requests whose `model` is NAME run with it, the
    /// others without (one loaded base, many adapters, batched together); repeatable.
    /// /v1/models lists them.
    #[arg(long = "lora-module", value_name = "NAME=DIR[:SCALE]")]
    pub lora_modules: Vec<String>,
    /// Requests that may wait for a free slot; beyond them the server answers 503.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Most tokens one request may generate (default: its slot's context).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 2 << 20)]
    pub max_body: usize,
    /// Connections served at once; one more is answered 503 and closed.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (slow senders are cut off).
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds a client has to send a request's body once its headers are in (then 408).
    #[arg(long, default_value_t = 30.0)]
    pub body_timeout: f64,
    /// A sentence encoder for /v1/embeddings: a sentence-transformers directory, or
    /// `default` (all-MiniLM-L6-v2, fetched on first use). Requests without `model`, or
    /// naming it (its directory's name), use it; naming the chat model, its own states.
    #[arg(long, value_name = "DIR|default")]
    pub embedding_model: Option<std::path::PathBuf>,
    /// A document store (`ferrollama rag index`; a SQLite file or postgres:// URL) that
    /// chat requests with `"rag"` answer from, searched with the encoder that indexed it
    /// (--embedding-model, else all-MiniLM-L6-v2); also /v1/rag and /v1/rag/search, and
    /// a switch on the chat page.
    #[arg(long, value_name = "FILE|URL")]
    pub rag_db: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    let parallel = a.parallel;
    if parallel == 0 || parallel > 256 {
        bail!("--parallel must be between 1 and 256");
    }
    // Each slot holds ctx / parallel positions; the model's position tables need only that.
    let per_slot = a.ctx.map(|c| c / parallel);
    if per_slot == Some(0) {
        bail!(
            "--ctx {} is too small for {parallel} parallel slots",
            a.ctx.unwrap_or(0)
        );
    }
    let modules = a
        .lora_modules
        .iter()
        .map(|s| match s.split_once('=') {
            Some((name, dir)) if !name.trim().is_empty() => {
                Ok((name.trim().to_string(), parse_adapter(dir)?))
            }
            _ => bail!("--lora-module {s}: expected NAME=DIR[:SCALE]"),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut m = load(&ModelArgs {
        model: a.model.clone(),
        ctx: per_slot,
        no_pack_cache: a.no_pack_cache,
        map_weights: a.map_weights,
        lora: a.lora.clone(),
    })?;
    let ctx = a.ctx.unwrap_or(m.n_ctx);
    let model_id = m
        .path
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let mut adapters = Vec::new();
    for (name, (dir, scale)) in modules {
        if name == model_id || adapters.contains(&name) {
            bail!("--lora-module {name}: the name is taken (the model is '{model_id}')");
        }
        m.model
            .load_adapter(&dir, scale)
            .with_context(|| format!("loading the adapter {}", dir.display()))?;
        eprintln!("adapter '{name}': {}", dir.display());
        adapters.push(name);
    }
    let embedding = embedding_model(a.embedding_model.as_deref(), &model_id, &adapters)?;
    let rag = match &a.rag_db {
        Some(db) => Some(rag_service(db, embedding.as_ref())?),
        None => None,
    };
    let opts = ServeOptions {
        limits: ferrollama_server::listen::Limits {
            max_connections: a.max_connections.max(1),
            header_timeout: seconds(a.header_timeout, "--header-timeout")?,
            body_timeout: seconds(a.body_timeout, "--body-timeout")?,
        },
        addr: SocketAddr::new(a.host, a.port),
        api_key: a.api_key,
        parallel,
        ctx,
        queue: a.queue,
        max_tokens: a.max_tokens.unwrap_or(ctx / parallel),
        body_limit: a.max_body,
        embedding,
        rag,
        model_id,
        adapters,
    };
    if !a.host.is_loopback() && opts.api_key.is_none() {
        eprintln!("warning: listening on {} without --api-key", a.host);
    }
    eprintln!(
        "{}: {parallel} slots of {} tokens",
        m.path.display(),
        ctx / parallel
    );
    serve(m, opts).with_context(|| format!("serving on {}:{}", a.host, a.port))
}

/// The encoder `--embedding-model` names, opened, under its directory's name.
fn embedding_model(
    arg: Option<&std::path::Path>,
    model_id: &str,
    adapters: &[String],
) -> Result<Option<ferrollama_server::EmbeddingModel>> {
    let Some(arg) = arg else { return Ok(None) };
    let dir = if arg == std::path::Path::new("default") {
        ferrollama_assets::default_embedding_model()?
    } else {
        arg.to_path_buf()
    };
    let name = dir
        .file_name()
        .map_or_else(|| "embedding".into(), |s| s.to_string_lossy().into_owned());
    if name == model_id || adapters.contains(&name) {
        bail!("--embedding-model: the name '{name}' is taken by the chat model or an adapter");
    }
    let embedder = ferrollama_embed::Embedder::open(&dir)
        .with_context(|| format!("--embedding-model {}", dir.display()))?;
    eprintln!("embedding model '{name}': {}", dir.display());
    Ok(Some(ferrollama_server::EmbeddingModel {
        name,
        embedder: std::sync::Arc::new(embedder),
    }))
}

/// The store `--rag-db` names with its encoder (the served one, else the default), checked
/// to be the encoder that indexed it.
fn rag_service(
    db: &str,
    served: Option<&ferrollama_server::EmbeddingModel>,
) -> Result<ferrollama_server::rag::RagService> {
    let embedder = match served {
        Some(e) => e.embedder.clone(),
        None => std::sync::Arc::new(ferrollama_embed::Embedder::open(
            &ferrollama_assets::default_embedding_model()?,
        )?),
    };
    let store = ferrollama_rag::open_store(db).with_context(|| format!("--rag-db {db}"))?;
    ferrollama_rag::check_encoder(store.as_ref(), &embedder)
        .with_context(|| format!("--rag-db {db}"))?;
    let stats = store.stats()?;
    eprintln!(
        "documents: {} ({} documents, {} chunks)",
        store.describe(),
        stats.documents,
        stats.chunks
    );
    Ok(ferrollama_server::rag::RagService {
        store: std::sync::Arc::new(std::sync::Mutex::new(store)),
        embedder,
    })
}

/// A timeout given in seconds: positive and finite.
fn seconds(v: f64, flag: &str) -> Result<std::time::Duration> {
    if v.is_finite() && v > 0.0 && v < 1e6 {
        Ok(std::time::Duration::from_secs_f64(v))
    } else {
        bail!("{flag} must be a positive number of seconds, got {v}")
    }
}
