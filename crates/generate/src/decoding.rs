//! What happens to one sequence after each forward pass: sample a token, turn it into
//! text that is safe to show (whole characters, no part of a stop string), and decide
//! whether generation is over. The [`Generator`](crate::Generator) drives one of these;
//! a server drives one per request, several per batched forward.

use ferrollama_grammar::Constraint;
use ferrollama_sampling::Sampler;
use ferrollama_tokenizer::Tokenizer;

use crate::error::{Error, Result};
use crate::generator::{FinishReason, GenerateParams};
use crate::stop::{StopMatcher, StopState};
use crate::utf8::Utf8Stream;

/// The log-probability of a token under the model (before penalties and truncation).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
}

/// What one step produced.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// The sampled token, unless it ended generation as an end-of-generation token.
    pub token: Option<u32>,
    /// Text that became final with this step (may be empty, e.g. half a character).
    pub text: String,
    /// The sampled token's log-probability and the most likely alternatives, when asked.
    pub logprob: Option<(TokenLogprob, Vec<TokenLogprob>)>,
    /// Set when generation is over.
    pub finish: Option<FinishReason>,
}

/// Decoding state of one sequence.
pub struct Decoding {
    sampler: Sampler,
    stops: StopMatcher,
    utf8: Utf8Stream,
    max_new_tokens: usize,
    ignore_eos: bool,
    /// The grammar the text must follow, if any.
    grammar: Option<Constraint>,
    /// How many alternatives to report with each token's log-probability (None: none).
    top_logprobs: Option<usize>,
    ids: Vec<u32>,
    text: String,
    /// Bytes of `text` already handed out.
    shown: usize,
    finish: Option<FinishReason>,
}

impl Decoding {
    /// A fresh state; fails on invalid sampling settings.
    pub fn new(params: &GenerateParams) -> Result<Self> {
        params.sampling.validate()?;
        Ok(Self {
            sampler: Sampler::new(params.sampling.clone()),
            stops: StopMatcher::new(&params.stop),
            utf8: Utf8Stream::new(),
            max_new_tokens: params.max_new_tokens,
            ignore_eos: params.ignore_eos,
            grammar: params.grammar.clone(),
            top_logprobs: None,
            ids: Vec::new(),
            text: String::new(),
            shown: 0,
            finish: None,
        })
    }

    /// Also reports log-probabilities, with `top` alternatives per token.
    pub fn with_logprobs(mut self, top: usize) -> Self {
        self.top_logprobs = Some(top);
        self
    }

    /// Tokens generated so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The text generated so far, up to a stop string if one was hit.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Why generation ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Whether `max_new_tokens` allows no token at all (nothing to sample).
    pub fn wants_no_tokens(&self) -> bool {
        self.max_new_tokens == 0
    }

    /// Samples from `logits` (modified in place), `history` being every token so far.
    pub fn step(&mut self, logits: &mut [f32], history: &[u32], tok: &Tokenizer) -> Result<Step> {
        if let Some(reason) = self.finish {
            return Ok(Step {
                finish: Some(reason),
                ..Step::default()
            });
        }
        if self.ids.len() >= self.max_new_tokens {
            return Ok(self.end(FinishReason::Length));
        }
        let ranked = self.top_logprobs.map(|top| log_softmax_top(logits, top));
        let token = match self.grammar.as_mut() {
            None => self.sampler.sample(logits, history),
            Some(g) => match sample_constrained(&mut self.sampler, g, logits, history)? {
                Some(t) => t,
                // Complete, and this vocabulary has no end-of-generation token to say so.
                None => return Ok(self.end(FinishReason::Stop)),
            },
        };
        let grammar_done = self.grammar.as_ref().is_some_and(|g| g.is_finished());
        let logprob = ranked.map(|(lse, top)| {
            // The chosen token's log-probability from the logits as they were before the
            // sampler penalised them; `top` was taken before sampling too.
            let lp = top
                .iter()
                .find(|t| t.id == token)
                .map(|t| t.logprob)
                .unwrap_or_else(|| lse.logprob_of(token));
            (
                TokenLogprob {
                    id: token,
                    logprob: lp,
                },
                top,
            )
        });
        if tok.is_eog(token) && (!self.ignore_eos || self.grammar.is_some()) {
            let mut step = self.end(FinishReason::Stop);
            step.logprob = logprob;
            return Ok(step);
        }
        self.ids.push(token);
        self.text += &self.utf8.push(&tok.token_to_piece(token, false)?);
        let (end, stopped) = match self.stops.check(&self.text) {
            StopState::Stopped(at) => (at, true),
            StopState::Running(safe) => (safe, false),
        };
        let mut step = Step {
            token: Some(token),
            logprob,
            ..Step::default()
        };
        if end > self.shown {
            step.text = self.text[self.shown..end].to_string();
            self.shown = end;
        }
        if stopped {
            self.text.truncate(end);
            self.finish = Some(FinishReason::Stop);
            step.finish = self.finish;
        } else if grammar_done {
            // Nothing may follow: end now rather than spend a forward pass on the
            // end-of-generation token the grammar would force.
            step.text += &self.end(FinishReason::Stop).text;
            step.finish = self.finish;
        } else if self.ids.len() >= self.max_new_tokens {
            step.text += &self.end(FinishReason::Length).text;
            step.finish = self.finish;
        }
        Ok(step)
    }

    /// Ends generation for `reason` (the caller's: a full context, a cancelled request).
    /// Returns the text still held back, except when cancelled, which drops it.
    pub fn end(&mut self, reason: FinishReason) -> Step {
        if self.finish.is_some() {
            return Step {
                finish: self.finish,
                ..Step::default()
            };
        }
        self.finish = Some(reason);
        let mut text = String::new();
        if reason != FinishReason::Cancelled {
            // An incomplete character at the very end becomes U+FFFD rather than vanishing.
            self.text += &self.utf8.finish();
            text = self.text[self.shown..].to_string();
            self.shown = self.text.len();
        }
        Step {
            text,
            finish: Some(reason),
            ..Step::default()
        }
    }
}

/// Samples a token the grammar allows and advances the grammar past it; `None` when the
/// grammar is complete and no token (not even an end-of-generation one) is allowed.
///
/// Greedy decoding first tries the unconstrained choice: when the grammar allows it, it is
/// the constrained argmax too, and the full mask (a walk over the vocabulary) is skipped.
/// Sampled decoding always masks first, so the draw is from the allowed tokens'
/// distribution after truncation, as llama.cpp's grammar sampler gives it.
fn sample_constrained(
    sampler: &mut Sampler,
    grammar: &mut Constraint,
    logits: &mut [f32],
    history: &[u32],
) -> Result<Option<u32>> {
    if sampler.params().temperature <= 0.0 {
        let mut trial = logits.to_vec();
        let t = sampler.sample(&mut trial, history);
        if grammar.allows(t)? {
            grammar.accept(t)?;
            return Ok(Some(t));
        }
    }
    let mask = grammar.mask()?;
    if mask.count() == 0 {
        if grammar.is_complete() {
            return Ok(None);
        }
        return Err(Error::Input(
            "the grammar allows no token of this vocabulary here".into(),
        ));
    }
    mask.apply(logits);
    let t = sampler.sample(logits, history);
    grammar.accept(t)?;
    Ok(Some(t))
}

/// The normaliser of a softmax, to give any token's log-probability.
struct LogSumExp {
    max: f32,
    log_z: f32,
    logits: Vec<f32>,
}

impl LogSumExp {
    fn logprob_of(&self, id: u32) -> f32 {
        self.logits
            .get(id as usize)
            .map_or(f32::NEG_INFINITY, |&l| l - self.max - self.log_z)
    }
}

/// Log-softmax of `logits`: the normaliser and the `top` most likely tokens.
fn log_softmax_top(logits: &[f32], top: usize) -> (LogSumExp, Vec<TokenLogprob>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|&l| f64::from(l - max).exp())
        .sum();
    let log_z = z.ln() as f32;
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(ids.len());
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    if top > 0 && top < ids.len() {
        ids.select_nth_unstable_by(top - 1, by_logit);
    }
    ids.truncate(top);
    ids.sort_by(by_logit);
    let lse = LogSumExp {
        max,
        log_z,
        logits: logits.to_vec(),
    };
    let top = ids
        .into_iter()
        .map(|id| TokenLogprob {
            id,
            logprob: lse.logprob_of(id),
        })
        .collect();
    (lse, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_top_ranks_and_normalises() {
        let logits = [1.0f32, 3.0, 2.0, f32::NEG_INFINITY];
        let (lse, top) = log_softmax_top(&logits, 2);
        assert_eq!(top.iter().map(|t| t.id).collect::<Vec<_>>(), [1, 2]);
        let total: f32 = (0..4).map(|i| lse.logprob_of(i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let want = 3.0 - (1f32.exp() + 3f32.exp() + 2f32.exp()).ln();
        assert!((top[0].logprob - want).abs() < 1e-6);
        assert_eq!(lse.logprob_of(3), f32::NEG_INFINITY);
        assert_eq!(lse.logprob_of(99), f32::NEG_INFINITY);
    }
}
