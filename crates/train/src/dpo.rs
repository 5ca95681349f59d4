//! Direct preference optimisation (Rafailov et al. 2023): the policy is trained so that
//! its log-probability ratio to a frozen reference favours each pair's chosen answer,
//! with the loss -log σ(β h) where
//!
//!   h = (log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected)),
//!
//! the log-probabilities summed over each answer's tokens (the assistant's, as SFT scores
//! them). IPO (Azar et al. 2023) is the option `(h - 1/(2β))²`. The reference is the model
//! the run starts from: its log-probabilities are computed once, before the first step, and
//! kept in the run directory (`reference.json`), so no second copy of the model is held and
//! a resumed run uses the same numbers. With LoRA the start is the base model exactly
//! (B = 0). The loop is fine-tuning's (AdamW, cosine schedule, clipping, checkpoints that
//! resume bit for bit); a step is a number of pairs, each pair two rows of one forward.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use ferrollama_generate::chat::TrainingSample;
use ferrollama_generate::ChatFormat;
use ferrollama_model::TrainableLlama;
use ferrollama_tokenizer::Tokenizer;

use crate::checkpoint::LoopState;
use crate::error::{io, Error, Result};
use crate::finetune::{hold_out, open_model, restore, save_checkpoint, SftConfig};
use crate::optim::{clip_grad_norm, AdamW};
use crate::schedule::CosineSchedule;
use crate::sft_batches::{epoch_order, fit_to_length, lay_out, MicroBatch};
use crate::trainer::{add_gradients, keep_metrics_through, split_gradients, RunDir, Summary};

/// The preference loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreferenceLoss {
    /// DPO's -log σ(β h).
    Sigmoid,
    /// IPO's (h - 1/(2β))².
    Ipo,
}

/// Everything that shapes a DPO run; written to the run directory as `dpo.toml`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// How far the policy may move from the reference (DPO's β; 0.1 in the paper).
    pub beta: f64,
    pub loss: PreferenceLoss,
    /// The model, data (pairs), schedule, batch (in pairs) and LoRA settings.
    pub tuning: SftConfig,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss: PreferenceLoss::Sigmoid,
            tuning: SftConfig {
                lr: 1e-6,
                epochs: 1,
                batch_size: 8,
                micro_batch: 2,
                pack: false,
                ..SftConfig::default()
            },
        }
    }
}

impl DpoConfig {
    /// The settings a run directory's `dpo.toml` holds.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Invalid {
            file: path.display().to_string(),
            msg: e.to_string(),
        })
    }

    pub fn check(&self) -> Result<()> {
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(Error::Config(format!(
                "beta {} must be positive",
                self.beta
            )));
        }
        if self.tuning.lora.as_ref().is_some_and(|l| l.dropout > 0.0) {
            // The policy must be its reference's function at the start (h = 0).
            return Err(Error::Config(
                "DPO trains without LoRA dropout: set it to 0".into(),
            ));
        }
        self.tuning.check()
    }

    /// A digest of what a resumed run must share with the one it continues.
    pub fn settings_digest(&self) -> String {
        let own = format!(
            "{} {:?} {}",
            self.beta,
            self.loss,
            self.tuning.settings_digest()
        );
        crate::config::fnv_digest(&own)
    }

    /// One pair's loss from its h.
    fn pair_loss(&self, h: f64) -> f64 {
        match self.loss {
            // -log σ(βh) = log(1 + e^(-βh)), computed without overflow.
            PreferenceLoss::Sigmoid => softplus(-self.beta * h),
            PreferenceLoss::Ipo => (h - 0.5 / self.beta).powi(2),
        }
    }
}

fn softplus(u: f64) -> f64 {
    u.max(0.0) + (-u.abs()).exp().ln_1p()
}

/// A pair encoded: each side's tokens with its answer marked.
#[derive(Debug, Clone)]
pub struct PairSample {
    pub chosen: TrainingSample,
    pub rejected: TrainingSample,
}

/// The pairs of a run, encoded, cut to length and split.
pub struct PreferenceData {
    pub train: Vec<PairSample>,
    pub val: Vec<PairSample>,
    /// Pairs with a side cut to `seq_len`, and pairs dropped because a side then scored
    /// nothing.
    pub cut: usize,
    pub dropped: usize,
}

impl PreferenceData {
    /// Reads and encodes the run's pairs with the model's chat format.
    pub fn load(cfg: &SftConfig, format: &ChatFormat, tok: &Tokenizer) -> Result<Self> {
        let encode = |path: &Path| -> Result<Vec<PairSample>> {
            crate::prefs::read_pairs(path)?
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let side = |m| {
                        format.encode_for_training(m, tok).map_err(|e| {
                            Error::Config(format!("{}: record {}: {e}", path.display(), i + 1))
                        })
                    };
                    Ok(PairSample {
                        chosen: side(&p.chosen)?,
                        rejected: side(&p.rejected)?,
                    })
                })
                .collect()
        };
        let all = encode(&cfg.data)?;
        let (train, val) = match &cfg.val_data {
            Some(p) => (all, encode(p)?),
            None => hold_out(all, cfg.val_fraction),
        };
        let (mut cut, mut dropped) = (0, 0);
        let mut fit = |pairs: Vec<PairSample>| -> Vec<PairSample> {
            let mut kept = Vec::with_capacity(pairs.len());
            for p in pairs {
                let (c, c_cut, c_drop) = fit_to_length(vec![p.chosen], cfg.seq_len);
                let (r, r_cut, r_drop) = fit_to_length(vec![p.rejected], cfg.seq_len);
                cut += usize::from(c_cut + r_cut > 0);
                match (c.into_iter().next(), r.into_iter().next()) {
                    (Some(chosen), Some(rejected)) if c_drop + r_drop == 0 => {
                        kept.push(PairSample { chosen, rejected })
                    }
                    _ => dropped += 1,
                }
            }
            kept
        };
        let (train, val) = (fit(train), fit(val));
        if train.is_empty() {
            return Err(Error::Config(format!(
                "{}: no pair is left to train on",
                cfg.data.display()
            )));
        }
        Ok(Self {
            train,
            val,
            cut,
            dropped,
        })
    }
}

/// How a model ranks a set of pairs against the reference.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreferenceStats {
    /// Mean preference loss.
    pub loss: f64,
    /// Mean implicit reward margin β h.
    pub reward_margin: f64,
    /// Share of pairs with h > 0 (ties count half: at the start every h is 0).
    pub reward_accuracy: f64,
    /// Mean log π(chosen) - log π(rejected): how much more likely the model makes the
    /// chosen answer, reference aside.
    pub logp_margin: f64,
    /// Share of pairs whose chosen answer is the more likely (ties count half).
    pub logp_accuracy: f64,
}

impl PreferenceStats {
    /// From each pair's [log π(chosen), log π(rejected)] under the policy and the reference.
    fn new(cfg: &DpoConfig, policy: &[[f64; 2]], reference: &[[f64; 2]]) -> Self {
        let n = policy.len().max(1) as f64;
        let won = |x: f64| {
            if x > 0.0 {
                1.0
            } else if x == 0.0 {
                0.5
            } else {
                0.0
            }
        };
        let (mut s, mut rm, mut ra, mut lm, mut la) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (p, r) in policy.iter().zip(reference) {
            let h = (p[0] - r[0]) - (p[1] - r[1]);
            s += cfg.pair_loss(h);
            rm += cfg.beta * h;
            ra += won(h);
            lm += p[0] - p[1];
            la += won(p[0] - p[1]);
        }
        Self {
            loss: s / n,
            reward_margin: rm / n,
            reward_accuracy: ra / n,
            logp_margin: lm / n,
            logp_accuracy: la / n,
        }
    }
}

/// One DPO step's figures, as written to `metrics.jsonl` (the fields pretraining writes,
/// so the loss plots read them, and the preference figures).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DpoMetrics {
    pub step: u64,
    /// Mean preference loss over the step's pairs.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub tokens: u64,
    /// The training pairs' mean reward margin and accuracy this step.
    pub reward_margin: f64,
    pub reward_accuracy: f64,
    /// Held-out preference loss (for the plots) and the held-out figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val: Option<PreferenceStats>,
}

/// What a run reports as it goes.
pub enum DpoEvent<'a> {
    /// The reference log-probabilities are being computed for this many pairs (a fresh run).
    Reference {
        pairs: usize,
    },
    Started {
        start_step: u64,
        total_steps: u64,
        parameters: usize,
    },
    /// The held-out figures before the first step.
    Initial(&'a PreferenceStats),
    Step(&'a DpoMetrics),
    Checkpoint(&'a Path),
}

/// The reference's log-probabilities, as kept in the run directory.
#[derive(serde::Serialize, serde::Deserialize)]
struct Reference {
    settings: String,
    train: Vec<[f64; 2]>,
    val: Vec<[f64; 2]>,
}

/// A DPO run.
pub struct DpoTrainer<'a> {
    pub config: DpoConfig,
    pub model: TrainableLlama,
    pub optimizer: AdamW,
    pub data: PreferenceData,
    tokenizer: &'a Tokenizer,
    run: RunDir,
    state: LoopState,
    reference: Option<Reference>,
}

impl<'a> DpoTrainer<'a> {
    /// Opens the model and with `resume` restores the last checkpoint in `out` (and the
    /// reference log-probabilities the run computed at its start).
    pub fn new(
        config: DpoConfig,
        data: PreferenceData,
        tokenizer: &'a Tokenizer,
        out: &Path,
        resume: bool,
    ) -> Result<Self> {
        config.check()?;
        let model = open_model(&config.tuning, tokenizer)?;
        let run = RunDir {
            root: out.to_path_buf(),
        };
        std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
        let digest = config.settings_digest();
        let (optimizer, state) = restore(
            &run,
            &model,
            &config.tuning.optim,
            config.tuning.seed,
            &digest,
            resume,
        )?;
        let reference = if state.step > 0 {
            Some(Self::read_reference(&run, &digest, &data)?)
        } else {
            None
        };
        let text = toml::to_string_pretty(&config)
            .map_err(|e| Error::Internal(format!("encoding the config: {e}")))?;
        crate::checkpoint::write_synced(&run.root.join("dpo.toml"), text.as_bytes())?;
        keep_metrics_through(&run.metrics(), state.step)?;
        Ok(Self {
            config,
            model,
            optimizer,
            data,
            tokenizer,
            run,
            state,
            reference,
        })
    }

    fn reference_path(run: &RunDir) -> std::path::PathBuf {
        run.root.join("reference.json")
    }

    fn read_reference(run: &RunDir, digest: &str, data: &PreferenceData) -> Result<Reference> {
        let path = Self::reference_path(run);
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        let r: Reference = serde_json::from_str(&text).map_err(|e| Error::Invalid {
            file: path.display().to_string(),
            msg: e.to_string(),
        })?;
        if r.settings != digest
            || r.train.len() != data.train.len()
            || r.val.len() != data.val.len()
        {
            return Err(Error::Resume(format!(
                "{}: made for other settings or data",
                path.display()
            )));
        }
        Ok(r)
    }

    /// Steps done so far.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// Optimizer steps of one epoch.
    fn steps_per_epoch(&self) -> u64 {
        self.data
            .train
            .len()
            .div_ceil(self.config.tuning.batch_size) as u64
    }

    /// The steps the run takes: `steps`, or whole epochs.
    pub fn total_steps(&self) -> u64 {
        let t = &self.config.tuning;
        t.steps.unwrap_or(t.epochs * self.steps_per_epoch())
    }

    /// Indices of the training pairs of step `step` (0-based): epochs follow one
    /// another, each in its own seeded order, a short last batch ending each.
    fn pairs_of_step(&self, step: u64) -> Vec<usize> {
        let per_epoch = self.steps_per_epoch();
        let (epoch, k) = (step / per_epoch, (step % per_epoch) as usize);
        let order = epoch_order(self.data.train.len(), self.config.tuning.seed, epoch);
        let b = self.config.tuning.batch_size;
        order[k * b..((k + 1) * b).min(order.len())].to_vec()
    }

    /// The summed answer log-probabilities [chosen, rejected] of `pairs` under the model,
    /// as tensors to differentiate (one forward per micro-batch of pairs, each side a row),
    /// handed to `each` micro-batch by micro-batch.
    fn log_probs(
        &self,
        pairs: &[&PairSample],
        each: &mut dyn FnMut(Vec<[Tensor; 2]>) -> Result<()>,
    ) -> Result<()> {
        let pad = self.tokenizer.eos().unwrap_or(0);
        let seq_len = self.config.tuning.seq_len;
        for chunk in pairs.chunks(self.config.tuning.micro_batch) {
            let sides: Vec<TrainingSample> = chunk
                .iter()
                .flat_map(|p| [p.chosen.clone(), p.rejected.clone()])
                .collect();
            let order: Vec<usize> = (0..sides.len()).collect();
            let rows = lay_out(&sides, &order, seq_len, false);
            let mb = MicroBatch::new(&rows.iter().collect::<Vec<_>>(), pad)?;
            let mut groups = vec![(Vec::new(), Vec::new()); mb.rows];
            for (&i, &target) in mb.scored.iter().zip(&mb.targets) {
                let g = &mut groups[i as usize / mb.t];
                g.0.push(i);
                g.1.push(target);
            }
            let x = Tensor::from_slice(&mb.tokens, (mb.rows, mb.t), &Device::Cpu)?;
            let nll = self.model.summed_losses_on(&x, &mb.packing, &groups)?;
            let mut out = Vec::with_capacity(chunk.len());
            for two in nll.chunks_exact(2) {
                out.push([two[0].neg()?, two[1].neg()?]);
            }
            each(out)?;
        }
        Ok(())
    }

    /// The log-probabilities of `pairs` as numbers (no gradient kept).
    fn log_prob_values(&self, pairs: &[PairSample]) -> Result<Vec<[f64; 2]>> {
        let refs: Vec<&PairSample> = pairs.iter().collect();
        let mut out = Vec::with_capacity(pairs.len());
        self.log_probs(&refs, &mut |lp| {
            for [c, r] in lp {
                let v = |t: Tensor| -> Result<f64> { Ok(t.detach().to_scalar::<f32>()? as f64) };
                out.push([v(c)?, v(r)?]);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The held-out figures of the model as it is now (None without held-out pairs).
    pub fn validation(&self) -> Result<Option<PreferenceStats>> {
        let Some(reference) = &self.reference else {
            return Err(Error::Internal("no reference yet".into()));
        };
        if self.data.val.is_empty() {
            return Ok(None);
        }
        let policy = self.log_prob_values(&self.data.val)?;
        Ok(Some(PreferenceStats::new(
            &self.config,
            &policy,
            &reference.val,
        )))
    }

    /// Runs to the last step or until `stop` is set (then checkpoints where it is).
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(DpoEvent),
    ) -> Result<Summary> {
        let cfg = self.config.clone();
        let total_steps = self.total_steps();
        // No dropout anywhere (checked): every pass is the model's plain function.
        self.model.set_dropout_key(0);
        if self.reference.is_none() {
            on_event(DpoEvent::Reference {
                pairs: self.data.train.len() + self.data.val.len(),
            });
            let reference = Reference {
                settings: cfg.settings_digest(),
                train: self.log_prob_values(&self.data.train)?,
                val: self.log_prob_values(&self.data.val)?,
            };
            let text = serde_json::to_string(&reference)
                .map_err(|e| Error::Internal(format!("encoding the reference: {e}")))?;
            crate::checkpoint::write_synced(&Self::reference_path(&self.run), text.as_bytes())?;
            self.reference = Some(reference);
        }
        let schedule = CosineSchedule {
            peak: cfg.tuning.lr,
            warmup: cfg.tuning.warmup,
            total: total_steps,
            min_ratio: cfg.tuning.min_lr_ratio,
        };
        on_event(DpoEvent::Started {
            start_step: self.state.step,
            total_steps,
            parameters: self.model.num_parameters(),
        });
        if self.state.step == 0 {
            if let Some(v) = self.validation()? {
                on_event(DpoEvent::Initial(&v));
            }
        }
        let path = self.run.metrics();
        let mut metrics_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let sizes: Vec<usize> = self.model.params().map(|(_, v)| v.elem_count()).collect();
        let mut sums = vec![0.0f64; sizes.iter().sum()];
        let (mut stopped, mut saved_at) = (false, self.state.step);
        while self.state.step < total_steps {
            if stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
            let started = Instant::now();
            let lr = schedule.lr(self.state.step);
            let picked = self.pairs_of_step(self.state.step);
            let reference = &self
                .reference
                .as_ref()
                .ok_or_else(|| Error::Internal("no reference".into()))?
                .train;
            let pairs: Vec<&PairSample> = picked.iter().map(|&i| &self.data.train[i]).collect();
            let refs: Vec<[f64; 2]> = picked.iter().map(|&i| reference[i]).collect();
            let tokens: usize = pairs
                .iter()
                .map(|p| p.chosen.tokens.len() + p.rejected.tokens.len())
                .sum();
            sums.fill(0.0);
            let (model, n, beta) = (&self.model, pairs.len() as f64, cfg.beta);
            let mut policy: Vec<[f64; 2]> = Vec::with_capacity(pairs.len());
            self.log_probs(&pairs, &mut |lp| {
                let mut total: Option<Tensor> = None;
                for ([c, r], k) in lp.into_iter().zip(policy.len()..) {
                    let [rc, rr] = refs[k];
                    // h = (log π(c) - log π(r)) - (log π_ref(c) - log π_ref(r))
                    let h = ((&c - &r)? - (rc - rr))?;
                    let loss = match cfg.loss {
                        PreferenceLoss::Sigmoid => {
                            let u = (h.clone() * -beta)?;
                            (u.relu()? + (u.abs()?.neg()?.exp()? + 1.0)?.log()?)?
                        }
                        PreferenceLoss::Ipo => (h.clone() - 0.5 / beta)?.sqr()?,
                    };
                    total = Some(match total {
                        Some(t) => (t + loss)?,
                        None => loss,
                    });
                    let v = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
                    policy.push([v(&c)?, v(&r)?]);
                }
                match total {
                    Some(t) => add_gradients(&(t / n)?.backward()?, model, &mut sums),
                    None => Ok(()),
                }
            })?;
            let train = PreferenceStats::new(&cfg, &policy, &refs);
            if !train.loss.is_finite() {
                return Err(Error::Diverged {
                    step: self.state.step + 1,
                    loss: train.loss,
                });
            }
            let mut grads = split_gradients(&sums, &sizes);
            let clip = if cfg.tuning.grad_clip > 0.0 {
                cfg.tuning.grad_clip
            } else {
                f64::INFINITY
            };
            let grad_norm = clip_grad_norm(&mut grads, clip);
            self.optimizer.step(&self.model, &grads, lr)?;
            self.state.step += 1;
            self.state.sequences += 2 * pairs.len() as u64;
            self.state.tokens += tokens as u64;
            let step = self.state.step;
            let last_step = step == total_steps;
            let every = cfg.tuning.eval_every;
            let val = if last_step || (every > 0 && step.is_multiple_of(every)) {
                self.validation()?
            } else {
                None
            };
            let m = DpoMetrics {
                step,
                loss: train.loss,
                lr,
                grad_norm,
                tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
                tokens: self.state.tokens,
                reward_margin: train.reward_margin,
                reward_accuracy: train.reward_accuracy,
                val_loss: val.map(|v| v.loss),
                val,
            };
            let line = serde_json::to_string(&m)
                .map_err(|e| Error::Internal(format!("encoding metrics: {e}")))?;
            writeln!(metrics_file, "{line}").map_err(|e| io(&path, e))?;
            on_event(DpoEvent::Step(&m));
            if last_step || step.is_multiple_of(cfg.tuning.checkpoint_every) {
                self.checkpoint(&metrics_file, on_event)?;
                saved_at = step;
            }
        }
        if stopped && saved_at != self.state.step {
            self.checkpoint(&metrics_file, on_event)?;
        }
        Ok(Summary {
            steps: self.state.step,
            last: None,
            stopped,
        })
    }

    fn checkpoint(
        &self,
        metrics: &std::fs::File,
        on_event: &mut dyn FnMut(DpoEvent),
    ) -> Result<()> {
        let dir = save_checkpoint(
            &self.run,
            &self.model,
            &self.optimizer,
            &self.state,
            self.config.tuning.keep_checkpoints,
            metrics,
        )?;
        on_event(DpoEvent::Checkpoint(&dir));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_at_the_start_and_as_h_grows() {
        let cfg = DpoConfig::default();
        // At the start the policy is its reference: h = 0, loss ln 2, nothing preferred.
        assert!((cfg.pair_loss(0.0) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!(cfg.pair_loss(10.0) < cfg.pair_loss(0.0));
        assert!(cfg.pair_loss(-1e4).is_finite() && cfg.pair_loss(1e4) >= 0.0);
        let ipo = DpoConfig {
            loss: PreferenceLoss::Ipo,
            ..DpoConfig::default()
        };
        // IPO pulls h to 1/(2β) and no further.
        assert_eq!(ipo.pair_loss(5.0), 0.0);
        assert!(ipo.pair_loss(10.0) > 0.0);
        let s = PreferenceStats::new(
            &cfg,
            &[[-1.0, -3.0], [-2.0, -2.0]],
            &[[-1.0, -3.0], [-3.0, -2.0]],
        );
        // Pair 1: h = 0 (a tie); pair 2: h = 1.
        assert!((s.reward_accuracy - 0.75).abs() < 1e-12);
        assert!((s.reward_margin - 0.05).abs() < 1e-12);
        assert!((s.logp_margin - 1.0).abs() < 1e-12);
        assert!((s.logp_accuracy - 0.75).abs() < 1e-12);
    }
}
