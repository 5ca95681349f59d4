//! One sequence's generation: the prompt in one batched forward, then sample, stream and
//! feed one token at a time until end-of-generation, a stop string, the token limit or a
//! full context, on the decode engine's one-slot case. The KV cache persists between
//! calls, so a chat only feeds its new turn.

use std::time::Instant;

use ferrollama_model::Llama;
use ferrollama_sampling::SamplingParams;
use ferrollama_tokenizer::Tokenizer;

use crate::engine::{Engine, Event, Job, NoObserver, Usage};
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
    /// Only text this grammar accepts (GBNF or a JSON Schema, see [`crate::constrain`]);
    /// generation ends when the grammar is complete and nothing more may follow.
    pub grammar: Option<ferrollama_grammar::Constraint>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            stop: Vec::new(),
            sampling: SamplingParams::default(),
            ignore_eos: false,
            grammar: None,
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

/// Runs one sequence of a model, keeping its KV cache between calls: the decode engine
/// with one slot, so a chat's next turn computes only what is new.
pub struct Generator<'a> {
    engine: Engine<'a>,
}

impl<'a> Generator<'a> {
    /// A generator with an empty cache for a context of `n_ctx` tokens.
    pub fn new(model: &'a Llama, tokenizer: &'a Tokenizer, n_ctx: usize) -> Self {
        Self {
            engine: Engine::new(model, tokenizer, 1, n_ctx),
        }
    }

    /// The context size.
    pub fn n_ctx(&self) -> usize {
        self.engine.n_ctx_slot()
    }

    /// Forgets the cached tokens.
    pub fn reset(&mut self) {
        self.engine.reset();
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
        let job = Job {
            id: 0,
            prompt: prompt.to_vec(),
            params: params.clone(),
            top_logprobs: None,
            adapter: None,
        };
        let failed = |e: Event| match e {
            Event::Error(msg) => Error::Input(msg),
            other => Error::Input(format!("unexpected {other:?}")),
        };
        self.engine.place(job, &NoObserver).map_err(failed)?;
        let start = Instant::now();
        let mut prompt_ms = None;
        let (mut ids, mut text) = (Vec::new(), String::new());
        let mut outcome: Option<std::result::Result<Usage, String>> = None;
        let mut cancelled = false;
        while outcome.is_none() && !cancelled {
            self.engine.step(&NoObserver, &mut |_, event| {
                prompt_ms.get_or_insert_with(|| start.elapsed().as_secs_f64() * 1e3);
                let piece = match event {
                    Event::Token { id, text, .. } => {
                        ids.push(id);
                        text
                    }
                    Event::Text(t) => t,
                    Event::Done(usage) => {
                        outcome = Some(Ok(usage));
                        return;
                    }
                    Event::Error(msg) => {
                        outcome = Some(Err(msg));
                        return;
                    }
                };
                if !piece.is_empty() && !cancelled {
                    text.push_str(&piece);
                    cancelled = !on_text(&piece);
                }
            });
            if self.engine.busy() == 0 && outcome.is_none() && !cancelled {
                outcome = Some(Err("the engine dropped the job".into()));
            }
        }
        if cancelled {
            self.engine.cancel(0);
        }
        let prompt_ms = prompt_ms.unwrap_or(0.0);
        let generate_ms = start.elapsed().as_secs_f64() * 1e3 - prompt_ms;
        let (finish_reason, evaluated) = match outcome {
            _ if cancelled => (FinishReason::Cancelled, None),
            Some(Ok(u)) => (u.finish, Some(u.prompt_tokens - u.cached_tokens)),
            Some(Err(msg)) => return Err(Error::Input(msg)),
            None => (FinishReason::Cancelled, None),
        };
        Ok(Generation {
            ids,
            text,
            finish_reason,
            prompt_tokens_evaluated: evaluated.unwrap_or(prompt.len()),
            prompt_ms,
            generate_ms,
        })
    }
}
