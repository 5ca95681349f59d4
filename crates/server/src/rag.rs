//! Chat with documents: a request's `"rag"` field (`true`, or `{"k": 4, "method":
//! "hybrid"}`) has the server find chunks of its store for the last user message, put them
//! numbered before the question (the words `ferrollama rag ask` uses) and return them as
//! `sources` beside the answer. `POST /v1/rag/search` finds chunks alone; `GET /v1/rag`
//! says what the store holds.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use ferrollama_generate::Message;
use ferrollama_rag::{Hit, Method, Store};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::routes::App;

/// The store and the encoder that indexed it.
#[derive(Clone)]
pub struct RagService {
    pub store: Arc<Mutex<Box<dyn Store + Send>>>,
    pub embedder: Arc<ferrollama_embed::Embedder>,
}

impl std::fmt::Debug for RagService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RagService")
            .field("encoder", &self.embedder.name())
            .finish()
    }
}

/// Most chunks one request may ask for.
const MAX_K: u64 = 20;
const DEFAULT_K: u64 = 4;

/// The k and method a chat request's `"rag"` asks for (`true`, `false`, or an object of
/// `k` and `method`), checked; None when it does not ask.
pub fn requested(p: Option<&Value>) -> Result<Option<(usize, Method)>, ApiError> {
    let bad = |msg: String| ApiError::invalid_param("rag", msg);
    match p {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(check(None, None, "rag")?)),
        Some(Value::Object(o)) => {
            if let Some(key) = o.keys().find(|k| !matches!(k.as_str(), "k" | "method")) {
                return Err(bad(format!(
                    "unknown field `{key}`: rag takes k and method"
                )));
            }
            let k = match o.get("k") {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .ok_or_else(|| bad("rag.k must be a whole number".into()))?,
                ),
            };
            let method = match o.get("method") {
                None => None,
                Some(v) => Some(
                    v.as_str()
                        .ok_or_else(|| bad("rag.method must be a string".into()))?,
                ),
            };
            Ok(Some(check(k, method, "rag")?))
        }
        Some(other) => Err(bad(format!(
            "rag must be true, false or an object of k and method, not {other}"
        ))),
    }
}

fn check(k: Option<u64>, method: Option<&str>, param: &str) -> Result<(usize, Method), ApiError> {
    let k = k.unwrap_or(DEFAULT_K);
    if k == 0 || k > MAX_K {
        return Err(ApiError::invalid_param(
            &format!("{param}.k"),
            format!("k must be between 1 and {MAX_K}"),
        ));
    }
    let method = method
        .unwrap_or("hybrid")
        .parse::<Method>()
        .map_err(|e| ApiError::invalid_param(&format!("{param}.method"), e.to_string()))?;
    Ok((k as usize, method))
}

/// The server's store, or the error a request asking for one gets.
fn service(app: &App) -> Result<RagService, ApiError> {
    app.rag.clone().ok_or_else(|| {
        ApiError::invalid_param(
            "rag",
            "this server has no document store: start it with --rag-db",
        )
    })
}

/// The `k` best chunks for `query`, found off the async threads (embedding and the store
/// are blocking work).
async fn retrieve(app: &App, query: &str, k: usize, method: Method) -> Result<Vec<Hit>, ApiError> {
    let rag = service(app)?;
    let query = query.to_string();
    tokio::task::spawn_blocking(move || {
        let store = rag
            .store
            .lock()
            .map_err(|_| ApiError::internal("the document store failed earlier"))?;
        ferrollama_rag::search(store.as_ref(), &rag.embedder, &query, method, k)
            .map_err(|e| ApiError::internal(format!("retrieval: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("retrieval: {e}")))?
}

/// Rewrites `messages` for an answer from documents: the last user message becomes the
/// numbered sources and the question, the sources rule joins (or becomes) the system
/// prompt. Returns the sources, as the response carries them.
pub async fn augment(
    app: &App,
    messages: &mut Vec<Message>,
    k: usize,
    method: Method,
) -> Result<Value, ApiError> {
    let Some(last) = messages.iter().rposition(|m| m.role == "user") else {
        return Err(ApiError::invalid_param(
            "messages",
            "rag needs a user message to search for",
        ));
    };
    let question = messages[last].content.clone();
    let hits = retrieve(app, &question, k, method).await?;
    messages[last] = Message::new("user", &ferrollama_rag::prompt::user_turn(&question, &hits));
    match messages.first_mut() {
        Some(m) if m.role == "system" => {
            m.content = ferrollama_rag::prompt::system_with(Some(&m.content));
        }
        _ => messages.insert(0, Message::new("system", ferrollama_rag::prompt::SYSTEM)),
    }
    serde_json::to_value(&hits).map_err(|e| ApiError::internal(e.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    query: String,
    k: Option<u64>,
    method: Option<String>,
}

/// POST /v1/rag/search: `{"query", "k"?, "method"?}` -> the chunks found, best first.
pub async fn search(
    State(app): State<App>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: SearchRequest = crate::request::parse(&crate::routes::body(&app, raw)?)?;
    if req.query.trim().is_empty() {
        return Err(ApiError::invalid_param("query", "query must not be empty"));
    }
    let (k, method) = check(req.k, req.method.as_deref(), "search")?;
    let hits = retrieve(&app, &req.query, k, method).await?;
    Ok(Json(
        json!({"object": "list", "method": method, "data": hits}),
    ))
}

/// GET /v1/rag: what the store holds and which encoder indexed it.
pub async fn info(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let rag = service(&app)?;
    let (stats, name) = tokio::task::spawn_blocking(move || {
        let store = rag
            .store
            .lock()
            .map_err(|_| ApiError::internal("the document store failed earlier"))?;
        let stats = store
            .stats()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok::<_, ApiError>((stats, rag.embedder.name().to_string()))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(json!({
        "documents": stats.documents,
        "chunks": stats.chunks,
        "embedding_model": name,
    })))
}
