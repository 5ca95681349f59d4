//! The decode engine: `parallel` slots, each a KV cache with the tokens it holds, and one
//! batched forward per step over every busy slot: a generated token for each decoding
//! sequence and prompt chunks of newly placed ones (continuous batching, as llama.cpp's
//! server and vLLM do). New jobs join between steps; a finished or cancelled job frees its
//! slot at once, and the slot's cache stays for the next job that shares its prefix.
//! Single-sequence generation is the one-slot case ([`crate::Generator`]); the server
//! drives one engine from its thread; chat, generate and serve run this same loop, with
//! the same sampling and vocabulary masking.

use std::time::{Duration, Instant};

use ferrollama_model::llama::{Cache, SeqBatch, UBATCH};
use ferrollama_model::Llama;
use ferrollama_tokenizer::Tokenizer;

use crate::decoding::{Decoding, TokenLogprob};
use crate::generator::{common_prefix, FinishReason, GenerateParams};

/// Identifies a job in the engine's events; chosen by the caller.
pub type JobId = u64;

/// What a job produces, step by step.
#[derive(Debug, Clone)]
pub enum Event {
    /// One sampled token, with the text that became final with it (may be empty).
    Token {
        id: u32,
        text: String,
        logprob: Option<(TokenLogprob, Vec<TokenLogprob>)>,
    },
    /// Text released at the end without a new token (held-back bytes).
    Text(String),
    /// Generation is over.
    Done(Usage),
    /// The job failed; nothing follows.
    Error(String),
}

/// Token counts of one finished generation.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens found in a cache (not computed again).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// One sequence to generate.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// Alternatives to report with each token's log-probability (None: no logprobs).
    pub top_logprobs: Option<usize>,
    /// The model's selectable adapter to run with (`Llama::load_adapter`'s id), or none.
    pub adapter: Option<usize>,
}

/// Told what the engine does, for metrics; every method does nothing by default.
pub trait Observer {
    /// A prompt placed or extended: `total` new prompt tokens, `cached` of them reused.
    fn prompt_tokens(&self, _total: usize, _cached: usize) {}
    /// A job's first token came, `_latency` after it was placed.
    fn first_token(&self, _latency: Duration) {}
    /// Tokens sampled.
    fn generated(&self, _n: usize) {}
}

/// An observer that ignores everything.
pub struct NoObserver;
impl Observer for NoObserver {}

/// Tokens of `prompt` that `slot`'s cache holds already, computed with `adapter`: a cache
/// computed with another adapter holds other keys and values, so it shares nothing.
fn shared_prefix(slot: &Slot, prompt: &[u32], adapter: Option<usize>) -> usize {
    if slot.adapter == adapter {
        common_prefix(&slot.history, prompt)
    } else {
        0
    }
}

/// Shared prompt tokens worth waiting a step for instead of computing them again.
const MIN_SHARED: usize = 4;

struct Slot {
    cache: Cache,
    /// The tokens `cache` holds, in order.
    history: Vec<u32>,
    /// The adapter `cache` was computed with: its prefix serves only jobs of the same one.
    adapter: Option<usize>,
    task: Option<Task>,
}

struct Task {
    id: JobId,
    decoding: Decoding,
    prompt: Vec<u32>,
    cached_tokens: usize,
    /// The sampled token still to be fed, once the prompt is in.
    next: Option<u32>,
    placed: Instant,
    first_token: bool,
}

impl Task {
    fn prompt_left(&self, history: &[u32]) -> usize {
        self.prompt.len().saturating_sub(history.len())
    }
}

/// The engine: a model, its tokenizer and the slots.
pub struct Engine<'a> {
    model: &'a Llama,
    tokenizer: &'a Tokenizer,
    slots: Vec<Slot>,
}

impl<'a> Engine<'a> {
    /// An engine of `parallel` slots (at least 1) of `n_ctx_slot` positions each.
    pub fn new(
        model: &'a Llama,
        tokenizer: &'a Tokenizer,
        parallel: usize,
        n_ctx_slot: usize,
    ) -> Self {
        let slots = (0..parallel.max(1))
            .map(|_| Slot {
                cache: model.new_cache(n_ctx_slot),
                history: Vec::new(),
                adapter: None,
                task: None,
            })
            .collect();
        Self {
            model,
            tokenizer,
            slots,
        }
    }

    /// Positions each slot holds: prompt plus generated tokens must fit.
    pub fn n_ctx_slot(&self) -> usize {
        self.slots[0].cache.n_ctx()
    }

    /// Slots running a job.
    pub fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.task.is_some()).count()
    }

    /// Whether a job can be placed now.
    pub fn has_free_slot(&self) -> bool {
        self.busy() < self.slots.len()
    }

    /// The model the engine runs.
    pub fn model(&self) -> &Llama {
        self.model
    }

    /// Forgets every slot's cached tokens (the jobs running go on from scratch).
    pub fn reset(&mut self) {
        for slot in &mut self.slots {
            slot.cache.reset();
            slot.history.clear();
        }
    }

    /// Puts `job` in the free slot whose cache shares the longest prefix with its prompt.
    /// A job that cannot run (bad settings, a prompt that does not fit, no free slot) is
    /// refused with the event to report.
    pub fn place(&mut self, job: Job, observer: &dyn Observer) -> Result<(), Event> {
        let decoding = Decoding::new(&job.params).map_err(|e| Event::Error(e.to_string()))?;
        let decoding = match job.top_logprobs {
            Some(n) => decoding.with_logprobs(n),
            None => decoding,
        };
        let n_ctx = self.n_ctx_slot();
        if job.prompt.is_empty() || job.prompt.len() > n_ctx {
            return Err(Event::Error(format!(
                "the prompt has {} tokens; it must have between 1 and {n_ctx} (the context{})",
                job.prompt.len(),
                if self.slots.len() > 1 {
                    " per request"
                } else {
                    ""
                }
            )));
        }
        let loaded = self.model.adapter_count();
        if let Some(id) = job.adapter.filter(|&id| id >= loaded) {
            return Err(Event::Error(format!(
                "adapter {id} is not loaded ({loaded} are)"
            )));
        }
        let Some(slot) = self
            .slots
            .iter_mut()
            .filter(|s| s.task.is_none())
            .max_by_key(|s| shared_prefix(s, &job.prompt, job.adapter))
        else {
            return Err(Event::Error("no free slot".into()));
        };
        // Keep the shared prefix, but recompute at least the prompt's last token, whose
        // logits are needed.
        let keep = shared_prefix(slot, &job.prompt, job.adapter).min(job.prompt.len() - 1);
        slot.adapter = job.adapter;
        slot.cache.truncate(keep);
        slot.history.truncate(keep);
        observer.prompt_tokens(job.prompt.len(), keep);
        slot.task = Some(Task {
            id: job.id,
            decoding,
            prompt: job.prompt,
            cached_tokens: keep,
            next: None,
            placed: Instant::now(),
            first_token: true,
        });
        Ok(())
    }

    /// Stops job `id` (its client went away, or the caller cancelled): its slot is free
    /// at once; what it computed stays cached. Returns whether the job was running.
    pub fn cancel(&mut self, id: JobId) -> bool {
        for slot in &mut self.slots {
            if slot.task.as_ref().is_some_and(|t| t.id == id) {
                slot.task = None;
                return true;
            }
        }
        false
    }

    /// Ids of the running jobs.
    pub fn running(&self) -> impl Iterator<Item = JobId> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.task.as_ref().map(|t| t.id))
    }

    /// One batched forward over every busy slot, then sampling for those whose prompt is
    /// in; each job's events go to `emit`.
    pub fn step(&mut self, observer: &dyn Observer, emit: &mut dyn FnMut(JobId, Event)) {
        self.share_prefixes(observer);
        let inputs = self.plan_inputs();
        if inputs.is_empty() {
            return;
        }
        let seqs: Vec<SeqBatch> = inputs
            .iter()
            .map(|(i, t)| SeqBatch {
                tokens: t,
                outputs: 1,
                adapter: self.slots[*i].adapter,
            })
            .collect();
        let mut caches: Vec<&mut Cache> = self
            .slots
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| inputs.iter().any(|(j, _)| j == i))
            .map(|(_, s)| &mut s.cache)
            .collect();
        let mut logits = match self.model.forward_batch(&seqs, &mut caches) {
            Ok(l) => l,
            Err(e) => return self.fail(&inputs, &e.to_string(), emit),
        };
        for ((i, fed), row) in inputs.into_iter().zip(logits.rows_mut()) {
            let slot = &mut self.slots[i];
            slot.history.extend_from_slice(&fed);
            let Some(task) = slot.task.as_mut() else {
                continue;
            };
            task.next = None;
            if task.prompt_left(&slot.history) > 0 {
                continue;
            }
            // A model vocabulary padded beyond the tokenizer's: never sample those ids.
            if let Some(beyond) = row.get_mut(self.tokenizer.vocab_size()..) {
                beyond.fill(f32::NEG_INFINITY);
            }
            if Self::sample(slot, row, self.tokenizer, observer, emit) {
                slot.task = None;
            }
        }
    }

    /// What each busy slot feeds this step: one token for each decoding slot, prompt
    /// chunks for the others within the micro-batch.
    fn plan_inputs(&self) -> Vec<(usize, Vec<u32>)> {
        let decoding = self
            .slots
            .iter()
            .filter(|s| s.task.as_ref().is_some_and(|t| t.next.is_some()))
            .count();
        let mut budget = UBATCH.saturating_sub(decoding).max(1);
        let mut inputs: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(task) = &slot.task else { continue };
            if let Some(t) = task.next {
                inputs.push((i, vec![t]));
                continue;
            }
            let from = slot.history.len();
            // A prompt whose next tokens another slot computes in this step waits one step
            // and then copies them (share_prefixes).
            let covered = inputs.iter().any(|(k, fed)| {
                let other = &self.slots[*k];
                other.task.as_ref().is_some_and(|t| {
                    t.next.is_none()
                        && other.adapter == slot.adapter
                        && other.history.len() <= from
                        && common_prefix(&t.prompt[..other.history.len() + fed.len()], &task.prompt)
                            >= from + MIN_SHARED
                })
            });
            if budget > 0 && !covered {
                let n = task.prompt_left(&slot.history).min(budget);
                budget -= n;
                inputs.push((i, task.prompt[from..from + n].to_vec()));
            }
        }
        inputs
    }

    /// Copies into each slot still reading its prompt the longest run of it that another
    /// slot has already computed (a system prompt, a shared document), so that a burst of
    /// jobs with one system prompt computes it once, not once per slot.
    fn share_prefixes(&mut self, observer: &dyn Observer) {
        for i in 0..self.slots.len() {
            let Some(task) = &self.slots[i].task else {
                continue;
            };
            if task.next.is_some() {
                continue;
            }
            let have = self.slots[i].history.len();
            // The prompt's last token is always computed: its logits are needed.
            let limit = task.prompt.len() - 1;
            let best = self
                .slots
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, s)| {
                    let n = shared_prefix(s, &task.prompt, self.slots[i].adapter);
                    (j, n.min(limit))
                })
                .max_by_key(|&(_, n)| n);
            let Some((j, upto)) = best.filter(|&(_, n)| n > have) else {
                continue;
            };
            let src = self.slots[j].cache.clone();
            let slot = &mut self.slots[i];
            if slot.cache.extend_from(&src, upto).is_err() {
                continue;
            }
            let Some(task) = slot.task.as_mut() else {
                continue;
            };
            let copied = &task.prompt[have..upto];
            slot.history.extend_from_slice(copied);
            task.cached_tokens += copied.len();
            observer.prompt_tokens(0, copied.len());
        }
    }

    /// Samples a slot's next token and sends what it produced; returns whether the job is
    /// over.
    fn sample(
        slot: &mut Slot,
        logits: &mut [f32],
        tok: &Tokenizer,
        observer: &dyn Observer,
        emit: &mut dyn FnMut(JobId, Event),
    ) -> bool {
        let Some(task) = slot.task.as_mut() else {
            return true;
        };
        let id = task.id;
        let step = match task.decoding.step(logits, &slot.history, tok) {
            Ok(s) => s,
            Err(e) => {
                emit(id, Event::Error(e.to_string()));
                return true;
            }
        };
        if task.first_token {
            task.first_token = false;
            observer.first_token(task.placed.elapsed());
        }
        match step.token {
            Some(token) => {
                observer.generated(1);
                emit(
                    id,
                    Event::Token {
                        id: token,
                        text: step.text,
                        logprob: step.logprob,
                    },
                );
            }
            None if !step.text.is_empty() => emit(id, Event::Text(step.text)),
            None => {}
        }
        let mut finish = step.finish;
        if finish.is_none() && slot.history.len() >= slot.cache.n_ctx() {
            let rest = task.decoding.end(FinishReason::ContextFull);
            if !rest.text.is_empty() {
                emit(id, Event::Text(rest.text));
            }
            finish = rest.finish;
        }
        match finish {
            Some(finish) => {
                let usage = Usage {
                    finish,
                    prompt_tokens: task.prompt.len(),
                    cached_tokens: task.cached_tokens,
                    completion_tokens: task.decoding.ids().len(),
                };
                emit(id, Event::Done(usage));
                true
            }
            None => {
                task.next = step.token;
                false
            }
        }
    }

    /// A failed forward: the caches it touched may hold part of it, so they are reset and
    /// their jobs told.
    fn fail(
        &mut self,
        inputs: &[(usize, Vec<u32>)],
        message: &str,
        emit: &mut dyn FnMut(JobId, Event),
    ) {
        for (i, _) in inputs {
            let slot = &mut self.slots[*i];
            slot.cache.reset();
            slot.history.clear();
            if let Some(task) = slot.task.take() {
                emit(task.id, Event::Error(message.to_string()));
            }
        }
    }

    /// The L2-normalised mean of each input's final hidden states (embeddings), each
    /// run alone from an empty cache of its own, with the selectable `adapter` if given.
    pub fn embed(
        &self,
        inputs: &[Vec<u32>],
        adapter: Option<usize>,
        observer: &dyn Observer,
    ) -> Result<Vec<Vec<f32>>, String> {
        let n_ctx = self.n_ctx_slot();
        let loaded = self.model.adapter_count();
        if let Some(id) = adapter.filter(|&id| id >= loaded) {
            return Err(format!("adapter {id} is not loaded ({loaded} are)"));
        }
        inputs
            .iter()
            .map(|ids| {
                if ids.is_empty() || ids.len() > n_ctx {
                    return Err(format!(
                        "an input has {} tokens; it must have between 1 and {n_ctx}",
                        ids.len()
                    ));
                }
                observer.prompt_tokens(ids.len(), 0);
                let mut cache = self.model.new_cache(ids.len());
                let h = self
                    .model
                    .hidden_states_with(ids, &mut cache, adapter)
                    .map_err(|e| e.to_string())?;
                let mut mean = vec![0f32; h.width()];
                for r in 0..h.rows() {
                    for (m, &x) in mean.iter_mut().zip(h.row(r)) {
                        *m += x;
                    }
                }
                let n = h.rows() as f32;
                mean.iter_mut().for_each(|m| *m /= n);
                let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                Ok(mean.into_iter().map(|x| x / norm).collect())
            })
            .collect()
    }
}
