//! Request bodies as OpenAI's API defines them (plus llama.cpp's sampling extensions),
//! and their translation to generation settings. Unknown fields are ignored: clients send
//! fields a server may not know.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ferrollama_generate::GenerateParams;
use ferrollama_sampling::SamplingParams;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ApiError;

/// Most choices one request may ask for.
pub const MAX_N: usize = 16;
/// Most alternatives per token in logprobs (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Parses a JSON body, turning any failure (syntax, types, bad UTF-8) into a 400 that says
/// what and where.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_data() {
            "a field has the wrong type or value"
        } else {
            "the body is not valid JSON"
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Settings shared by chat and text completions.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub n: Option<u64>,
    #[serde(default)]
    pub ignore_eos: bool,
}

impl Sampling {
    /// How many choices, checked.
    pub fn n(&self) -> Result<usize, ApiError> {
        match self.n.unwrap_or(1) {
            n @ 1..=16 => Ok(n as usize),
            n => Err(ApiError::invalid_param(
                "n",
                format!("n must be between 1 and {MAX_N}, got {n}"),
            )),
        }
    }

    /// Generation settings for choice `index`: unset fields take llama.cpp's defaults (as
    /// llama-server does); max_tokens is capped at `cap`; choices of one request get
    /// consecutive seeds so that they differ.
    pub fn params(&self, cap: usize, index: usize) -> Result<GenerateParams, ApiError> {
        let d = SamplingParams::default();
        let seed = match self.seed {
            Some(s) => s as u64,
            None => random_seed(),
        };
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.map_or(d.top_k, |k| k.max(0) as usize),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: self.repeat_last_n.unwrap_or(d.repeat_last_n),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed: seed.wrapping_add(index as u64),
        };
        sampling
            .validate()
            .map_err(|e| ApiError::invalid_param(e.setting, e.to_string()))?;
        let max = self.max_completion_tokens.or(self.max_tokens);
        Ok(GenerateParams {
            max_new_tokens: max.map_or(cap, |m| (m as usize).min(cap)),
            stop: match &self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(v)) => v.clone(),
            },
            sampling,
            ignore_eos: self.ignore_eos,
            // Set by the handler from the body (`crate::grammar`).
            grammar: None,
        })
    }
}

/// A seed for requests that give none: different every time.
fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // SplitMix64 of time and a counter, so that two requests in the same tick differ.
    let mut z = nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `content`: a string or a list of parts, of which only text parts are understood.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

impl ChatMessage {
    /// The text of the message; parts other than text are refused.
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (kind, _) => Err(ApiError::invalid_param(
                        "messages",
                        format!("content parts of type '{kind}' are not supported (text only)"),
                    )),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// POST /v1/chat/completions.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The base model or one of the server's adapters.
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: Sampling,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub response_format: Option<ResponseFormat>,
    pub tools: Option<Vec<serde_json::Value>>,
    /// Answer from the server's documents (an extension: `true` or `{"k", "method"}`).
    pub rag: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
}

impl ChatRequest {
    /// Features a client relies on (tool calls) are refused rather than silently
    /// ignored, so that the client learns it cannot have them. (`response_format` is
    /// read by `crate::grammar`, which refuses the kinds it does not know.)
    pub fn refuse_unsupported(&self) -> Result<(), ApiError> {
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid_param(
                "tools",
                "tool calls are not supported",
            ));
        }
        Ok(())
    }
}

/// `prompt` or `input`: text(s) or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// POST /v1/completions.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Alternatives per token (the legacy API's integer form).
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

/// POST /v1/embeddings.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: Option<String>,
    pub input: Prompt,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u64>,
}

/// Checks a logprobs alternative count.
pub fn top_logprobs(n: Option<u64>, param: &str) -> Result<usize, ApiError> {
    match n.unwrap_or(0) {
        n if n as usize <= MAX_TOP_LOGPROBS => Ok(n as usize),
        n => Err(ApiError::invalid_param(
            param,
            format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_and_types_checked() {
        let r: ChatRequest = parse(
            br#"{"model":"x","messages":[{"role":"user","content":"hi"}],"temperature":0.5,
                 "user":"u1","response_format":{"type":"text"},"stop":"\n"}"#,
        )
        .unwrap();
        assert_eq!(r.sampling.temperature, Some(0.5));
        assert!(matches!(r.sampling.stop, Some(Stop::One(_))));
        let e = parse::<ChatRequest>(br#"{"messages":"hi"}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("wrong type"), "{}", e.message);
        let e = parse::<ChatRequest>(b"{\"messages\": [\xff]}").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }

    #[test]
    fn params_cap_tokens_and_reject_bad_values() {
        let s = Sampling {
            max_tokens: Some(10_000),
            seed: Some(7),
            ..Sampling::default()
        };
        let p = s.params(512, 1).unwrap();
        assert_eq!((p.max_new_tokens, p.sampling.seed), (512, 8));
        let s = Sampling {
            temperature: Some(-1.0),
            ..Sampling::default()
        };
        assert_eq!(
            s.params(512, 0).unwrap_err().param.as_deref(),
            Some("temperature")
        );
        let s = Sampling {
            n: Some(99),
            ..Sampling::default()
        };
        assert!(s.n().is_err());
    }

    #[test]
    fn content_parts_join_text_and_refuse_images() {
        let m: ChatMessage = parse(
            br#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(m.text().unwrap(), "ab");
        let m: ChatMessage =
            parse(br#"{"role":"user","content":[{"type":"image_url","image_url":{}}]}"#).unwrap();
        assert!(m.text().is_err());
    }
}
