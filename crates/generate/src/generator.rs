//! The decode loop: feed the prompt in one batched forward, then sample, stream and feed
//! one token at a time until end-of-generation, a stop string, the token limit or a full
//! context. The KV cache persists between calls, so a chat only feeds its new turn.

use std::time::Instant;

use ferrollama_model::llama::Cache;
use ferrollama_model::Llama;
use ferrollama_sampling::SamplingParams;
use ferrollama_tokenizer::Tokenizer;

use crate::decoding::Decoding;
use crate::error::{Error, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Strings that end generation; they are not part of the returned text.
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            stop: Vec::new(),
            sampling: SamplingParams::default(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// No room left in the context.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// The result of one generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    /// Generated token ids (an end-of-generation token is not included; the tokens that
    /// formed a stop string are, though the text ends before it).
    pub ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Tokens of the prompt that had to be computed (those not already cached).
    pub prompt_tokens_evaluated: usize,
    pub prompt_ms: f64,
    pub generate_ms: f64,
}

/// How many leading tokens `a` and `b` share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Runs one sequence of a model, keeping its KV cache between calls.
pub struct Generator<'a> {
    model: &'a Llama,
    tokenizer: &'a Tokenizer,
    cache: Cache,
    /// The tokens held in `cache`, in order.
    history: Vec<u32>,
}

impl<'a> Generator<'a> {
    /// A generator with an empty cache for a context of `n_ctx` tokens.
    pub fn new(model: &'a Llama, tokenizer: &'a Tokenizer, n_ctx: usize) -> Self {
        Self {
            model,
            tokenizer,
            cache: model.new_cache(n_ctx),
            history: Vec::new(),
        }
    }

    /// The context size.
    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx()
    }

    /// Forgets the cached tokens.
    pub fn reset(&mut self) {
        self.cache.reset();
        self.history.clear();
    }

    /// Brings the cache to hold exactly `prompt`, computing only what is not cached yet.
    /// Returns the logits after its last token and how many tokens were computed.
    fn feed_prompt(&mut self, prompt: &[u32]) -> Result<(Vec<f32>, usize)> {
        if prompt.is_empty() {
            return Err(Error::Input("the prompt is empty (no tokens)".into()));
        }
        if prompt.len() > self.n_ctx() {
            return Err(Error::Input(format!(
                "the prompt has {} tokens, more than the context of {}",
                prompt.len(),
                self.n_ctx()
            )));
        }
        // Keep the cached prefix the prompt shares, but recompute at least its last token,
        // whose logits are needed.
        let keep = common_prefix(&self.history, prompt).min(prompt.len() - 1);
        self.cache.truncate(keep);
        self.history.truncate(keep);
        let new = &prompt[self.history.len()..];
        let logits = self.forward(new)?;
        self.history.extend_from_slice(new);
        Ok((logits, new.len()))
    }

    /// Runs tokens after the cache and returns the last position's logits, with ids the
    /// tokenizer does not know (a model vocabulary padded beyond the tokenizer's) masked
    /// out. On error the cache is reset, since it may hold part of the input.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let result = self
            .model
            .forward(tokens, &mut self.cache, 1)
            .map_err(Error::from)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?));
        match result {
            Ok(mut logits) => {
                if let Some(beyond) = logits.get_mut(self.tokenizer.vocab_size()..) {
                    beyond.fill(f32::NEG_INFINITY);
                }
                Ok(logits)
            }
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    /// Generates after `prompt`. `on_text` receives each piece of text as soon as it is
    /// final (never half a character, never part of a stop string); returning `false`
    /// cancels.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let mut decoding = Decoding::new(params)?;
        let start = Instant::now();
        let (mut logits, evaluated) = self.feed_prompt(prompt)?;
        let prompt_ms = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        let mut cancelled = false;
        loop {
            let step = decoding.step(&mut logits, &self.history, self.tokenizer)?;
            if !step.text.is_empty() && !on_text(&step.text) {
                decoding.end(FinishReason::Cancelled);
                cancelled = true;
                break;
            }
            let Some(token) = step.token.filter(|_| step.finish.is_none()) else {
                break;
            };
            if self.history.len() >= self.n_ctx() {
                let rest = decoding.end(FinishReason::ContextFull);
                if !rest.text.is_empty() {
                    on_text(&rest.text);
                }
                break;
            }
            logits = self.forward(&[token])?;
            self.history.push(token);
        }
        let finish_reason = if cancelled {
            FinishReason::Cancelled
        } else {
            decoding.finish_reason().unwrap_or(FinishReason::Length)
        };
        Ok(Generation {
            ids: decoding.ids().to_vec(),
            text: decoding.text().to_string(),
            finish_reason,
            prompt_tokens_evaluated: evaluated,
            prompt_ms,
            generate_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }
}
