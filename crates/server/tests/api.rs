//! The server on the default model, over real HTTP on loopback: answers, streams, batching,
//! the prefix cache, limits and every kind of bad request (each a 4xx with an
//! OpenAI-shaped error, after which the server keeps serving).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ferrollama_generate::{Bundle, OpenOptions};
use ferrollama_server::{serve_listener, ServeOptions};
use serde_json::{json, Value};

struct Opts {
    parallel: usize,
    ctx: usize,
    queue: usize,
    key: Option<&'static str>,
    limits: ferrollama_server::listen::Limits,
}

/// Starts a server on the default model on a free port in a background thread.
fn start(o: Opts) -> SocketAddr {
    let path = ferrollama_assets::default_model().unwrap();
    start_with(&path, o, |_| Vec::new())
}

/// Starts a server on the model at `path`, after `adapt` has loaded adapters into it and
/// named them.
fn start_with(
    path: &std::path::Path,
    o: Opts,
    adapt: impl FnOnce(&mut Bundle) -> Vec<String>,
) -> SocketAddr {
    let open = OpenOptions {
        ctx: Some(o.ctx / o.parallel),
        ..OpenOptions::default()
    };
    let mut served = Bundle::open(path, &open).unwrap();
    let adapters = adapt(&mut served);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = ServeOptions {
        limits: o.limits,
        addr,
        api_key: o.key.map(String::from),
        parallel: o.parallel,
        ctx: o.ctx,
        queue: o.queue,
        max_tokens: 256,
        body_limit: 64 * 1024,
        model_id: "smollm2".into(),
        adapters,
        embedding: None,
        rag: None,
    };
    std::thread::spawn(move || serve_listener(served, opts, listener).unwrap());
    addr
}

/// The server most tests share: 4 slots of 512 tokens.
fn shared() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        start(Opts {
            parallel: 4,
            ctx: 2048,
            queue: 64,
            key: None,
            limits: Default::default(),
        })
    })
}

struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `data:` payloads of an event stream.
    fn events(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").map(String::from))
            .collect()
    }
}

/// One HTTP/1.1 request with `Connection: close`; reads the whole answer (chunked bodies
/// are de-chunked).
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req += &format!("{h}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = headers[9..12].parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
    out
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    http(
        addr,
        "POST",
        path,
        &["Content-Type: application/json"],
        body.to_string().as_bytes(),
    )
}

fn chat_body(content: &str, max_tokens: usize) -> Value {
    json!({"model": "x", "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens, "temperature": 0})
}

fn assert_error(r: &Reply, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let e = &r.json()["error"];
    let message = e["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    assert!(e["type"].is_string());
}

#[test]
fn models_health_and_metrics() {
    let a = shared();
    let m = http(a, "GET", "/v1/models", &[], b"").json();
    assert_eq!(m["data"][0]["id"], "smollm2");
    assert_eq!(http(a, "GET", "/health", &[], b"").status, 200);
    let page = http(a, "GET", "/", &[], b"");
    assert!(String::from_utf8_lossy(&page.body).contains("<html"));
    post(
        a,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 2}),
    );
    let text = String::from_utf8(http(a, "GET", "/metrics", &[], b"").body).unwrap();
    for name in [
        "ferrollama_queue_depth",
        "ferrollama_generated_tokens_total",
        "ferrollama_time_to_first_token_seconds_bucket",
        "ferrollama_requests_total{endpoint=\"/v1/completions\",status=\"200\"}",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
}

#[test]
fn greedy_chat_is_reproducible_and_streams_the_same_text() {
    let a = shared();
    let body = chat_body("What is the capital of France?", 24);
    let one = post(a, "/v1/chat/completions", &body).json();
    let two = post(a, "/v1/chat/completions", &body).json();
    let text = one["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty());
    assert_eq!(text, two["choices"][0]["message"]["content"]);
    let u = &one["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = post(a, "/v1/chat/completions", &streamed);
    assert!(r.headers.contains("text/event-stream"), "{}", r.headers);
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() > 3);
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text);
    let finish = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(
        finish.collect::<Vec<_>>(),
        [one["choices"][0]["finish_reason"].as_str().unwrap()]
    );
    let last = &chunks.last().unwrap()["usage"];
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(last[k], one["usage"][k]);
    }
}

#[test]
fn concurrent_requests_batch_and_each_gets_its_own_answer() {
    let a = shared();
    let prompts: Vec<String> = (0..6)
        .map(|i| format!("{}, {}, {}, {},", i, i + 1, i + 2, i + 3))
        .collect();
    let alone: Vec<Value> = prompts
        .iter()
        .map(|p| {
            post(
                a,
                "/v1/completions",
                &json!({"prompt": p, "max_tokens": 6, "temperature": 0}),
            )
            .json()
        })
        .collect();
    let together: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                s.spawn(move || {
                    post(
                        a,
                        "/v1/completions",
                        &json!({"prompt": p, "max_tokens": 6, "temperature": 0}),
                    )
                    .json()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (x, y) in alone.iter().zip(&together) {
        assert_eq!(x["choices"][0]["text"], y["choices"][0]["text"]);
    }
}

#[test]
fn completions_take_lists_n_logprobs_and_stop() {
    let a = shared();
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": ["1, 2, 3,", "a, b, c,"], "n": 2, "max_tokens": 8, "seed": 5,
                "logprobs": 3, "stop": [", 7"]}),
    )
    .json();
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for c in choices {
        let lp = &c["logprobs"];
        let n = lp["tokens"].as_array().unwrap().len();
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
        assert!(lp["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.as_f64().unwrap() <= 0.0));
        assert!(lp["top_logprobs"].as_array().unwrap().iter().all(|m| m
            .as_object()
            .unwrap()
            .len()
            == 3));
        assert!(!c["text"].as_str().unwrap().contains(", 7"));
    }
    let chat = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                "logprobs": true, "top_logprobs": 2, "temperature": 0}),
    )
    .json();
    let content = chat["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert!(!content.is_empty());
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(t["token"], top[0]["token"]);
    }
}

#[test]
fn embeddings_are_normalised_and_rank_similar_texts_closer() {
    let a = shared();
    let texts = [
        "The cat sat on the mat.",
        "A cat was sitting on a rug.",
        "Quarterly revenue grew by 4 percent.",
    ];
    let r = post(a, "/v1/embeddings", &json!({"input": texts})).json();
    let vecs: Vec<Vec<f64>> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    for v in &vecs {
        assert!((dot(v, v) - 1.0).abs() < 1e-4);
    }
    assert!(dot(&vecs[0], &vecs[1]) > dot(&vecs[0], &vecs[2]));
    let b64 = post(
        a,
        "/v1/embeddings",
        &json!({"input": texts[0], "encoding_format": "base64"}),
    )
    .json();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f64> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
        .collect();
    assert_eq!(floats.len(), vecs[0].len());
    assert!(floats
        .iter()
        .zip(&vecs[0])
        .all(|(x, y)| (x - y).abs() < 1e-6));
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let a = shared();
    let raw = |body: &[u8]| http(a, "POST", "/v1/chat/completions", &[], body);
    assert_error(&raw(b"{not json"), 400, "not valid JSON");
    assert_error(&raw(br#"{"messages": "hi"}"#), 400, "wrong type");
    assert_error(
        &raw(br#"{"messages": [{"role": "user", "content": 5}]}"#),
        400,
        "",
    );
    assert_error(
        &raw(b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}"),
        400,
        "",
    );
    assert_error(&raw(br#"{"messages": []}"#), 400, "empty");
    assert_error(
        &raw(br#"{"messages": [{"role":"user","content":"x"}], "temperature": -1}"#),
        400,
        "temperature",
    );
    assert_error(
        &raw(br#"{"messages": [{"role":"user","content":"x"}], "n": 99}"#),
        400,
        "n must",
    );
    assert_error(&raw(&vec![b' '; 70 * 1024]), 413, "limit");
    let long = "word ".repeat(700);
    let r = post(a, "/v1/chat/completions", &chat_body(&long, 4));
    assert_error(&r, 400, "context per request is 512");
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    assert_error(
        &post(a, "/v1/completions", &json!({"prompt": [99999999]})),
        400,
        "vocabulary",
    );
    assert_error(
        &post(a, "/v1/completions", &json!({"prompt": ""})),
        400,
        "empty",
    );
    assert_error(
        &post(
            a,
            "/v1/embeddings",
            &json!({"input": "x", "encoding_format": "hex"}),
        ),
        400,
        "encoding_format",
    );
    assert_error(&http(a, "GET", "/v2/nothing", &[], b""), 404, "no route");
    assert_error(
        &http(a, "GET", "/v1/chat/completions", &[], b""),
        405,
        "does not accept GET",
    );
    let unsupported = |extra: Value| {
        let mut b = chat_body("Hi", 2);
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        post(a, "/v1/chat/completions", &b)
    };
    assert_error(
        &unsupported(json!({"response_format": {"type": "yaml"}})),
        400,
        "not supported",
    );
    assert_error(
        &unsupported(json!({"response_format": {"type": "json_schema",
            "json_schema": {"schema": {"type": "string", "pattern": "a+"}}}})),
        400,
        "keyword `pattern` is not supported",
    );
    assert_error(
        &unsupported(json!({"grammar": "root ::= ("})),
        400,
        "grammar, line 1",
    );
    assert_error(
        &unsupported(json!({"tools": [{"type": "function"}]})),
        400,
        "tool calls",
    );
    // Unknown fields are ignored, and the server still answers.
    let ok = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                "user": "u", "response_format": {"type": "text"}, "tools_future_field": [1]}),
    );
    assert_eq!(ok.status, 200);
}

#[test]
fn constrained_requests_answer_what_the_grammar_allows() {
    let a = shared();
    // OpenAI's structured output: the reply is JSON of the schema, properties in its order.
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
        "population": {"type": "integer"}}, "required": ["city", "population"], "additionalProperties": false});
    let body = json!({"messages": [{"role": "user", "content": "Give the largest city of France as JSON."}],
        "max_tokens": 60, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "strict": true, "schema": schema}}});
    let r = post(a, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let reply = r.json();
    let content = reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let v: Value = serde_json::from_str(&content).unwrap_or_else(|e| panic!("{e}: {content}"));
    assert!(
        v["city"].is_string() && v["population"].is_i64(),
        "{content}"
    );
    let at = |k: &str| content.find(k).unwrap();
    assert!(
        at("\"city\"") < at("\"population\""),
        "the schema's order: {content}"
    );
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    // The same streamed.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let pieces: String = post(a, "/v1/chat/completions", &streamed)
        .events()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(pieces, content);
    // llama.cpp's `grammar` on a completion, sampled: every choice is one of the words.
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": "My favourite colour is", "max_tokens": 10, "n": 4, "temperature": 1.5, "seed": 3,
                "grammar": "root ::= \" \" (\"red\" | \"green\" | \"blue\")"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for c in r.json()["choices"].as_array().unwrap() {
        let t = c["text"].as_str().unwrap();
        assert!([" red", " green", " blue"].contains(&t), "{t}");
        assert_eq!(c["finish_reason"], "stop");
    }
}

#[test]
fn prefix_cache_reuses_a_shared_prompt() {
    let a = start(Opts {
        parallel: 1,
        ctx: 256,
        queue: 4,
        key: None,
        limits: Default::default(),
    });
    let ask = |q: &str| {
        post(
            a,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "system", "content": "You are a terse assistant who answers in one word."},
                                 {"role": "user", "content": q}], "max_tokens": 3}),
        )
        .json()["usage"]
            .clone()
    };
    let first = ask("Capital of Italy?");
    assert_eq!(first["prompt_tokens_details"]["cached_tokens"], 0);
    // Another question after the same system prompt: the system part is reused.
    let second = ask("Capital of Spain?");
    let cached = second["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached >= 15, "{second}");
    assert!(cached < second["prompt_tokens"].as_u64().unwrap());
    // The same request again: all but the last prompt token.
    let third = ask("Capital of Spain?");
    assert_eq!(
        third["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(third["prompt_tokens"].as_u64().unwrap() - 1)
    );
}

#[test]
fn a_burst_sharing_a_system_prompt_computes_it_once() {
    let a = start(Opts {
        parallel: 4,
        ctx: 1024,
        queue: 8,
        key: None,
        limits: Default::default(),
    });
    let system = "You are a careful assistant. Answer every question in one short sentence, \
                  without lists, and never mention that you are an assistant.";
    let body = |q: &str| {
        json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}],
               "max_tokens": 8, "temperature": 0})
    };
    let questions = [
        "Why is the sky blue?",
        "What is rain?",
        "Who wrote Hamlet?",
        "What is 2+2?",
    ];
    let together: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = questions
            .iter()
            .map(|q| s.spawn(move || post(a, "/v1/chat/completions", &body(q)).json()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let cached: Vec<u64> = together
        .iter()
        .map(|r| {
            r["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap()
        })
        .collect();
    // All four arrived in a burst: at most one computed the system prompt; the others
    // copied it (the system part alone is over 25 tokens).
    assert!(
        cached.iter().filter(|&&c| c >= 25).count() >= 3,
        "cached {cached:?}"
    );
    // Copied or computed, the answers are the ones each question gets alone.
    let fresh = start(Opts {
        parallel: 1,
        ctx: 256,
        queue: 8,
        key: None,
        limits: Default::default(),
    });
    for (q, r) in questions.iter().zip(&together) {
        let alone = post(fresh, "/v1/chat/completions", &body(q)).json();
        assert_eq!(
            alone["choices"][0]["message"], r["choices"][0]["message"],
            "{q}"
        );
    }
}

#[test]
fn api_key_is_required_when_set() {
    let a = start(Opts {
        parallel: 1,
        ctx: 256,
        queue: 4,
        key: Some("s3cret"),
        limits: Default::default(),
    });
    assert_error(&http(a, "GET", "/v1/models", &[], b""), 401, "API key");
    assert_error(
        &http(
            a,
            "GET",
            "/v1/models",
            &["Authorization: Bearer wrong"],
            b"",
        ),
        401,
        "API key",
    );
    assert_error(
        &http(a, "GET", "/metrics", &["Authorization: Basic s3cret"], b""),
        401,
        "API key",
    );
    assert_eq!(
        http(
            a,
            "GET",
            "/v1/models",
            &["Authorization: Bearer s3cret"],
            b""
        )
        .status,
        200
    );
    assert_eq!(http(a, "GET", "/health", &[], b"").status, 200);
}

/// Reads an event stream until its first token arrives, and returns the open connection.
fn open_stream(addr: SocketAddr, max_tokens: usize) -> TcpStream {
    let body = json!({"prompt": "Once upon a time", "max_tokens": max_tokens, "stream": true,
                      "ignore_eos": true})
    .to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    // The first event is sent before the engine admits the request; a second one carries
    // a generated token, so by then the request holds its slot.
    while String::from_utf8_lossy(&seen).matches("data: ").count() < 2 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = String::from_utf8(http(addr, "GET", "/metrics", &[], b"").body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}

#[test]
fn full_queue_answers_503_and_a_dropped_client_frees_its_slot() {
    let a = start(Opts {
        parallel: 1,
        ctx: 512,
        queue: 1,
        key: None,
        limits: Default::default(),
    });
    // One request holds the only slot; a second waits in the one queue place.
    let holder = open_stream(a, 400);
    let waiting = std::thread::spawn(move || {
        post(
            a,
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 2}),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(a, "ferrollama_queue_depth") < 1.0 {
        assert!(Instant::now() < deadline, "the second request never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = post(
        a,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 2}),
    );
    assert_error(&refused, 503, "capacity");
    assert!(refused
        .headers
        .to_ascii_lowercase()
        .contains("retry-after: 1"));
    // The client holding the slot hangs up: its generation stops long before 400 tokens
    // and the waiting request runs.
    drop(holder);
    assert_eq!(waiting.join().unwrap().status, 200);
    // Counted only for a job stopped while it ran: the holder's 400 tokens never came.
    assert_eq!(metric(a, "ferrollama_cancelled_total"), 1.0);
}

/// One base model serving an adapter by name: a request whose `model` names it runs with
/// it (the same text as a server with the adapter applied to everything), the others
/// without, also when both come at once; /v1/models lists it; an unknown name is a 404
/// rather than the base model answering in its place. On the tiny model and its adapter
/// (`tests/data/tiny/`), so this fetches nothing.
#[test]
fn a_request_names_the_adapter_it_runs_with() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny");
    let (model, adapter) = (root.join("tiny-260k-q8_0.gguf"), root.join("lora-r4"));
    let opts = || Opts {
        parallel: 2,
        ctx: 256,
        queue: 8,
        key: None,
        limits: Default::default(),
    };
    let named = adapter.clone();
    let a = start_with(&model, opts(), move |b| {
        assert_eq!(b.model.load_adapter(&named, 1.0).unwrap(), 0);
        vec!["fortune".into()]
    });
    let merged = start_with(&model, opts(), move |b| {
        b.model.attach_lora(&adapter, 1.0).unwrap();
        Vec::new()
    });
    let listed = http(a, "GET", "/v1/models", &[], b"").json();
    assert_eq!(listed["data"][1]["id"], "fortune");
    assert_eq!(listed["data"][1]["parent"], "smollm2");
    let ask = |addr, model: Option<&str>| {
        let mut body = json!({"prompt": "Tell me about love and time.", "max_tokens": 12,
                              "temperature": 0, "ignore_eos": true});
        if let Some(m) = model {
            body["model"] = json!(m);
        }
        let r = post(addr, "/v1/completions", &body).json();
        let text = r["choices"][0]["text"].as_str().unwrap().to_string();
        (r["model"].as_str().unwrap().to_string(), text)
    };
    let (name, adapted) = ask(a, Some("fortune"));
    assert_eq!(name, "fortune");
    let (_, base) = ask(a, None);
    assert_ne!(adapted, base, "the adapter changed nothing");
    assert_eq!(ask(a, Some("smollm2")).1, base);
    assert_eq!(ask(merged, None).1, adapted);
    // Both at once (batched together when their steps overlap).
    let both = std::thread::scope(|s| {
        let x = s.spawn(|| ask(a, Some("fortune")).1);
        let y = s.spawn(|| ask(a, None).1);
        (x.join().unwrap(), y.join().unwrap())
    });
    assert_eq!(both, (adapted, base));
    let r = post(
        a,
        "/v1/completions",
        &json!({"model": "fortun", "prompt": "Hi"}),
    );
    assert_error(&r, 404, "fortun");
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let embed = |model: &str| {
        let body = json!({"model": model, "input": "a fortune"});
        post(a, "/v1/embeddings", &body).json()["data"][0]["embedding"].clone()
    };
    assert_ne!(embed("fortune"), embed("smollm2"));
}

/// With a sentence encoder served, /v1/embeddings answers from it by default and under its
/// name (the same vectors `Embedder::embed` gives), from the chat model under the chat
/// model's name; token-id inputs and another dimension count are refused.
#[test]
fn an_embedding_model_serves_embeddings_beside_the_chat_model() {
    let dir = ferrollama_assets::default_embedding_model().unwrap();
    let embedder = std::sync::Arc::new(ferrollama_embed::Embedder::open(&dir).unwrap());
    // Two documents in a store, for chat with documents on the same server.
    let docs = tempfile::tempdir().unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        docs.path().join("quorvia.txt"),
        "The capital of the made-up land of Quorvia is the city of Zelmont.",
    )
    .unwrap();
    std::fs::write(
        docs.path().join("plants.txt"),
        "Photosynthesis turns light, water and carbon dioxide into sugar.",
    )
    .unwrap();
    let mut store = ferrollama_rag::SqliteStore::open(&db_dir.path().join("s.db")).unwrap();
    ferrollama_rag::index::index(
        &mut store,
        &embedder,
        &[docs.path().to_path_buf()],
        &Default::default(),
        |_, _, _| {},
    )
    .unwrap();
    let path = ferrollama_assets::default_model().unwrap();
    let served = Bundle::open(
        &path,
        &OpenOptions {
            ctx: Some(512),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = listener.local_addr().unwrap();
    let opts = ServeOptions {
        limits: Default::default(),
        addr: a,
        api_key: None,
        parallel: 1,
        ctx: 512,
        queue: 8,
        max_tokens: 64,
        body_limit: 64 * 1024,
        model_id: "smollm2".into(),
        adapters: Vec::new(),
        embedding: Some(ferrollama_server::EmbeddingModel {
            name: "minilm".into(),
            embedder: embedder.clone(),
        }),
        rag: Some(ferrollama_server::rag::RagService {
            store: std::sync::Arc::new(std::sync::Mutex::new(Box::new(store))),
            embedder: embedder.clone(),
        }),
    };
    std::thread::spawn(move || serve_listener(served, opts, listener).unwrap());
    let texts = ["A man is eating food.", "A man is eating a piece of bread."];
    let want = embedder.embed(&texts, 32).unwrap();
    for body in [
        json!({"input": texts}),
        json!({"input": texts, "model": "minilm"}),
    ] {
        let r = post(a, "/v1/embeddings", &body).json();
        assert_eq!(r["model"], "minilm", "{r}");
        for (k, w) in want.iter().enumerate() {
            let got: Vec<f32> = serde_json::from_value(r["data"][k]["embedding"].clone()).unwrap();
            assert_eq!(&got, w);
        }
    }
    let chat = post(
        a,
        "/v1/embeddings",
        &json!({"input": "hi", "model": "smollm2"}),
    )
    .json();
    assert_eq!(chat["model"], "smollm2");
    assert_eq!(chat["data"][0]["embedding"].as_array().unwrap().len(), 576);
    let r = post(a, "/v1/embeddings", &json!({"input": [1, 2, 3]}));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("reads text"));
    let r = post(a, "/v1/embeddings", &json!({"input": "x", "dimensions": 7}));
    assert_eq!(r.status, 400);
    let models = http(a, "GET", "/v1/models", &[], b"").json();
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "minilm"));

    // Chat with documents: what the store holds, search alone, and an answer whose
    // prompt held the sources, which come back beside it (whole and streamed).
    let info = http(a, "GET", "/v1/rag", &[], b"").json();
    assert_eq!(
        (info["documents"].clone(), info["chunks"].clone()),
        (json!(2), json!(2))
    );
    let q = "What is the capital city of Quorvia?";
    let found = post(a, "/v1/rag/search", &json!({"query": q, "k": 1})).json();
    assert!(
        found["data"][0]["source"]
            .as_str()
            .unwrap()
            .ends_with("quorvia.txt"),
        "{found}"
    );
    let ask = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": q}],
                              "max_tokens": 4, "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        post(a, "/v1/chat/completions", &body)
    };
    let plain = ask(json!({})).json();
    assert!(plain.get("sources").is_none());
    let r = ask(json!({"rag": {"k": 2}})).json();
    let sources = r["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    assert!(sources[0]["text"].as_str().unwrap().contains("Zelmont"));
    let tokens = |r: &Value| r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        tokens(&r) > tokens(&plain) + 30,
        "{} vs {}",
        tokens(&r),
        tokens(&plain)
    );
    let streamed = ask(json!({"rag": true, "stream": true}));
    let first: Value = serde_json::from_str(&streamed.events()[0]).unwrap();
    assert!(
        first["sources"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Zelmont"),
        "{first}"
    );
    for (bad, what) in [
        (json!({"k": 0}), "rag.k"),
        (json!({"k": 21}), "rag.k"),
        (json!({"method": "cosine"}), "rag.method"),
        (json!({"top": 3}), "top"),
    ] {
        let r = ask(json!({"rag": bad}));
        assert_eq!(r.status, 400, "{bad}");
        assert!(
            String::from_utf8_lossy(&r.body).contains(what),
            "{bad}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = post(a, "/v1/rag/search", &json!({"query": "  "}));
    assert_eq!(r.status, 400);
}

/// A server without a store says so when a request asks for documents.
#[test]
fn chat_with_documents_needs_a_store() {
    let a = shared();
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "rag": true, "max_tokens": 2}),
    );
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("--rag-db"));
    assert_eq!(http(a, "GET", "/v1/rag", &[], b"").status, 400);
    // `"rag": false` is a plain chat.
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "rag": false, "max_tokens": 2}),
    );
    assert_eq!(r.status, 200);
}

/// Clients that hold connections without finishing their requests: headers sent a line at
/// a time and never ended are cut off at the header timeout; a body that stops arriving is
/// a 408 with an OpenAI-shaped error at the body timeout; connections past the limit get a
/// 503 with one; the server keeps serving through all of it.
#[test]
fn slow_and_excess_clients_are_cut_off_with_errors() {
    let limits = ferrollama_server::listen::Limits {
        max_connections: 3,
        header_timeout: Duration::from_millis(800),
        body_timeout: Duration::from_millis(800),
    };
    let addr = start(Opts {
        parallel: 1,
        ctx: 512,
        queue: 4,
        key: None,
        limits,
    });
    let read_all = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    };
    // Slowloris: the headers never end; the server hangs up.
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let _ = read_all(&mut slow);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // A body that stops halfway: 408.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"messages\"")
        .unwrap();
    let answer = read_all(&mut half);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("\"error\"") && answer.contains("did not arrive"),
        "{answer}"
    );

    // Three idle connections fill the limit; a fourth gets a 503 with a JSON body. A closed
    // connection's slot comes free a moment after the client sees it close (the server's
    // task ends after the socket), so on a loaded machine an earlier connection may still
    // hold one: then one of the three got the 503 and the fourth a slot. Try again later.
    let mut answer = String::new();
    for attempt in 1..=5 {
        std::thread::sleep(Duration::from_millis(200 * attempt));
        let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut extra = TcpStream::connect(addr).unwrap();
        answer = read_all(&mut extra);
        drop(held);
        if answer.starts_with("HTTP/1.1 503") {
            break;
        }
    }
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "too_many_connections");

    // Once the idle ones are cut off, requests are served again.
    std::thread::sleep(Duration::from_millis(1200));
    let r = http(addr, "GET", "/health", &[], b"");
    assert_eq!(r.status, 200);
}
