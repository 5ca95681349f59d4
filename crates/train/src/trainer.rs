//! The pretraining loop, shaped like llm.c's `train_gpt2.c` main: for each step, the
//! micro-batches' forward, loss and backward with gradients summed, clipping, the AdamW
//! update at the scheduled rate; validation and checkpoints at intervals; one JSON line
//! of metrics per step. The run directory holds everything needed to resume it exactly.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use ferrollama_tokenizer::Tokenizer;

use crate::checkpoint::{self, LoopState};
use crate::collective::{Collective, Solo};
use crate::config::TrainConfig;
use crate::data::{Batches, Corpus};
use crate::error::{io, Error, Result};
use crate::optim::{clip_grad_norm, AdamW};
use crate::schedule::CosineSchedule;
use ferrollama_model::TrainableLlama;

/// One optimizer step's figures, as written to `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepMetrics {
    /// Optimizer steps done, counting this one.
    pub step: u64,
    /// Mean training loss over the step's tokens (nats).
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// Training tokens consumed so far.
    pub tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_ppl: Option<f64>,
}

/// What the loop reports as it goes, for a progress display.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The run is about to take its first step (`start_step` > 0 when resumed).
    Started {
        start_step: u64,
        total_steps: u64,
        parameters: usize,
        train_tokens: usize,
        val_tokens: usize,
    },
    Step(&'a StepMetrics),
    /// The validation loss of the checkpoint a run starts from (`init`), before any step.
    InitialValidation {
        val_loss: f64,
    },
    /// Text sampled from the model at an evaluation step.
    Sample {
        step: u64,
        text: &'a str,
    },
    Checkpoint(&'a Path),
}

/// The start of the text sampled at evaluations, and its length in tokens.
const SAMPLE_PROMPT: &str = "The";
const SAMPLE_TOKENS: usize = 48;

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Steps done in all (including those before a resume).
    pub steps: u64,
    pub last: Option<StepMetrics>,
    /// Whether the stop flag ended the run before its last step.
    pub stopped: bool,
}

/// Paths inside a run directory.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
}

/// The pieces of a run, built once.
pub struct Trainer<'a> {
    pub config: TrainConfig,
    pub model: TrainableLlama,
    pub optimizer: AdamW,
    corpus: Corpus,
    run: RunDir,
    tokenizer: &'a Tokenizer,
    state: LoopState,
    group: &'a dyn Collective,
}

impl<'a> Trainer<'a> {
    /// Sets up a run in `out`: tokenizes the data (cached under `data_cache`), and either
    /// initialises the model from the seed or, with `resume`, restores the last checkpoint.
    pub fn new(
        config: TrainConfig,
        tokenizer: &'a Tokenizer,
        out: &Path,
        data_cache: &Path,
        resume: bool,
    ) -> Result<Self> {
        Self::new_in_group(config, tokenizer, out, data_cache, resume, &Solo)
    }

    /// As [`Trainer::new`], as one rank of `group`: every rank must call it with the same
    /// settings. Rank 0 tokenizes the data into the cache first and alone writes the run
    /// directory; every rank reads the checkpoint it resumes from, so across machines
    /// `out` and `data_cache` must be shared (or copied) directories.
    pub fn new_in_group(
        config: TrainConfig,
        tokenizer: &'a Tokenizer,
        out: &Path,
        data_cache: &Path,
        resume: bool,
        group: &'a dyn Collective,
    ) -> Result<Self> {
        config.check()?;
        let accumulation = config.accumulation()?;
        if !accumulation.is_multiple_of(group.size()) {
            return Err(Error::Config(format!(
                "{accumulation} micro-batches per step do not divide among {} processes; choose batch_tokens = a multiple of seq_len x micro_batch x processes",
                group.size()
            )));
        }
        let run = RunDir {
            root: out.to_path_buf(),
        };
        std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
        // The shard cache is written by one process: a second one renaming its own copy
        // into place would fail.
        let corpus = if group.is_leader() {
            let corpus = Corpus::prepare(&config.data, tokenizer, data_cache);
            group.barrier()?;
            corpus?
        } else {
            group.barrier()?;
            Corpus::prepare(&config.data, tokenizer, data_cache)?
        };
        let shape = config.model_config(tokenizer.vocab_size())?;
        let digest = config.settings_digest();
        let saved = if resume {
            checkpoint::load_latest(&run.checkpoints())?
        } else {
            None
        };
        let (model, optimizer, state) = match saved {
            Some(ck) => {
                if ck.state.settings != digest {
                    return Err(Error::Resume(format!(
                        "{}: the checkpoint was made with other settings (digest {}, now {digest}); resume with the run's own config.toml and flags",
                        ck.dir.display(),
                        ck.state.settings
                    )));
                }
                let model = TrainableLlama::from_tensors(shape, ck.weights, config.seq_len)?;
                let mut opt = AdamW::new(config.optim.clone(), &model);
                opt.load_state(&model, &ck.optimizer, ck.state.step)?;
                (model, opt, ck.state)
            }
            None => {
                let model = match &config.init {
                    Some(path) => TrainableLlama::open(path, config.seq_len)?,
                    None => TrainableLlama::init(shape, config.seed, config.seq_len)?,
                };
                let opt = AdamW::new(config.optim.clone(), &model);
                let state = LoopState {
                    step: 0,
                    sequences: 0,
                    tokens: 0,
                    seed: config.seed,
                    settings: digest,
                };
                (model, opt, state)
            }
        };
        if group.is_leader() {
            let text = toml::to_string_pretty(&config)
                .map_err(|e| Error::Internal(format!("encoding the config: {e}")))?;
            checkpoint::write_synced(&run.config(), text.as_bytes())?;
            keep_metrics_through(&run.metrics(), state.step)?;
        }
        Ok(Self {
            config,
            model,
            optimizer,
            corpus,
            run,
            tokenizer,
            state,
            group,
        })
    }

    /// The tokenized training and validation data.
    pub fn corpus(&self) -> &Corpus {
        &self.corpus
    }

    /// The tokenizer the run trains with.
    pub fn tokenizer(&self) -> &Tokenizer {
        self.tokenizer
    }

    /// Steps done so far.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// Runs until the configured step count or until `stop` is set (then a checkpoint
    /// is written at the step reached, so nothing is lost).
    pub fn run(&mut self, stop: &AtomicBool, on_event: &mut dyn FnMut(Event)) -> Result<Summary> {
        let cfg = self.config.clone();
        let accumulation = cfg.accumulation()?;
        let schedule = CosineSchedule {
            peak: cfg.lr,
            warmup: cfg.warmup,
            total: cfg.steps,
            min_ratio: cfg.min_lr_ratio,
        };
        let mut train = Batches::new(&self.corpus.train, cfg.seq_len, cfg.seed)?;
        let val = Batches::new(&self.corpus.val, cfg.seq_len, cfg.seed).ok();
        on_event(Event::Started {
            start_step: self.state.step,
            total_steps: cfg.steps,
            parameters: self.model.num_parameters(),
            train_tokens: self.corpus.train.len(),
            val_tokens: self.corpus.val.len(),
        });
        let leader = self.group.is_leader();
        if let (true, 0, Some(_), Some(val)) = (leader, self.state.step, &cfg.init, &val) {
            on_event(Event::InitialValidation {
                val_loss: self.validation_loss(val)?,
            });
        }
        let mut metrics_file = if leader {
            let path = self.run.metrics();
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            Some(f)
        } else {
            None
        };
        // This rank's share of each step: micro-batches [first, first + share).
        let share = accumulation / self.group.size();
        let first = self.group.rank() * share;
        let sizes: Vec<usize> = self.model.params().map(|(_, v)| v.elem_count()).collect();
        let total: usize = sizes.iter().sum();
        // Gradients, then the loss sum and the stop votes, reduced in one call.
        let mut sums = vec![0.0f64; total + 2];
        let mut last = None;
        let mut stopped = false;
        let mut saved_at = self.state.step;
        while self.state.step < cfg.steps {
            // Alone, a stop request ends the run before the next step; in a group the
            // ranks vote with the step's sums so that they all stop after the same step.
            if self.group.size() == 1 && stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
            let started = Instant::now();
            let lr = schedule.lr(self.state.step);
            sums.fill(0.0);
            for j in first..first + share {
                let (inputs, targets) = micro_batch(
                    &mut train,
                    self.state.sequences + (j * cfg.micro_batch) as u64,
                    cfg.micro_batch,
                    cfg.seq_len,
                )?;
                let loss = self.loss(&inputs, &targets)?;
                sums[total] += loss.to_scalar::<f32>()? as f64;
                let scaled = (loss / accumulation as f64)?;
                let store = scaled.backward()?;
                add_gradients(&store, &self.model, &mut sums)?;
            }
            sums[total + 1] = f64::from(u8::from(stop.load(Ordering::Relaxed)));
            self.group.all_reduce_sum(&mut sums)?;
            self.state.sequences += (accumulation * cfg.micro_batch) as u64;
            let loss = sums[total] / accumulation as f64;
            let stop_voted = sums[total + 1] > 0.0;
            if !loss.is_finite() {
                return Err(Error::Diverged {
                    step: self.state.step + 1,
                    loss,
                });
            }
            let mut grads = split_gradients(&sums, &sizes);
            let grad_norm = if cfg.grad_clip > 0.0 {
                clip_grad_norm(&mut grads, cfg.grad_clip)
            } else {
                clip_grad_norm(&mut grads, f64::INFINITY)
            };
            self.optimizer.step(&self.model, &grads, lr)?;
            self.state.step += 1;
            self.state.tokens += cfg.batch_tokens as u64;
            let step = self.state.step;
            let elapsed = started.elapsed().as_secs_f64();
            let mut m = StepMetrics {
                step,
                loss,
                lr,
                grad_norm,
                tokens_per_s: cfg.batch_tokens as f64 / elapsed.max(1e-9),
                tokens: self.state.tokens,
                val_loss: None,
                val_ppl: None,
            };
            let last_step = step == cfg.steps;
            // Evaluation, metrics and checkpoints are the leader's; the other ranks go on
            // to the next step and wait for it in the all-reduce.
            if let (Some(metrics_file), true) = (&mut metrics_file, leader) {
                if let Some(val) = &val {
                    if last_step || (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every)) {
                        let v = self.validation_loss(val)?;
                        m.val_loss = Some(v);
                        m.val_ppl = Some(v.exp());
                    }
                }
                let line = serde_json::to_string(&m)
                    .map_err(|e| Error::Internal(format!("encoding metrics: {e}")))?;
                writeln!(metrics_file, "{line}").map_err(|e| io(&self.run.metrics(), e))?;
                on_event(Event::Step(&m));
                if m.val_loss.is_some() {
                    let text = crate::sample::sample_text(
                        &self.model,
                        self.tokenizer,
                        SAMPLE_PROMPT,
                        SAMPLE_TOKENS,
                        0.8,
                        cfg.seed ^ step,
                    )?;
                    on_event(Event::Sample { step, text: &text });
                }
                if last_step || step.is_multiple_of(cfg.checkpoint_every) {
                    self.checkpoint(metrics_file, on_event)?;
                    saved_at = step;
                }
            }
            last = Some(m);
            if stop_voted && !last_step {
                stopped = true;
                break;
            }
        }
        if stopped && saved_at != self.state.step {
            if let Some(f) = &metrics_file {
                self.checkpoint(f, on_event)?;
            }
        }
        Ok(Summary {
            steps: self.state.step,
            last,
            stopped,
        })
    }

    /// Mean next-token loss of `inputs` (b * t ids) against `targets`.
    fn loss(&self, inputs: &[u32], targets: &[u32]) -> Result<Tensor> {
        let t = self.config.seq_len;
        let b = inputs.len() / t;
        let x = Tensor::from_slice(inputs, (b, t), &Device::Cpu)?;
        Ok(self.model.loss(&x, targets)?)
    }

    /// Mean loss over the first `eval_sequences` validation sequences (all, if fewer).
    pub fn validation_loss(&self, val: &Batches) -> Result<f64> {
        let n = self
            .config
            .eval_sequences
            .min(val.sequences_per_epoch())
            .max(1);
        let mut total = 0.0;
        let mut i = 0;
        while i < n {
            let b = self.config.micro_batch.min(n - i);
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            for j in i..i + b {
                let (x, y) = val.in_order(j)?;
                xs.extend(x);
                ys.extend(y);
            }
            total += self.loss(&xs, &ys)?.detach().to_scalar::<f32>()? as f64 * b as f64;
            i += b;
        }
        Ok(total / n as f64)
    }

    /// Makes the metrics so far durable, writes a checkpoint and redraws the plots.
    fn checkpoint(&self, metrics: &std::fs::File, on_event: &mut dyn FnMut(Event)) -> Result<()> {
        metrics.sync_all().map_err(|e| io(&self.run.metrics(), e))?;
        let dir = self.save_checkpoint()?;
        self.plot()?;
        on_event(Event::Checkpoint(&dir));
        Ok(())
    }

    /// Redraws `loss.svg` and `loss.png` from `metrics.jsonl`.
    pub fn plot(&self) -> Result<()> {
        plot_run(&self.run)
    }

    /// Writes what a reference implementation needs to replay the first `steps` steps:
    /// `init.safetensors` (the weights now, before any step) and `batches.safetensors`
    /// (`inputs` and `targets`, i64, shaped (steps, accumulation, micro_batch, seq_len)).
    /// Only before the first step.
    pub fn dump_reference(&self, dir: &Path, steps: u64) -> Result<()> {
        if self.state.step != 0 {
            return Err(Error::Resume(
                "the reference dump is made before the first step; start a fresh run".into(),
            ));
        }
        let cfg = &self.config;
        let accumulation = cfg.accumulation()?;
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let weights = self
            .model
            .params()
            .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
            .collect();
        checkpoint::save_tensors(&dir.join("init.safetensors"), &weights)?;
        let mut train = Batches::new(&self.corpus.train, cfg.seq_len, cfg.seed)?;
        let per_step = accumulation * cfg.micro_batch;
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for i in 0..steps * per_step as u64 {
            let (x, y) = train.sequence(i)?;
            xs.extend(x.into_iter().map(i64::from));
            ys.extend(y.into_iter().map(i64::from));
        }
        let shape = (steps as usize, accumulation, cfg.micro_batch, cfg.seq_len);
        let mut batches = std::collections::BTreeMap::new();
        batches.insert(
            "inputs".to_string(),
            Tensor::from_vec(xs, shape, &Device::Cpu)?,
        );
        batches.insert(
            "targets".to_string(),
            Tensor::from_vec(ys, shape, &Device::Cpu)?,
        );
        checkpoint::save_tensors(&dir.join("batches.safetensors"), &batches)
    }

    /// Writes a checkpoint of the current step.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let weights = self
            .model
            .params()
            .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
            .collect();
        checkpoint::save(
            &self.run.checkpoints(),
            &weights,
            &self.optimizer.state_tensors(&self.model)?,
            &self.state,
            self.config.keep_checkpoints,
        )
    }
}

/// `count` consecutive sequences of the run's order from `start`, flattened.
fn micro_batch(
    batches: &mut Batches,
    start: u64,
    count: usize,
    seq_len: usize,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut xs = Vec::with_capacity(count * seq_len);
    let mut ys = Vec::with_capacity(count * seq_len);
    for i in 0..count as u64 {
        let (x, y) = batches.sequence(start + i)?;
        xs.extend(x);
        ys.extend(y);
    }
    Ok((xs, ys))
}

/// Adds the gradient of every parameter of `model` in `store` to `sums` (laid out in
/// parameter order), in f64 so that accumulating micro-batches loses nothing.
pub(crate) fn add_gradients(
    store: &candle_core::backprop::GradStore,
    model: &TrainableLlama,
    sums: &mut [f64],
) -> Result<()> {
    let mut offset = 0;
    for (name, var) in model.params() {
        let g = store
            .get(var.as_tensor())
            .ok_or_else(|| Error::Internal(format!("no gradient reached `{name}`")))?;
        let g = g.flatten_all()?.to_vec1::<f32>()?;
        sums[offset..offset + g.len()]
            .par_chunks_mut(1 << 14)
            .zip(g.par_chunks(1 << 14))
            .for_each(|(a, g)| a.iter_mut().zip(g).for_each(|(a, &x)| *a += x as f64));
        offset += var.elem_count();
    }
    Ok(())
}

/// The summed gradients (f64, all parameters end to end) as one f32 buffer per parameter
/// of `sizes`, for clipping and the optimizer.
pub(crate) fn split_gradients(sums: &[f64], sizes: &[usize]) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(sizes.len());
    let mut offset = 0;
    for &n in sizes {
        out.push(
            sums[offset..offset + n]
                .par_iter()
                .map(|&x| x as f32)
                .collect(),
        );
        offset += n;
    }
    out
}

/// Redraws a run directory's `loss.svg` and `loss.png` from its `metrics.jsonl`.
pub(crate) fn plot_run(run: &RunDir) -> Result<()> {
    let path = run.metrics();
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    let metrics: Vec<StepMetrics> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    crate::plot::plot_losses(&metrics, &run.root)
}

/// Drops metric lines of steps after `step` (written after the checkpoint a run resumes
/// from), so the file tells one history. A fresh run (`step` 0) starts an empty file.
pub(crate) fn keep_metrics_through(path: &Path, step: u64) -> Result<()> {
    let kept = match std::fs::File::open(path) {
        Ok(f) => {
            let mut kept = String::new();
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| io(path, e))?;
                let s = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
                if s.is_some_and(|s| s <= step) {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
            kept
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(path, e)),
    };
    let tmp = path.with_extension("jsonl.tmp");
    checkpoint::write_synced(&tmp, kept.as_bytes())?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}
