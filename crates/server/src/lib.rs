//! An OpenAI-compatible HTTP server for a loaded model: chat and text completions
//! (streamed over server-sent events or whole), embeddings, models, health and Prometheus
//! metrics, a chat page at `/`, with continuous batching behind them (see [`engine`]).

pub mod engine;
pub mod error;
pub mod generation;
pub mod grammar;
pub mod listen;
pub mod metrics;
pub mod rag;
pub mod request;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ferrollama_generate::{Bundle, ChatFormat};

use crate::engine::EngineConfig;
use crate::metrics::Metrics;
use crate::routes::AppState;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub api_key: Option<String>,
    /// Requests generated together; each gets `ctx / parallel` positions, as in llama-server.
    pub parallel: usize,
    /// Context shared out among the slots.
    pub ctx: usize,
    /// Requests that may wait for a slot before new ones get 503.
    pub queue: usize,
    /// Most tokens one request may generate.
    pub max_tokens: usize,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// Name reported by /v1/models.
    pub model_id: String,
    /// Names of the model's selectable adapters (`Llama::load_adapter`), by id: a request
    /// whose `model` is one of them runs with that adapter.
    pub adapters: Vec<String>,
    /// A sentence encoder serving `/v1/embeddings` (by default, and under its name; the
    /// chat model's own mean-pooled states stay available under the chat model's name).
    pub embedding: Option<EmbeddingModel>,
    /// A document store chat requests may answer from (`"rag"`).
    pub rag: Option<rag::RagService>,
    /// Connections, header and body timeouts.
    pub limits: listen::Limits,
}

/// An encoder the server embeds text with, and the name requests give it.
#[derive(Clone)]
pub struct EmbeddingModel {
    pub name: String,
    pub embedder: std::sync::Arc<ferrollama_embed::Embedder>,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("name", &self.name)
            .finish()
    }
}

/// Serves until Ctrl-C or SIGTERM; then stops accepting connections and lets the streams
/// in flight finish. Prints `listening on http://ADDR` to stderr once the port is bound
/// (with port 0, the port the system chose).
pub fn serve(served: Bundle, opts: ServeOptions) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(opts.addr)?;
    serve_listener(served, opts, listener)
}

/// [`serve`] on a socket already bound (tests bind port 0 and read the port first).
pub fn serve_listener(
    served: Bundle,
    opts: ServeOptions,
    listener: std::net::TcpListener,
) -> std::io::Result<()> {
    let parallel = opts.parallel.max(1);
    let n_ctx_slot = opts.ctx / parallel;
    if n_ctx_slot < 2 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a context of {} shared by {parallel} slots leaves too little for each",
                opts.ctx
            ),
        ));
    }
    check_adapter_names(&opts, served.model.adapter_count())?;
    let metrics = Arc::new(Metrics::default());
    let hidden_size = served.model.config.hidden_size;
    let tokenizer = Arc::new(served.tokenizer.clone());
    let chat = ChatFormat::for_model(served.chat_template.as_deref());
    let engine = engine::start(
        served,
        EngineConfig {
            parallel,
            n_ctx_slot,
            queue: opts.queue,
        },
        metrics.clone(),
    )?;
    let app = Arc::new(AppState {
        engine,
        tokenizer,
        chat,
        model_id: opts.model_id.clone(),
        adapters: opts.adapters.clone(),
        api_key: opts.api_key.clone().filter(|k| !k.is_empty()),
        max_tokens: opts.max_tokens,
        body_limit: opts.body_limit,
        hidden_size,
        embedding: opts.embedding.clone(),
        rag: opts.rag.clone(),
        metrics,
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        grammar: Default::default(),
        limits: opts.limits,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    listener.set_nonblocking(true)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        eprintln!("listening on http://{}", listener.local_addr()?);
        listen::serve(
            listener,
            routes::router(app),
            opts.limits,
            shutdown_signal(),
        )
        .await
    })
}

/// One name per loaded adapter, each distinct and none the base model's.
fn check_adapter_names(opts: &ServeOptions, loaded: usize) -> std::io::Result<()> {
    let invalid = |msg: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
    if opts.adapters.len() != loaded {
        return invalid(format!(
            "{} adapter names for {loaded} loaded adapters",
            opts.adapters.len()
        ));
    }
    for (i, name) in opts.adapters.iter().enumerate() {
        if name.is_empty() || *name == opts.model_id || opts.adapters[..i].contains(name) {
            return invalid(format!(
                "adapter name '{name}' is empty, repeated, or the base model's"
            ));
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing requests in flight");
}
