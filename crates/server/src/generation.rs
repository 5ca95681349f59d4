//! From a parsed request to the engine and back: submit one job per choice, then either
//! collect the choices into one JSON answer or stream them as server-sent events, shaped
//! as chat completions or as (legacy) text completions.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrollama_generate::{FinishReason, GenerateParams, TokenLogprob};
use ferrollama_tokenizer::Tokenizer;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::{Event, GenerateJob, Usage, Work};
use crate::error::ApiError;
use crate::routes::App;

/// Which API shape to answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// One request's jobs, ready to submit.
pub struct Request {
    pub kind: Kind,
    /// The selectable adapter every choice runs with, if any.
    pub adapter: Option<usize>,
    /// The model name the answer carries (the base's or the adapter's).
    pub model: String,
    /// One prompt per choice (a completion request may hold several prompts).
    pub prompts: Vec<Vec<u32>>,
    pub params: Vec<GenerateParams>,
    /// Alternatives per token when logprobs are asked for.
    pub top_logprobs: Option<usize>,
    /// Prompt tokens to report (each distinct prompt once, however many choices).
    pub prompt_tokens: usize,
    /// Text put before each choice's output (`echo`).
    pub echo: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// The chunks a chat with documents was given, returned beside the answer (in the
    /// first streamed chunk).
    pub sources: Option<Value>,
}

/// Submits every choice and answers, streamed or whole.
pub async fn run(app: &App, req: Request) -> Result<Response, ApiError> {
    for p in &req.prompts {
        if p.len() >= app.engine.n_ctx_slot {
            let param = match req.kind {
                Kind::Chat => "messages",
                Kind::Completion => "prompt",
            };
            return Err(ApiError::context_exceeded(
                param,
                format!(
                    "the prompt has {} tokens, but this server's context per request is {} \
                 (prompt and reply together); shorten the prompt or start the server with \
                 a larger --ctx",
                    p.len(),
                    app.engine.n_ctx_slot
                ),
            ));
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    for (index, (prompt, params)) in req.prompts.iter().zip(&req.params).enumerate() {
        let job = GenerateJob {
            prompt: prompt.clone(),
            params: params.clone(),
            top_logprobs: req.top_logprobs,
            adapter: req.adapter,
            index,
            events: tx.clone(),
        };
        // On refusal the jobs already queued see their channel closed and are dropped.
        app.engine
            .submit(Work::Generate(Box::new(job)))
            .map_err(|_| ApiError::busy())?;
    }
    drop(tx);
    let meta = Meta::new(req.kind, &req.model);
    if req.stream {
        Ok(stream(app, req, rx, meta).into_response())
    } else {
        collect(app, req, rx, meta).await
    }
}

/// Fields every answer and chunk carries.
struct Meta {
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    fn new(kind: Kind, model: &str) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        };
        Self {
            id: format!("{prefix}-{:x}{:08x}", now.as_secs(), now.subsec_nanos()),
            created: now.as_secs(),
            model: model.to_string(),
        }
    }
}

/// A generated token with its log-probability and alternatives, when asked for.
type ScoredToken = (u32, Option<(TokenLogprob, Vec<TokenLogprob>)>);

/// What one choice produced.
#[derive(Default)]
struct Choice {
    text: String,
    tokens: Vec<ScoredToken>,
    usage: Option<Usage>,
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        _ => "length",
    }
}

fn usage_json(prompt_tokens: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn piece(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.token_to_piece(id, false).unwrap_or_default();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Chat logprobs entries for some tokens.
fn chat_logprobs(tok: &Tokenizer, tokens: &[ScoredToken]) -> Value {
    let entry = |t: &TokenLogprob| {
        let (s, b) = piece(tok, t.id);
        json!({"token": s, "logprob": t.logprob, "bytes": b})
    };
    let content: Vec<Value> = tokens
        .iter()
        .filter_map(|(_, lp)| lp.as_ref())
        .map(|(chosen, top)| {
            let mut e = entry(chosen);
            e["top_logprobs"] = top.iter().map(entry).collect();
            e
        })
        .collect();
    json!({"content": content})
}

/// Legacy completion logprobs: parallel lists, offsets counted from `start`.
fn completion_logprobs(tok: &Tokenizer, tokens: &[ScoredToken], start: usize) -> Value {
    let (mut texts, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut offset = start;
    for (id, lp) in tokens {
        let (s, _) = piece(tok, *id);
        offsets.push(offset);
        offset += s.len();
        texts.push(s);
        if let Some((chosen, top)) = lp {
            lps.push(json!(chosen.logprob));
            let map: serde_json::Map<String, Value> = top
                .iter()
                .map(|t| (piece(tok, t.id).0, json!(t.logprob)))
                .collect();
            tops.push(Value::Object(map));
        }
    }
    json!({"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

async fn collect(
    app: &App,
    req: Request,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
    meta: Meta,
) -> Result<Response, ApiError> {
    let mut choices: Vec<Choice> = (0..req.prompts.len()).map(|_| Choice::default()).collect();
    let mut done = 0;
    while done < choices.len() {
        let Some((i, event)) = rx.recv().await else {
            return Err(ApiError::internal("the engine stopped"));
        };
        let Some(c) = choices.get_mut(i) else {
            continue;
        };
        match event {
            Event::Token { id, text, logprob } => {
                c.text += &text;
                c.tokens.push((id, logprob));
            }
            Event::Text(text) => c.text += &text,
            Event::Done(u) => {
                c.usage = Some(u);
                done += 1;
            }
            Event::Error(m) => return Err(ApiError::internal(m)),
        }
    }
    let tok = &app.tokenizer;
    let completion: usize = choices
        .iter()
        .filter_map(|c| c.usage)
        .map(|u| u.completion_tokens)
        .sum();
    let cached: usize = choices
        .iter()
        .filter_map(|c| c.usage)
        .map(|u| u.cached_tokens)
        .sum();
    let items: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let finish = c.usage.map_or("length", |u| finish_str(u.finish));
            let echo = req.echo.get(i).map_or("", String::as_str);
            match req.kind {
                Kind::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": req.top_logprobs.map(|_| chat_logprobs(tok, &c.tokens)),
                    "finish_reason": finish,
                }),
                Kind::Completion => json!({
                    "index": i,
                    "text": format!("{echo}{}", c.text),
                    "logprobs": req.top_logprobs.map(|_| completion_logprobs(tok, &c.tokens, echo.len())),
                    "finish_reason": finish,
                }),
            }
        })
        .collect();
    let object = match req.kind {
        Kind::Chat => "chat.completion",
        Kind::Completion => "text_completion",
    };
    let mut body = json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": items,
        "usage": usage_json(req.prompt_tokens, completion, cached),
        "system_fingerprint": null,
    });
    if let Some(s) = &req.sources {
        body["sources"] = s.clone();
    }
    Ok(Json(body).into_response())
}

/// Streams chunks as the engine produces tokens; ends with `data: [DONE]`. When the client
/// goes away the stream is dropped, which closes the engine's channel and frees the slots.
fn stream(
    app: &App,
    req: Request,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
    meta: Meta,
) -> impl IntoResponse {
    let (tx, out) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let tok = app.tokenizer.clone();
    tokio::spawn(async move {
        let object = match req.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let chunk = |choices: Value| {
            json!({"id": meta.id, "object": object, "created": meta.created,
                   "model": meta.model, "system_fingerprint": null, "choices": choices})
        };
        let send = |v: Value| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(SseEvent::default().data(v.to_string())))
                    .await
                    .is_ok()
            }
        };
        let n = req.prompts.len();
        let mut offsets = vec![0usize; n];
        for i in 0..n {
            let first = match req.kind {
                Kind::Chat => json!([{"index": i, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": null, "finish_reason": null}]),
                Kind::Completion => {
                    let echo = req.echo.get(i).cloned().unwrap_or_default();
                    offsets[i] = echo.len();
                    json!([{"index": i, "text": echo, "logprobs": null, "finish_reason": null}])
                }
            };
            let mut first = chunk(first);
            if let (0, Some(s)) = (i, &req.sources) {
                first["sources"] = s.clone();
            }
            if !send(first).await {
                return;
            }
        }
        let (mut done, mut completion, mut cached) = (0, 0, 0);
        while done < n {
            let Some((i, event)) = rx.recv().await else {
                let _ = send(ApiError::internal("the engine stopped").body()).await;
                return;
            };
            let (text, tokens, finish) = match event {
                Event::Token { id, text, logprob } => (text, vec![(id, logprob)], None),
                Event::Text(text) => (text, vec![], None),
                Event::Done(u) => {
                    done += 1;
                    completion += u.completion_tokens;
                    cached += u.cached_tokens;
                    (String::new(), vec![], Some(finish_str(u.finish)))
                }
                Event::Error(m) => {
                    let _ = send(ApiError::internal(m).body()).await;
                    return;
                }
            };
            let logprobs = req.top_logprobs.map(|_| match req.kind {
                Kind::Chat => chat_logprobs(&tok, &tokens),
                Kind::Completion => completion_logprobs(&tok, &tokens, offsets[i]),
            });
            if text.is_empty() && finish.is_none() && logprobs.is_none() {
                continue;
            }
            offsets[i] += text.len();
            let choice = match req.kind {
                Kind::Chat => {
                    let delta = if text.is_empty() {
                        json!({})
                    } else {
                        json!({"content": text})
                    };
                    json!([{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])
                }
                Kind::Completion => {
                    json!([{"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}])
                }
            };
            if !send(chunk(choice)).await {
                return;
            }
        }
        if req.include_usage {
            let mut last = chunk(json!([]));
            last["usage"] = usage_json(req.prompt_tokens, completion, cached);
            if !send(last).await {
                return;
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(out)).keep_alive(KeepAlive::default())
}
