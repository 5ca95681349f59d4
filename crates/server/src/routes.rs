//! The HTTP surface: routes, the API key check, request metrics and the handlers that
//! turn OpenAI-shaped requests into engine work.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use ferrollama_generate::{ChatFormat, Message};
use ferrollama_tokenizer::Tokenizer;
use serde_json::json;
use tokio::sync::oneshot;

use crate::engine::{EmbedJob, EngineHandle, Work};
use crate::error::ApiError;
use crate::generation::{self, Kind};
use crate::metrics::Metrics;
use crate::request::{self, ChatRequest, CompletionRequest, EmbeddingRequest, Prompt};

/// What every handler shares.
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub chat: ChatFormat,
    pub model_id: String,
    /// The selectable adapters' names, by id.
    pub adapters: Vec<String>,
    pub api_key: Option<String>,
    /// Most tokens one request may generate.
    pub max_tokens: usize,
    pub body_limit: usize,
    pub hidden_size: usize,
    pub embedding: Option<crate::EmbeddingModel>,
    pub rag: Option<crate::rag::RagService>,
    pub metrics: Arc<Metrics>,
    pub started: u64,
    /// The vocabulary as grammars see it, built on the first constrained request.
    pub grammar: crate::grammar::GrammarVocabulary,
    pub limits: crate::listen::Limits,
}

pub type App = Arc<AppState>;

impl AppState {
    /// The adapter a request's `model` names (None: the base model) and the name its
    /// answer carries. With no adapters loaded any name means the one model, as
    /// llama-server takes it; with adapters an unknown name is an error rather than the
    /// base model answering in the adapter's place.
    pub fn select_model(&self, model: Option<&str>) -> Result<(Option<usize>, String), ApiError> {
        let base = || Ok((None, self.model_id.clone()));
        let Some(name) = model else { return base() };
        if let Some(id) = self.adapters.iter().position(|a| a == name) {
            return Ok((Some(id), name.to_string()));
        }
        if name == self.model_id || self.adapters.is_empty() {
            return base();
        }
        let mut served = vec![self.model_id.as_str()];
        served.extend(self.adapters.iter().map(String::as_str));
        Err(ApiError::model_not_found(name, &served))
    }
}

/// The chat page, served at `/`.
const PAGE: &str = include_str!("../static/index.html");

/// Every route, with the key check, the body limit and request metrics.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/rag", get(crate::rag::info))
        .route("/v1/rag/search", post(crate::rag::search))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), read_body))
        .layer(middleware::from_fn_with_state(app.clone(), check_key))
        .layer(DefaultBodyLimit::max(app.body_limit))
        .layer(middleware::from_fn_with_state(app.clone(), record))
        .with_state(app)
}

/// Compares without stopping at the first differing byte, so the time taken does not
/// tell an attacker how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

async fn check_key(State(app): State<App>, req: Request, next: Next) -> Response {
    let open = matches!(req.uri().path(), "/" | "/health");
    if let (Some(key), false) = (&app.api_key, open) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.trim().as_bytes(), key.as_bytes()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Reads the whole body before any handler runs, within the size limit and
/// [`Limits::body_timeout`](crate::listen::Limits): a client that sends its body a byte at a
/// time gets a 408 instead of holding a task for ever.
async fn read_body(State(app): State<App>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, app.body_limit);
    let read = tokio::time::timeout(
        app.limits.body_timeout,
        http_body_util::BodyExt::collect(limited),
    )
    .await;
    let bytes = match read {
        Err(_) => return ApiError::body_timeout(app.limits.body_timeout).into_response(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::too_large(app.body_limit).into_response()
        }
        Ok(Err(e)) => {
            return ApiError::bad_request(format!("could not read the request body: {e}"))
                .into_response()
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

async fn record(State(app): State<App>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let endpoint = match path.as_str() {
        "/"
        | "/health"
        | "/metrics"
        | "/v1/models"
        | "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/embeddings"
        | "/v1/rag"
        | "/v1/rag/search" => path,
        _ => "other".into(),
    };
    let start = Instant::now();
    let response = next.run(req).await;
    app.metrics
        .request(&endpoint, response.status().as_u16(), start.elapsed());
    response
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

/// The base model, then each adapter with the base as its `parent` (as vLLM lists them).
async fn models(State(app): State<App>) -> Json<serde_json::Value> {
    let mut data = vec![json!({
        "id": app.model_id,
        "object": "model",
        "created": app.started,
        "owned_by": "ferrollama",
    })];
    if let Some(em) = &app.embedding {
        data.push(json!({
            "id": em.name,
            "object": "model",
            "created": app.started,
            "owned_by": "ferrollama",
        }));
    }
    data.extend(app.adapters.iter().map(|name| {
        json!({
            "id": name,
            "object": "model",
            "created": app.started,
            "owned_by": "ferrollama",
            "parent": app.model_id,
        })
    }));
    Json(json!({"object": "list", "data": data}))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

/// The body, or the right error for one that could not be read (too large, cut off).
pub(crate) fn body(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(app.body_limit),
        _ => ApiError::bad_request(format!("could not read the request body: {e}")),
    })
}

async fn chat(
    State(app): State<App>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let app = &app;
    let raw = body(app, raw)?;
    let req: ChatRequest = request::parse(&raw)?;
    req.refuse_unsupported()?;
    let grammar = crate::grammar::requested(&raw)?
        .map(|g| app.grammar.constraint(&app.tokenizer, &g))
        .transpose()?;
    let (adapter, model) = app.select_model(req.model.as_deref())?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut messages = req
        .messages
        .iter()
        .map(|m| Ok(Message::new(&m.role, &m.text()?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let sources = match crate::rag::requested(req.rag.as_ref())? {
        Some((k, method)) => Some(crate::rag::augment(app, &mut messages, k, method).await?),
        None => None,
    };
    let prompt = app
        .chat
        .encode(&messages, &app.tokenizer)
        .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
    let n = req.sampling.n()?;
    let top_logprobs = match req.logprobs {
        Some(true) => Some(request::top_logprobs(req.top_logprobs, "top_logprobs")?),
        _ => None,
    };
    let params = (0..n)
        .map(|i| {
            let mut p = req.sampling.params(app.max_tokens, i)?;
            p.grammar = grammar.clone();
            Ok(p)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    generation::run(
        app,
        generation::Request {
            kind: Kind::Chat,
            adapter,
            model,
            prompt_tokens: prompt.len(),
            prompts: vec![prompt; n],
            params,
            top_logprobs,
            echo: Vec::new(),
            stream: req.stream.unwrap_or(false),
            include_usage: req.stream_options.is_some_and(|o| o.include_usage),
            sources,
        },
    )
    .await
}

/// Token ids of a prompt or embedding input: texts get the model's BOS (when it adds
/// one) and special tokens parsed, as llama-server does; ids are taken as given.
fn prompt_tokens(tok: &Tokenizer, p: Prompt, param: &str) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode = |t: &str| tok.encode(t, true, true);
    let out = match p {
        Prompt::Text(t) => vec![encode(&t)],
        Prompt::Texts(v) => v.iter().map(|t| encode(t)).collect(),
        Prompt::Tokens(ids) => vec![ids],
        Prompt::TokenLists(v) => v,
    };
    if out.is_empty() || out.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid_param(
            param,
            format!("{param} must not be empty"),
        ));
    }
    let vocab = tok.vocab_size() as u32;
    if out.iter().flatten().any(|&id| id >= vocab) {
        return Err(ApiError::invalid_param(
            param,
            format!("token ids must be below the vocabulary size {vocab}"),
        ));
    }
    Ok(out)
}

async fn completions(
    State(app): State<App>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let app = &app;
    let raw = body(app, raw)?;
    let req: CompletionRequest = request::parse(&raw)?;
    let grammar = crate::grammar::requested(&raw)?
        .map(|g| app.grammar.constraint(&app.tokenizer, &g))
        .transpose()?;
    let (adapter, model) = app.select_model(req.model.as_deref())?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param(
            "suffix",
            "suffix (insertion) is not supported",
        ));
    }
    let echo = req.echo.unwrap_or(false);
    let top_logprobs = req
        .logprobs
        .map(|n| request::top_logprobs(Some(n), "logprobs"))
        .transpose()?;
    if echo && top_logprobs.is_some() {
        return Err(ApiError::invalid_param(
            "echo",
            "echo together with logprobs is not supported",
        ));
    }
    let prompts = prompt_tokens(&app.tokenizer, req.prompt, "prompt")?;
    let n = req.sampling.n()?;
    let (mut all, mut params, mut echoes) = (Vec::new(), Vec::new(), Vec::new());
    for p in &prompts {
        for i in 0..n {
            let mut choice = req.sampling.params(app.max_tokens, i)?;
            choice.grammar = grammar.clone();
            params.push(choice);
            all.push(p.clone());
            echoes.push(if echo {
                app.tokenizer.decode_lossy(p, true).unwrap_or_default()
            } else {
                String::new()
            });
        }
    }
    generation::run(
        app,
        generation::Request {
            kind: Kind::Completion,
            adapter,
            model,
            prompt_tokens: prompts.iter().map(Vec::len).sum(),
            prompts: all,
            params,
            top_logprobs,
            echo: echoes,
            stream: req.stream.unwrap_or(false),
            include_usage: req.stream_options.is_some_and(|o| o.include_usage),
            sources: None,
        },
    )
    .await
}

async fn embeddings(
    State(app): State<App>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let app = &app;
    let req: EmbeddingRequest = request::parse(&body(app, raw)?)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                format!("encoding_format must be 'float' or 'base64', got '{other}'"),
            ))
        }
    };
    if let Some(em) = app
        .embedding
        .as_ref()
        .filter(|em| req.model.as_deref().is_none_or(|m| m == em.name))
    {
        let vectors = encoder_embeddings(em, req.input, req.dimensions).await?;
        let total = vectors.1;
        return Ok(embedding_list(&vectors.0, base64, &em.name, total));
    }
    let (adapter, model) = app.select_model(req.model.as_deref())?;
    if let Some(d) = req.dimensions.filter(|&d| d as usize != app.hidden_size) {
        return Err(ApiError::invalid_param(
            "dimensions",
            format!(
                "this model's embeddings have {} dimensions, not {d}",
                app.hidden_size
            ),
        ));
    }
    let inputs = prompt_tokens(&app.tokenizer, req.input, "input")?;
    if let Some(long) = inputs.iter().find(|i| i.len() > app.engine.n_ctx_slot) {
        return Err(ApiError::context_exceeded(
            "input",
            format!(
                "an input has {} tokens, more than this server's context per request of {}",
                long.len(),
                app.engine.n_ctx_slot
            ),
        ));
    }
    let total: usize = inputs.iter().map(Vec::len).sum();
    let (reply, answer) = oneshot::channel();
    app.engine
        .submit(Work::Embed(EmbedJob {
            inputs,
            adapter,
            reply,
        }))
        .map_err(|_| ApiError::busy())?;
    let vectors = answer
        .await
        .map_err(|_| ApiError::internal("the engine stopped"))?
        .map_err(ApiError::internal)?;
    Ok(embedding_list(&vectors, base64, &model, total))
}

/// The OpenAI-shaped answer of /v1/embeddings.
fn embedding_list(vectors: &[Vec<f32>], base64: bool, model: &str, tokens: usize) -> Response {
    let data: Vec<_> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

/// Texts embedded by the served encoder (off the async workers: it is a CPU-bound pass),
/// and the tokens they took. The encoder reads text: token-id inputs are refused.
async fn encoder_embeddings(
    em: &crate::EmbeddingModel,
    input: request::Prompt,
    dimensions: Option<u64>,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let texts = match input {
        request::Prompt::Text(t) => vec![t],
        request::Prompt::Texts(t) => t,
        _ => {
            return Err(ApiError::invalid_param(
                "input",
                format!(
                    "{} reads text, not token ids (its vocabulary is not the chat model's)",
                    em.name
                ),
            ))
        }
    };
    if texts.is_empty() {
        return Err(ApiError::invalid_param("input", "input is empty"));
    }
    let width = em.embedder.encoder.config.hidden_size;
    if let Some(d) = dimensions.filter(|&d| d as usize != width) {
        return Err(ApiError::invalid_param(
            "dimensions",
            format!("{}'s embeddings have {width} dimensions, not {d}", em.name),
        ));
    }
    let embedder = em.embedder.clone();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tokens = refs
            .iter()
            .map(|t| embedder.token_ids(t).map(|ids| ids.len()))
            .sum::<Result<usize, _>>()?;
        embedder.embed(&refs, 32).map(|v| (v, tokens))
    })
    .await
    .map_err(|_| ApiError::internal("the embedding task stopped"))?
    .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
