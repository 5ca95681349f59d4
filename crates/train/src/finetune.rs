//! Supervised fine-tuning (Llama 2-Chat's SFT, Touvron et al. 2023, 3.1): a checkpoint
//! trained further on conversations, with the loss on the assistant's tokens only and
//! samples packed into rows that cannot see each other. The loop is the pretraining loop's
//! (AdamW, cosine schedule, clipping, atomic checkpoints that resume bit for bit, one JSON
//! line of metrics per step); what differs is the data: a step is a number of rows, and
//! its loss the mean over the step's scored tokens, however they fall into micro-batches.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};

use ferrollama_generate::chat::TrainingSample;
use ferrollama_generate::ChatFormat;
use ferrollama_model::lora::LoraConfig;
use ferrollama_model::TrainableLlama;
use ferrollama_tokenizer::Tokenizer;

use crate::checkpoint::{self, LoopState};
use crate::error::{io, Error, Result};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::schedule::CosineSchedule;
use crate::sft_batches::{epoch_order, fit_to_length, lay_out, MicroBatch, Row};
use crate::trainer::{
    add_gradients, keep_metrics_through, split_gradients, Event, RunDir, StepMetrics, Summary,
};

/// Everything that shapes a fine-tuning run; written to the run directory as
/// `sft.toml`, and digested so that a resume with other settings is refused.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// The checkpoint fine-tuned (GGUF of any type the project reads, or an HF directory).
    pub model: PathBuf,
    /// Conversations (see [`crate::sft`] for the shapes).
    pub data: PathBuf,
    /// Held-out conversations; without them, `val_fraction` of `data` is held out.
    pub val_data: Option<PathBuf>,
    pub val_fraction: f64,
    /// Tokens per row; longer conversations are cut.
    pub seq_len: usize,
    /// Several conversations per row (positions and attention restart at each).
    pub pack: bool,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// Rows per forward pass.
    pub micro_batch: usize,
    /// Passes over the training conversations (Llama 2: 2), unless `steps` is set.
    pub epochs: u64,
    pub steps: Option<u64>,
    /// Peak learning rate (Llama 2's SFT: 2e-5).
    pub lr: f64,
    pub warmup: u64,
    pub min_lr_ratio: f64,
    pub optim: AdamWConfig,
    pub grad_clip: f64,
    /// Held-out loss every this many steps (and at the end); 0 = at the end only.
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// Seed of the data order (and of LoRA's initial A matrices and dropout masks).
    pub seed: u64,
    /// Train a LoRA adapter of this shape on the frozen model instead of every weight.
    pub lora: Option<LoraConfig>,
    /// QLoRA: the base's projections stay quantized as its GGUF file stores them
    /// (needs `lora`).
    pub qlora: bool,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            data: PathBuf::new(),
            val_data: None,
            val_fraction: 0.05,
            seq_len: 2048,
            pack: true,
            batch_size: 8,
            micro_batch: 4,
            epochs: 2,
            steps: None,
            lr: 2e-5,
            warmup: 0,
            min_lr_ratio: 0.1,
            optim: AdamWConfig::default(),
            grad_clip: 1.0,
            eval_every: 0,
            checkpoint_every: 50,
            keep_checkpoints: 2,
            seed: 1234,
            lora: None,
            qlora: false,
        }
    }
}

impl SftConfig {
    /// The settings a run directory's `sft.toml` holds.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        crate::config::read_toml(path)
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.batch_size == 0 || self.micro_batch == 0 || self.seq_len < 2 {
            return bad("batch_size and micro_batch must be at least 1, seq_len at least 2".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr {} must be positive", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) || !(0.0..1.0).contains(&self.val_fraction) {
            return bad("min_lr_ratio must be in [0, 1] and val_fraction in [0, 1)".into());
        }
        if self.qlora && self.lora.is_none() {
            return bad("QLoRA trains a LoRA adapter on the quantized base: give it a rank".into());
        }
        if self.checkpoint_every == 0 || (self.steps.is_none() && self.epochs == 0) {
            return bad("checkpoint_every and epochs (or steps) must be at least 1".into());
        }
        Ok(())
    }

    /// A digest of what a resumed run must share with the one it continues (all but the
    /// intervals and the step count, which may be raised).
    pub fn settings_digest(&self) -> String {
        let mut shaping = self.clone();
        shaping.eval_every = 0;
        shaping.checkpoint_every = 0;
        shaping.keep_checkpoints = 0;
        shaping.steps = None;
        crate::config::fnv_digest(&serde_json::to_string(&shaping).unwrap_or_default())
    }
}

/// The conversations of a run, encoded, cut to length, and split.
pub struct SftData {
    pub train: Vec<TrainingSample>,
    pub val: Vec<TrainingSample>,
    /// Conversations cut to `seq_len`, and dropped because nothing scored was left.
    pub cut: usize,
    pub dropped: usize,
}

impl SftData {
    /// Reads and encodes the run's conversations with the model's chat format.
    pub fn load(cfg: &SftConfig, format: &ChatFormat, tok: &Tokenizer) -> Result<Self> {
        let encode = |path: &Path| -> Result<Vec<TrainingSample>> {
            crate::sft::read_conversations(path)?
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    c.encode(format, tok).map_err(|e| {
                        Error::Config(format!("{}: record {}: {e}", path.display(), i + 1))
                    })
                })
                .collect()
        };
        let all = encode(&cfg.data)?;
        let (train, val) = match &cfg.val_data {
            Some(p) => (all, encode(p)?),
            None => hold_out(all, cfg.val_fraction),
        };
        let (train, cut, dropped) = fit_to_length(train, cfg.seq_len);
        let (val, cut_v, dropped_v) = fit_to_length(val, cfg.seq_len);
        if train.is_empty() {
            return Err(Error::Config(format!(
                "{}: no conversation is left to train on",
                cfg.data.display()
            )));
        }
        Ok(Self {
            train,
            val,
            cut: cut + cut_v,
            dropped: dropped + dropped_v,
        })
    }
}

/// Splits `all` into (train, held out), `fraction` of it held out by a fixed shuffle of
/// the indices (not the run's seed), so runs with different seeds are scored on the same
/// items.
pub fn hold_out<T>(all: Vec<T>, fraction: f64) -> (Vec<T>, Vec<T>) {
    let held = (fraction * all.len() as f64).ceil() as usize;
    let mut out: Vec<bool> = vec![false; all.len()];
    for &i in epoch_order(all.len(), 0x5f5f, 0).iter().take(held) {
        out[i] = true;
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (s, held_out) in all.into_iter().zip(out) {
        if held_out { &mut val } else { &mut train }.push(s);
    }
    (train, val)
}

/// Opens the model a fine-tuning run trains (the base kept quantized for QLoRA, a fresh
/// adapter attached for LoRA) and checks it against the tokenizer and the row length.
pub fn open_model(config: &SftConfig, tokenizer: &Tokenizer) -> Result<TrainableLlama> {
    config.check()?;
    let mut model = if config.qlora {
        TrainableLlama::open_quantized(&config.model, config.seq_len)?
    } else {
        TrainableLlama::open(&config.model, config.seq_len)?
    };
    if let Some(lora) = &config.lora {
        model.attach_lora(lora.clone(), config.seed, None)?;
    }
    if model.config.vocab_size != tokenizer.vocab_size() {
        return Err(Error::ModelMismatch(format!(
            "the model has {} token embeddings, its tokenizer {} tokens",
            model.config.vocab_size,
            tokenizer.vocab_size()
        )));
    }
    if config.seq_len > model.config.max_position_embeddings {
        return Err(Error::Config(format!(
            "seq_len {} exceeds the model's context of {}",
            config.seq_len, model.config.max_position_embeddings
        )));
    }
    Ok(model)
}

/// The optimizer and loop state a run starts from: fresh, or with `resume` those of the
/// last checkpoint under `run` (its weights loaded into `model`), which must have been
/// made with the settings `digest` names.
pub(crate) fn restore(
    run: &RunDir,
    model: &TrainableLlama,
    optim: &AdamWConfig,
    seed: u64,
    digest: &str,
    resume: bool,
) -> Result<(AdamW, LoopState)> {
    let fresh = LoopState {
        step: 0,
        sequences: 0,
        tokens: 0,
        seed,
        settings: digest.to_string(),
    };
    let Some(ck) = resume
        .then(|| checkpoint::load_latest(&run.checkpoints()))
        .transpose()?
        .flatten()
    else {
        return Ok((AdamW::new(optim.clone(), model), fresh));
    };
    if ck.state.settings != digest {
        return Err(Error::Resume(format!(
            "{}: the checkpoint was made with other settings (digest {}, now {digest}); resume with the run's own settings file and flags",
            ck.dir.display(),
            ck.state.settings
        )));
    }
    for (name, var) in model.params() {
        let t = ck.weights.get(name).ok_or_else(|| {
            Error::Resume(format!(
                "{}: the checkpoint lacks `{name}`",
                ck.dir.display()
            ))
        })?;
        if t.shape() != var.shape() {
            return Err(Error::Resume(format!(
                "{}: `{name}` has shape {:?}, the model {:?}",
                ck.dir.display(),
                t.dims(),
                var.dims()
            )));
        }
        var.set(t)?;
    }
    let mut optimizer = AdamW::new(optim.clone(), model);
    optimizer.load_state(model, &ck.optimizer, ck.state.step)?;
    Ok((optimizer, ck.state))
}

/// Writes a checkpoint of the trained parameters, the optimizer and the loop state
/// (after syncing the metrics written so far) and redraws the loss plots.
pub(crate) fn save_checkpoint(
    run: &RunDir,
    model: &TrainableLlama,
    optimizer: &AdamW,
    state: &LoopState,
    keep: usize,
    metrics: &std::fs::File,
) -> Result<PathBuf> {
    metrics.sync_all().map_err(|e| io(&run.metrics(), e))?;
    let weights = model
        .params()
        .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
        .collect();
    let dir = checkpoint::save(
        &run.checkpoints(),
        &weights,
        &optimizer.state_tensors(model)?,
        state,
        keep,
    )?;
    crate::trainer::plot_run(run)?;
    Ok(dir)
}

/// Clips a step's summed gradients at global norm `clip` (0: no clipping) and updates the
/// model; returns the norm before clipping.
pub(crate) fn optimizer_step(
    model: &TrainableLlama,
    optimizer: &mut AdamW,
    sums: &[f64],
    sizes: &[usize],
    clip: f64,
    lr: f64,
) -> Result<f64> {
    let mut grads = split_gradients(sums, sizes);
    let clip = if clip > 0.0 { clip } else { f64::INFINITY };
    let norm = clip_grad_norm(&mut grads, clip);
    optimizer.step(model, &grads, lr)?;
    Ok(norm)
}

/// The run's `metrics.jsonl`, opened to append, and its path.
pub(crate) fn open_metrics(run: &RunDir) -> Result<(std::fs::File, PathBuf)> {
    let path = run.metrics();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    Ok((file, path))
}

/// A non-zero key from three numbers (splitmix64's finaliser over their mix).
pub(crate) fn mix(seed: u64, step: u64, i: u64) -> u64 {
    let mut z =
        seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// Writes the attached LoRA adapter as PEFT does: `adapter_config.json` and
/// `adapter_model.safetensors` (f32, `base_model.model.` names) in `dir`.
pub fn save_peft_adapter(model: &TrainableLlama, dir: &Path, base_model: &str) -> Result<()> {
    let cfg = model
        .lora_config()
        .ok_or_else(|| Error::Config("no LoRA adapter is attached".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    // The adapter's matrices only: a head trained beside them (PPO's value head) is not
    // part of it.
    let tensors = model
        .params()
        .filter(|(n, _)| n.contains(".lora_"))
        .map(|(n, v)| {
            (
                format!("{}{n}", ferrollama_model::lora::PEFT_PREFIX),
                v.as_tensor().clone(),
            )
        })
        .collect();
    checkpoint::save_tensors(&dir.join("adapter_model.safetensors"), &tensors)?;
    let json = serde_json::to_string_pretty(&cfg.to_peft_json(base_model))
        .map_err(|e| Error::Internal(format!("encoding adapter_config.json: {e}")))?;
    checkpoint::write_synced(&dir.join("adapter_config.json"), json.as_bytes())
}

/// A fine-tuning run.
pub struct FineTuner<'a> {
    pub config: SftConfig,
    pub model: TrainableLlama,
    pub optimizer: AdamW,
    pub data: SftData,
    tokenizer: &'a Tokenizer,
    run: RunDir,
    state: LoopState,
    /// Each epoch's rows, laid out when first reached.
    epochs: Vec<Vec<Row>>,
}

impl<'a> FineTuner<'a> {
    /// Opens the model, encodes the data, and with `resume` restores the last checkpoint
    /// in `out`.
    pub fn new(
        config: SftConfig,
        data: SftData,
        tokenizer: &'a Tokenizer,
        out: &Path,
        resume: bool,
    ) -> Result<Self> {
        let model = open_model(&config, tokenizer)?;
        let run = RunDir {
            root: out.to_path_buf(),
        };
        std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
        let digest = config.settings_digest();
        let (optimizer, state) =
            restore(&run, &model, &config.optim, config.seed, &digest, resume)?;
        let text = toml::to_string_pretty(&config)
            .map_err(|e| Error::Internal(format!("encoding the config: {e}")))?;
        checkpoint::write_synced(&run.root.join("sft.toml"), text.as_bytes())?;
        keep_metrics_through(&run.metrics(), state.step)?;
        Ok(Self {
            config,
            model,
            optimizer,
            data,
            tokenizer,
            run,
            state,
            epochs: Vec::new(),
        })
    }

    /// Steps done so far.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// Optimizer steps of one epoch (the rows of epoch `e` in batches).
    fn steps_in_epoch(&mut self, e: usize) -> u64 {
        self.epoch_rows(e).len().div_ceil(self.config.batch_size) as u64
    }

    fn epoch_rows(&mut self, e: usize) -> &[Row] {
        while self.epochs.len() <= e {
            let k = self.epochs.len() as u64;
            let order = epoch_order(self.data.train.len(), self.config.seed, k);
            let rows = lay_out(
                &self.data.train,
                &order,
                self.config.seq_len,
                self.config.pack,
            );
            self.epochs.push(rows);
        }
        &self.epochs[e]
    }

    /// The steps the run takes: `steps`, or whole epochs.
    pub fn total_steps(&mut self) -> u64 {
        match self.config.steps {
            Some(n) => n,
            None => (0..self.config.epochs as usize)
                .map(|e| self.steps_in_epoch(e))
                .sum(),
        }
    }

    /// The rows of step `step` (0-based): epochs follow one another, a short last batch
    /// ending each.
    fn rows_of_step(&mut self, mut step: u64) -> Vec<Row> {
        let mut e = 0;
        loop {
            let n = self.steps_in_epoch(e);
            if step < n {
                let b = self.config.batch_size;
                let rows = self.epoch_rows(e);
                let from = step as usize * b;
                return rows[from..(from + b).min(rows.len())].to_vec();
            }
            step -= n;
            e += 1;
        }
    }

    /// Loss summed over the scored tokens of `rows` (as a tensor to differentiate, in
    /// micro-batches: `each` is called with each micro-batch's summed loss).
    fn for_micro_batches(
        &self,
        rows: &[Row],
        dropout_step: Option<u64>,
        each: &mut dyn FnMut(Tensor, usize) -> Result<()>,
    ) -> Result<()> {
        let pad = self.tokenizer.eos().unwrap_or(0);
        for (i, chunk) in rows.chunks(self.config.micro_batch).enumerate() {
            // LoRA dropout masks from the step and the micro-batch, so a step replays
            // exactly; none while evaluating.
            self.model.set_dropout_key(match dropout_step {
                Some(step) => mix(self.config.seed, step, i as u64),
                None => 0,
            });
            let refs: Vec<&Row> = chunk.iter().collect();
            let mb = MicroBatch::new(&refs, pad)?;
            if mb.scored.is_empty() {
                continue;
            }
            let x = Tensor::from_slice(&mb.tokens, (mb.rows, mb.t), &Device::Cpu)?;
            let mean = self
                .model
                .loss_on(&x, &mb.packing, &mb.scored, &mb.targets)?;
            each((mean * mb.scored.len() as f64)?, mb.scored.len())?;
        }
        Ok(())
    }

    /// Mean loss per scored token of the held-out conversations (None without any).
    pub fn validation_loss(&self) -> Result<Option<f64>> {
        if self.data.val.is_empty() {
            return Ok(None);
        }
        let order: Vec<usize> = (0..self.data.val.len()).collect();
        let rows = lay_out(
            &self.data.val,
            &order,
            self.config.seq_len,
            self.config.pack,
        );
        let (mut total, mut count) = (0.0f64, 0usize);
        self.for_micro_batches(&rows, None, &mut |sum, n| {
            total += sum.detach().to_scalar::<f32>()? as f64;
            count += n;
            Ok(())
        })?;
        Ok((count > 0).then(|| total / count as f64))
    }

    /// Runs to the last step or until `stop` is set (then checkpoints where it is).
    pub fn run(&mut self, stop: &AtomicBool, on_event: &mut dyn FnMut(Event)) -> Result<Summary> {
        let cfg = self.config.clone();
        let total_steps = self.total_steps();
        let schedule = CosineSchedule {
            peak: cfg.lr,
            warmup: cfg.warmup,
            total: total_steps,
            min_ratio: cfg.min_lr_ratio,
        };
        let count = |s: &[TrainingSample]| s.iter().map(|s| s.tokens.len()).sum::<usize>();
        on_event(Event::Started {
            start_step: self.state.step,
            total_steps,
            parameters: self.model.num_parameters(),
            train_tokens: count(&self.data.train),
            val_tokens: count(&self.data.val),
        });
        if self.state.step == 0 {
            if let Some(v) = self.validation_loss()? {
                on_event(Event::InitialValidation { val_loss: v });
            }
        }
        let (mut metrics_file, path) = open_metrics(&self.run)?;
        let sizes: Vec<usize> = self.model.params().map(|(_, v)| v.elem_count()).collect();
        let mut sums = vec![0.0f64; sizes.iter().sum()];
        let (mut last, mut stopped, mut saved_at) = (None, false, self.state.step);
        while self.state.step < total_steps {
            if stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
            let started = Instant::now();
            let lr = schedule.lr(self.state.step);
            let rows = self.rows_of_step(self.state.step);
            let scored: usize = rows.iter().map(|r| r.targets.len()).sum();
            let tokens: usize = rows.iter().map(|r| r.tokens.len()).sum();
            sums.fill(0.0);
            let mut loss_sum = 0.0f64;
            let model = &self.model;
            self.for_micro_batches(&rows, Some(self.state.step), &mut |sum, _| {
                loss_sum += sum.to_scalar::<f32>()? as f64;
                let store = (sum / scored as f64)?.backward()?;
                add_gradients(&store, model, &mut sums)
            })?;
            let loss = loss_sum / scored.max(1) as f64;
            if !loss.is_finite() {
                return Err(Error::Diverged {
                    step: self.state.step + 1,
                    loss,
                });
            }
            let grad_norm = optimizer_step(
                &self.model,
                &mut self.optimizer,
                &sums,
                &sizes,
                cfg.grad_clip,
                lr,
            )?;
            self.state.step += 1;
            self.state.sequences += rows.len() as u64;
            self.state.tokens += tokens as u64;
            let step = self.state.step;
            let mut m = StepMetrics {
                step,
                loss,
                lr,
                grad_norm,
                tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
                tokens: self.state.tokens,
                val_loss: None,
                val_ppl: None,
            };
            let last_step = step == total_steps;
            if last_step || (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every)) {
                m.val_loss = self.validation_loss()?;
                m.val_ppl = m.val_loss.map(f64::exp);
            }
            let line = serde_json::to_string(&m)
                .map_err(|e| Error::Internal(format!("encoding metrics: {e}")))?;
            writeln!(metrics_file, "{line}").map_err(|e| io(&path, e))?;
            on_event(Event::Step(&m));
            if last_step || step.is_multiple_of(cfg.checkpoint_every) {
                self.checkpoint(&metrics_file, on_event)?;
                saved_at = step;
            }
            last = Some(m);
        }
        if stopped && saved_at != self.state.step {
            self.checkpoint(&metrics_file, on_event)?;
        }
        Ok(Summary {
            steps: self.state.step,
            last,
            stopped,
        })
    }

    fn checkpoint(&self, metrics: &std::fs::File, on_event: &mut dyn FnMut(Event)) -> Result<()> {
        let dir = save_checkpoint(
            &self.run,
            &self.model,
            &self.optimizer,
            &self.state,
            self.config.keep_checkpoints,
            metrics,
        )?;
        on_event(Event::Checkpoint(&dir));
        Ok(())
    }
}
