//! The batching engine: one thread owns the model and `parallel` slots, each a KV cache
//! with the tokens it holds. Every step it runs one forward over all busy slots together:
//! a generated token for each decoding request, and prompt chunks of newly admitted ones
//! (continuous batching, as llama.cpp's server and vLLM do). New requests join between
//! steps; a finished or abandoned request frees its slot at once, and its cache stays for
//! the next request that shares its prefix.

use std::sync::Arc;
use std::time::Instant;

use ferrollama_generate::generator::common_prefix;
use ferrollama_generate::{Decoding, FinishReason, GenerateParams, TokenLogprob};
use ferrollama_model::llama::{Cache, UBATCH};
use ferrollama_model::Llama;
use ferrollama_tokenizer::Tokenizer;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// What a generation request streams back.
#[derive(Debug)]
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
    /// The request failed; nothing follows.
    Error(String),
}

/// Token counts of one finished generation.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens found in the cache (not computed again).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// One sequence to generate.
pub struct GenerateJob {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// Alternatives to report with each token's log-probability (None: no logprobs).
    pub top_logprobs: Option<usize>,
    /// Which of a request's choices this is; its events carry it.
    pub index: usize,
    pub events: mpsc::UnboundedSender<(usize, Event)>,
}

/// Texts to embed: the L2-normalised mean of each one's final hidden states.
pub struct EmbedJob {
    pub inputs: Vec<Vec<u32>>,
    pub reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// Work the engine accepts.
pub enum Work {
    Generate(GenerateJob),
    Embed(EmbedJob),
}

/// The queue was full.
#[derive(Debug)]
pub struct Busy;

/// Where request handlers hand work to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Work>,
    metrics: Arc<Metrics>,
    /// Positions each slot holds: prompt plus generated tokens must fit.
    pub n_ctx_slot: usize,
}

impl EngineHandle {
    /// Queues `work`, or refuses at once when the queue is full (the caller answers 503).
    pub fn submit(&self, work: Work) -> Result<(), Busy> {
        self.metrics.queued(1);
        self.tx.try_send(work).map_err(|_| {
            self.metrics.queued(-1);
            Busy
        })
    }
}

/// Sizes of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Sequences decoded together.
    pub parallel: usize,
    /// Context of each slot.
    pub n_ctx_slot: usize,
    /// Requests waiting for a slot beyond which new ones are refused.
    pub queue: usize,
}

/// Starts the engine thread. It ends when every handle is dropped and its work is done.
pub fn start(
    model: Arc<Llama>,
    tokenizer: Arc<Tokenizer>,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<EngineHandle> {
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let slots = (0..cfg.parallel.max(1))
        .map(|_| Slot {
            cache: model.new_cache(cfg.n_ctx_slot),
            history: Vec::new(),
            task: None,
        })
        .collect();
    let engine = Engine {
        model,
        tokenizer,
        slots,
        rx,
        metrics: metrics.clone(),
    };
    std::thread::Builder::new()
        .name("ferrollama-engine".into())
        .spawn(move || engine.run())?;
    Ok(EngineHandle {
        tx,
        metrics,
        n_ctx_slot: cfg.n_ctx_slot,
    })
}

/// Shared prompt tokens worth waiting a step for instead of computing them again.
const MIN_SHARED: usize = 4;

/// `task.prompt[from..upto]` of the slot's task (empty when it has none).
fn task_prompt_range(slot: &Slot, from: usize, upto: usize) -> Vec<u32> {
    slot.task
        .as_ref()
        .and_then(|t| t.prompt.get(from..upto))
        .map(<[u32]>::to_vec)
        .unwrap_or_default()
}

struct Slot {
    cache: Cache,
    /// The tokens `cache` holds, in order.
    history: Vec<u32>,
    task: Option<Task>,
}

struct Task {
    index: usize,
    events: mpsc::UnboundedSender<(usize, Event)>,
    decoding: Decoding,
    prompt: Vec<u32>,
    cached_tokens: usize,
    /// The sampled token still to be fed, once the prompt is in.
    next: Option<u32>,
    admitted: Instant,
    first_token: bool,
}

impl Task {
    /// Sends an event; a closed channel is noticed by `drop_abandoned`.
    fn emit(&self, event: Event) {
        let _ = self.events.send((self.index, event));
    }

    fn prompt_left(&self, history: &[u32]) -> usize {
        self.prompt.len().saturating_sub(history.len())
    }
}

struct Engine {
    model: Arc<Llama>,
    tokenizer: Arc<Tokenizer>,
    slots: Vec<Slot>,
    rx: mpsc::Receiver<Work>,
    metrics: Arc<Metrics>,
}

impl Engine {
    fn run(mut self) {
        let mut open = true;
        while open || self.busy() > 0 {
            open = self.admit(open);
            self.drop_abandoned();
            self.metrics.set_active(self.busy());
            if self.busy() > 0 {
                self.step();
            }
            self.metrics.set_active(self.busy());
        }
    }

    fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.task.is_some()).count()
    }

    /// Takes queued work while a slot is free; waits for work when nothing runs. Returns
    /// whether the queue is still open.
    fn admit(&mut self, mut open: bool) -> bool {
        while open && self.busy() < self.slots.len() {
            let work = if self.busy() == 0 {
                self.rx.blocking_recv()
            } else {
                match self.rx.try_recv() {
                    Ok(w) => Some(w),
                    Err(mpsc::error::TryRecvError::Empty) => return true,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            let Some(work) = work else {
                open = false;
                break;
            };
            self.metrics.queued(-1);
            match work {
                Work::Generate(job) => self.place(job),
                Work::Embed(job) => {
                    let _ = job.reply.send(self.embed(&job.inputs));
                }
            }
        }
        open
    }

    /// Puts a job in the free slot whose cache shares the longest prefix with its prompt.
    fn place(&mut self, job: GenerateJob) {
        let decoding = match Decoding::new(&job.params) {
            Ok(d) => match job.top_logprobs {
                Some(n) => d.with_logprobs(n),
                None => d,
            },
            Err(e) => {
                let _ = job.events.send((job.index, Event::Error(e.to_string())));
                return;
            }
        };
        let n_ctx = self.slots[0].cache.n_ctx();
        if job.prompt.is_empty() || job.prompt.len() >= n_ctx {
            let message = format!(
                "the prompt has {} tokens; it must have between 1 and {} (the context per request)",
                job.prompt.len(),
                n_ctx - 1
            );
            let _ = job.events.send((job.index, Event::Error(message)));
            return;
        }
        let Some(slot) = self
            .slots
            .iter_mut()
            .filter(|s| s.task.is_none())
            .max_by_key(|s| common_prefix(&s.history, &job.prompt))
        else {
            return;
        };
        // Keep the shared prefix, but recompute at least the prompt's last token, whose
        // logits are needed.
        let keep = common_prefix(&slot.history, &job.prompt).min(job.prompt.len() - 1);
        slot.cache.truncate(keep);
        slot.history.truncate(keep);
        self.metrics.prompt_tokens(job.prompt.len(), keep);
        slot.task = Some(Task {
            index: job.index,
            events: job.events,
            decoding,
            prompt: job.prompt,
            cached_tokens: keep,
            next: None,
            admitted: Instant::now(),
            first_token: true,
        });
    }

    /// Frees the slots of requests whose client went away.
    fn drop_abandoned(&mut self) {
        for slot in &mut self.slots {
            if slot.task.as_ref().is_some_and(|t| t.events.is_closed()) {
                slot.task = None;
                self.metrics.cancelled();
            }
        }
    }

    /// Copies into each slot still reading its prompt the longest run of it that another
    /// slot has already computed (a system prompt, a shared document), so that a burst of
    /// requests with one system prompt computes it once, not once per slot.
    fn share_prefixes(&mut self) {
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
                .map(|(j, s)| (j, common_prefix(&s.history, &task.prompt).min(limit)))
                .max_by_key(|&(_, n)| n);
            let Some((j, upto)) = best.filter(|&(_, n)| n > have) else {
                continue;
            };
            let src = self.slots[j].cache.clone();
            let slot = &mut self.slots[i];
            if slot.cache.extend_from(&src, upto).is_err() {
                continue;
            }
            let copied = task_prompt_range(slot, have, upto);
            slot.history.extend_from_slice(&copied);
            if let Some(task) = slot.task.as_mut() {
                task.cached_tokens += copied.len();
            }
            self.metrics.prompt_tokens(0, copied.len());
        }
    }

    /// One batched forward over every busy slot, then sampling for those whose prompt is in.
    fn step(&mut self) {
        self.share_prefixes();
        // Decoding slots take one token each; prompts share what is left of the micro-batch.
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
        let seqs: Vec<&[u32]> = inputs.iter().map(|(_, t)| t.as_slice()).collect();
        let mut caches: Vec<&mut Cache> = self
            .slots
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| inputs.iter().any(|(j, _)| j == i))
            .map(|(_, s)| &mut s.cache)
            .collect();
        let logits = self
            .model
            .forward_multi(&seqs, &mut caches)
            .and_then(|t| Ok(t.to_vec2::<f32>()?));
        let logits = match logits {
            Ok(l) => l,
            Err(e) => return self.fail(&inputs, &e.to_string()),
        };
        for ((i, fed), mut row) in inputs.into_iter().zip(logits) {
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
            let done = Self::sample(slot, &mut row, &self.tokenizer, &self.metrics);
            if done {
                slot.task = None;
            }
        }
    }

    /// Samples a slot's next token and sends what it produced; returns whether the task
    /// is over.
    fn sample(slot: &mut Slot, logits: &mut [f32], tok: &Tokenizer, metrics: &Metrics) -> bool {
        let Some(task) = slot.task.as_mut() else {
            return true;
        };
        let step = match task.decoding.step(logits, &slot.history, tok) {
            Ok(s) => s,
            Err(e) => {
                task.emit(Event::Error(e.to_string()));
                return true;
            }
        };
        if task.first_token {
            task.first_token = false;
            metrics.first_token(task.admitted.elapsed());
        }
        match step.token {
            Some(id) => {
                metrics.generated(1);
                task.emit(Event::Token {
                    id,
                    text: step.text,
                    logprob: step.logprob,
                });
            }
            None if !step.text.is_empty() => {
                task.emit(Event::Text(step.text));
            }
            None => {}
        }
        let mut finish = step.finish;
        if finish.is_none() && slot.history.len() >= slot.cache.n_ctx() {
            let rest = task.decoding.end(FinishReason::ContextFull);
            if !rest.text.is_empty() {
                task.emit(Event::Text(rest.text));
            }
            finish = rest.finish;
        }
        match finish {
            Some(finish) => {
                task.emit(Event::Done(Usage {
                    finish,
                    prompt_tokens: task.prompt.len(),
                    cached_tokens: task.cached_tokens,
                    completion_tokens: task.decoding.ids().len(),
                }));
                true
            }
            None => {
                task.next = step.token;
                false
            }
        }
    }

    /// A failed forward: the caches it touched may hold part of it, so they are reset and
    /// their requests told.
    fn fail(&mut self, inputs: &[(usize, Vec<u32>)], message: &str) {
        for (i, _) in inputs {
            let slot = &mut self.slots[*i];
            slot.cache.reset();
            slot.history.clear();
            if let Some(task) = slot.task.take() {
                task.emit(Event::Error(message.to_string()));
            }
        }
    }

    fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, String> {
        let n_ctx = self.slots[0].cache.n_ctx();
        inputs
            .iter()
            .map(|ids| {
                if ids.is_empty() || ids.len() > n_ctx {
                    return Err(format!(
                        "an input has {} tokens; it must have between 1 and {n_ctx}",
                        ids.len()
                    ));
                }
                self.metrics.prompt_tokens(ids.len(), 0);
                let mut cache = self.model.new_cache(ids.len());
                let h = self
                    .model
                    .hidden_states(ids, &mut cache)
                    .and_then(|h| Ok(h.mean(0)?.to_vec1::<f32>()?))
                    .map_err(|e| e.to_string())?;
                let norm = h.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                Ok(h.into_iter().map(|x| x / norm).collect())
            })
            .collect()
    }
}
