//! The engine thread: it owns the model and drives `ferrollama_generate::Engine` (the
//! decode engine that chat and generate run too), taking work from the request handlers
//! between steps and sending each request's events back on its own channel. A request
//! whose client went away is cancelled before the next step, freeing its slot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferrollama_generate::engine::{Engine, Job, JobId, Observer};
use ferrollama_generate::{Bundle, GenerateParams};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

pub use ferrollama_generate::engine::{Event, Usage};

/// One sequence to generate.
pub struct GenerateJob {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// Alternatives to report with each token's log-probability (None: no logprobs).
    pub top_logprobs: Option<usize>,
    /// The model's selectable adapter to run with, if any.
    pub adapter: Option<usize>,
    /// Which of a request's choices this is; its events carry it.
    pub index: usize,
    pub events: mpsc::UnboundedSender<(usize, Event)>,
}

/// Texts to embed: the L2-normalised mean of each one's final hidden states.
pub struct EmbedJob {
    pub inputs: Vec<Vec<u32>>,
    pub adapter: Option<usize>,
    pub reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// Work the engine accepts.
pub enum Work {
    Generate(Box<GenerateJob>),
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

/// The server's metrics are the engine's observer.
impl Observer for Metrics {
    fn prompt_tokens(&self, total: usize, cached: usize) {
        Metrics::prompt_tokens(self, total, cached);
    }
    fn first_token(&self, latency: Duration) {
        Metrics::first_token(self, latency);
    }
    fn generated(&self, n: usize) {
        Metrics::generated(self, n);
    }
}

/// Starts the engine thread, which owns `bundle`'s model. It ends when every handle is
/// dropped and its work is done.
pub fn start(
    bundle: Bundle,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<EngineHandle> {
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let thread_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("ferrollama-engine".into())
        .spawn(move || {
            let engine = Engine::new(
                &bundle.model,
                &bundle.tokenizer,
                cfg.parallel,
                cfg.n_ctx_slot,
            );
            Runner {
                engine,
                rx,
                metrics: thread_metrics,
                requests: HashMap::new(),
                next_id: 0,
            }
            .run()
        })?;
    Ok(EngineHandle {
        tx,
        metrics,
        n_ctx_slot: cfg.n_ctx_slot,
    })
}

/// Where a running job's events go.
struct Request {
    index: usize,
    events: mpsc::UnboundedSender<(usize, Event)>,
}

struct Runner<'a> {
    engine: Engine<'a>,
    rx: mpsc::Receiver<Work>,
    metrics: Arc<Metrics>,
    requests: HashMap<JobId, Request>,
    next_id: JobId,
}

impl Runner<'_> {
    fn run(mut self) {
        let mut open = true;
        while open || self.engine.busy() > 0 {
            open = self.admit(open);
            self.drop_abandoned();
            self.metrics.set_active(self.engine.busy());
            if self.engine.busy() > 0 {
                let (metrics, requests) = (&*self.metrics, &mut self.requests);
                self.engine.step(metrics, &mut |id, event| {
                    let last = matches!(event, Event::Done(_) | Event::Error(_));
                    if let Some(r) = requests.get(&id) {
                        // A closed channel is noticed by `drop_abandoned`.
                        let _ = r.events.send((r.index, event));
                    }
                    if last {
                        requests.remove(&id);
                    }
                });
            }
            self.metrics.set_active(self.engine.busy());
        }
    }

    /// Takes queued work while a slot is free; waits for work when nothing runs. Returns
    /// whether the queue is still open.
    fn admit(&mut self, mut open: bool) -> bool {
        while open && self.engine.has_free_slot() {
            let work = if self.engine.busy() == 0 {
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
                Work::Generate(job) => self.place(*job),
                Work::Embed(job) => {
                    let _ =
                        job.reply
                            .send(self.engine.embed(&job.inputs, job.adapter, &*self.metrics));
                }
            }
        }
        open
    }

    fn place(&mut self, job: GenerateJob) {
        let id = self.next_id;
        self.next_id += 1;
        let placed = self.engine.place(
            Job {
                id,
                prompt: job.prompt,
                params: job.params,
                top_logprobs: job.top_logprobs,
                adapter: job.adapter,
            },
            &*self.metrics,
        );
        match placed {
            Ok(()) => {
                self.requests.insert(
                    id,
                    Request {
                        index: job.index,
                        events: job.events,
                    },
                );
            }
            Err(event) => {
                let _ = job.events.send((job.index, event));
            }
        }
    }

    /// Frees the slots of requests whose client went away.
    fn drop_abandoned(&mut self) {
        let gone: Vec<JobId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.requests.remove(&id);
            if self.engine.cancel(id) {
                self.metrics.cancelled();
            }
        }
    }
}
