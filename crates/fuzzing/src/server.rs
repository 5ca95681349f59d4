//! Request bodies as the server's handlers take them apart, up to the point where a job
//! would be queued: the body parsed, refusals, the grammar compiled against the default
//! model's vocabulary, messages rendered with its chat template and tokenized, sampling
//! settings checked. (Generation itself is the engine's, driven by the soak test.)

use std::sync::{Arc, OnceLock};

use ferrollama_generate::{grammar_vocabulary, ChatFormat, Message};
use ferrollama_gguf::GgufFile;
use ferrollama_grammar::Vocabulary;
use ferrollama_server::request::{self, ChatRequest, CompletionRequest, EmbeddingRequest, Prompt};

use crate::tokenizer::smollm2;

/// The server's cap on `max_tokens` (its default).
const MAX_TOKENS: usize = 1024;

/// The first byte chooses the endpoint; the rest is the body.
pub fn request(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let _ = chat(body);
        }
        1 => {
            let _ = completion(body);
        }
        _ => {
            let _ = request::parse::<EmbeddingRequest>(body);
        }
    }
}

fn chat(body: &[u8]) -> Option<()> {
    let req: ChatRequest = request::parse(body).ok()?;
    req.refuse_unsupported().ok()?;
    grammar(body)?;
    let messages = req
        .messages
        .iter()
        .map(|m| m.text().map(|t| Message::new(&m.role, &t)))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let _ = ferrollama_server::rag::requested(req.rag.as_ref());
    if !messages.is_empty() {
        let prompt = chat_format().encode(&messages, smollm2()).ok()?;
        assert!(prompt
            .iter()
            .all(|&id| (id as usize) < smollm2().vocab_size()));
    }
    let n = req.sampling.n().ok()?;
    if req.logprobs == Some(true) {
        request::top_logprobs(req.top_logprobs, "top_logprobs").ok()?;
    }
    for i in 0..n {
        let p = req.sampling.params(MAX_TOKENS, i).ok()?;
        assert!(p.max_new_tokens <= MAX_TOKENS);
    }
    Some(())
}

fn completion(body: &[u8]) -> Option<()> {
    let req: CompletionRequest = request::parse(body).ok()?;
    grammar(body)?;
    if let Some(n) = req.logprobs {
        request::top_logprobs(Some(n), "logprobs").ok()?;
    }
    let tok = smollm2();
    match &req.prompt {
        Prompt::Text(t) => drop(tok.encode(t, true, true)),
        Prompt::Texts(v) => v.iter().for_each(|t| drop(tok.encode(t, true, true))),
        Prompt::Tokens(_) | Prompt::TokenLists(_) => {}
    }
    let n = req.sampling.n().ok()?;
    for i in 0..n {
        req.sampling.params(MAX_TOKENS, i).ok()?;
    }
    Some(())
}

/// The grammar the body asks for, compiled as the handler compiles it.
fn grammar(body: &[u8]) -> Option<()> {
    if let Some(source) = ferrollama_server::grammar::requested(body).ok()? {
        ferrollama_generate::constraint(&source, vocabulary()).ok()?;
    }
    Some(())
}

fn vocabulary() -> &'static Arc<Vocabulary> {
    static CELL: OnceLock<Arc<Vocabulary>> = OnceLock::new();
    CELL.get_or_init(|| grammar_vocabulary(smollm2()))
}

/// The default model's chat format (its template from the GGUF metadata).
fn chat_format() -> &'static ChatFormat {
    static CELL: OnceLock<ChatFormat> = OnceLock::new();
    CELL.get_or_init(|| {
        let path = ferrollama_assets::default_model().expect("the default model");
        let file = GgufFile::open(&path).expect("opening the default model");
        let template = file.header.get_str("tokenizer.chat_template").ok();
        ChatFormat::for_model(template)
    })
}
