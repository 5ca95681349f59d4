//! Many generations at once on the decode engine: jobs placed as slots free up, in order,
//! and run to the end (rejection sampling's K samples per prompt, held-out measurements,
//! context distillation). Jobs that share a prompt compute it once (the engine copies the
//! shared prefix between slots). A job's tokens depend only on its prompt and settings
//! (its own seeded sampler), not on which jobs ran beside it.

use std::sync::atomic::{AtomicBool, Ordering};

use ferrollama_model::Llama;
use ferrollama_tokenizer::Tokenizer;

use crate::engine::{Engine, Event, Job, NoObserver};
use crate::error::{Error, Result};
use crate::generator::FinishReason;

/// One finished generation of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Sampled token ids (without an end-of-generation token).
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
}

/// Runs `jobs` (their ids are ignored: results come back in the jobs' order) on an engine
/// of `parallel` slots of `n_ctx_slot` positions. `progress` is told the number finished
/// after each; `stop` set between steps abandons the batch (returns `Ok(None)`). A job that
/// fails (a prompt too long for a slot, bad settings) fails the batch, naming the job.
pub fn generate_all(
    model: &Llama,
    tokenizer: &Tokenizer,
    jobs: Vec<Job>,
    parallel: usize,
    n_ctx_slot: usize,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(usize),
) -> Result<Option<Vec<Completion>>> {
    let total = jobs.len();
    let mut engine = Engine::new(model, tokenizer, parallel, n_ctx_slot);
    let mut out: Vec<Option<Completion>> = vec![None; total];
    let mut texts: Vec<(Vec<u32>, String)> = vec![(Vec::new(), String::new()); total];
    let mut pending = jobs.into_iter().enumerate().peekable();
    let mut finished = 0;
    while finished < total {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        while engine.has_free_slot() {
            let Some((i, mut job)) = pending.next() else {
                break;
            };
            job.id = i as u64;
            engine.place(job, &NoObserver).map_err(|e| failed(i, e))?;
        }
        let mut error = None;
        engine.step(&NoObserver, &mut |id, event| {
            let i = id as usize;
            match event {
                Event::Token { id, text, .. } => {
                    texts[i].0.push(id);
                    texts[i].1.push_str(&text);
                }
                Event::Text(t) => texts[i].1.push_str(&t),
                Event::Done(usage) => {
                    let (ids, text) = std::mem::take(&mut texts[i]);
                    out[i] = Some(Completion {
                        ids,
                        text,
                        finish: usage.finish,
                    });
                    finished += 1;
                    progress(finished);
                }
                e @ Event::Error(_) => error = Some(failed(i, e)),
            }
        });
        if let Some(e) = error {
            return Err(e);
        }
        if engine.busy() == 0 && pending.peek().is_none() && finished < total {
            return Err(Error::Input("the engine dropped a job".into()));
        }
    }
    Ok(Some(out.into_iter().flatten().collect()))
}

fn failed(job: usize, e: Event) -> Error {
    match e {
        Event::Error(msg) => Error::Input(format!("generation {}: {msg}", job + 1)),
        other => Error::Input(format!("generation {}: unexpected {other:?}", job + 1)),
    }
}
