//! Training on preference pairs: DPO and reward models, one loop.
//!
//! Each pair's two sides (whole conversations ending with the chosen and the rejected
//! answer) run as two rows of one forward pass and give one number each, a_c and a_r; a
//! pair's loss is a function of z = (a_c - a_r) - offset:
//!
//! - **DPO** (Rafailov et al. 2023): a = log π(answer), summed over the answer's tokens
//!   (the assistant's, as SFT scores them); offset = log π_ref(c) - log π_ref(r), the
//!   reference being the model the run starts from, so z is DPO's h; loss -log σ(β h), or
//!   IPO's (h - 1/(2β))² (Azar et al. 2023). The reference's log-probabilities are computed
//!   once, before the first step, and kept in the run directory (`reference.json`): no
//!   second copy of the model is held, and a resumed run uses the same numbers. With LoRA
//!   the start is the base model exactly (B = 0).
//! - **Reward model** (Touvron et al. 2023, 3.2.2): a = w · h_last, a linear score of the
//!   final hidden state at the conversation's last token (`score.weight`, as Hugging Face's
//!   LlamaForSequenceClassification), the backbone trained in full or with LoRA; offset =
//!   the pair's margin (how much better the chosen answer is; 0 when not given); the
//!   Llama 2 ranking loss -log σ(r_c - r_r - m).
//!
//! The loop is fine-tuning's (AdamW, cosine schedule, clipping, checkpoints that resume
//! bit for bit); a step is a number of pairs.

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
use crate::finetune::{
    hold_out, open_metrics, open_model, optimizer_step, restore, save_checkpoint, SftConfig,
};
use crate::optim::AdamW;
use crate::schedule::CosineSchedule;
use crate::sft_batches::{epoch_order, fit_to_length, lay_out, scored_targets, MicroBatch};
use crate::trainer::{add_gradients, keep_metrics_through, RunDir, Summary};

/// The name of a reward model's score head.
pub const SCORE: &str = "score.weight";

/// DPO's loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreferenceLoss {
    /// DPO's -log σ(β h).
    Sigmoid,
    /// IPO's (h - 1/(2β))².
    Ipo,
}

/// What the pairs train.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Objective {
    /// The policy itself, against the model it starts from. `beta`: how far it may move
    /// (0.1 in the paper). `nll`: the weight of a negative log-likelihood term on the
    /// chosen answers, per token (RPO, Pang et al. 2024; Llama 3 used 0.2): plain DPO lowers
    /// the rejected answers' likelihood and can lower the chosen ones' with it, and the
    /// model's own generations drift (on the date task it stopped ending its answers).
    Dpo {
        beta: f64,
        loss: PreferenceLoss,
        #[serde(default)]
        nll: f64,
    },
    /// A scalar score head on the backbone, ranked by the Llama 2 loss; `use_margin`
    /// subtracts each pair's margin.
    Reward { use_margin: bool },
}

/// Everything that shapes a preference run; written to the run directory (`dpo.toml` or
/// `reward.toml`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairConfig {
    pub objective: Objective,
    /// The model, data (pairs), schedule, batch (in pairs) and LoRA settings.
    pub tuning: SftConfig,
}

impl PairConfig {
    /// DPO's defaults: beta 0.1, lr 1e-6 (full; LoRA's is set by the caller), 1 epoch of
    /// 8 pairs a step.
    pub fn dpo() -> Self {
        Self::with(Objective::Dpo {
            beta: 0.1,
            loss: PreferenceLoss::Sigmoid,
            nll: 0.0,
        })
    }

    /// A reward model's defaults: the margins used, lr 1e-5 (full), 1 epoch of 8 pairs.
    pub fn reward() -> Self {
        let mut c = Self::with(Objective::Reward { use_margin: true });
        c.tuning.lr = 1e-5;
        c
    }

    fn with(objective: Objective) -> Self {
        Self {
            objective,
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

    /// The settings file of a run directory.
    pub fn file_name(&self) -> &'static str {
        match self.objective {
            Objective::Dpo { .. } => "dpo.toml",
            Objective::Reward { .. } => "reward.toml",
        }
    }

    /// The settings a run directory's file holds.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        crate::config::read_toml(path)
    }

    pub fn check(&self) -> Result<()> {
        if let Objective::Dpo { beta, nll, .. } = self.objective {
            if !(beta > 0.0 && beta.is_finite()) {
                return Err(Error::Config(format!("beta {beta} must be positive")));
            }
            if !(nll >= 0.0 && nll.is_finite()) {
                return Err(Error::Config(format!("nll weight {nll} must be 0 or more")));
            }
        }
        if self.tuning.lora.as_ref().is_some_and(|l| l.dropout > 0.0) {
            // DPO's policy must be its reference's function at the start (h = 0), and
            // both sides of a pair must be scored by the same function.
            return Err(Error::Config(
                "preference training runs without LoRA dropout: set it to 0".into(),
            ));
        }
        self.tuning.check()
    }

    /// A digest of what a resumed run must share with the one it continues.
    pub fn settings_digest(&self) -> String {
        let own = format!("{:?} {}", self.objective, self.tuning.settings_digest());
        crate::config::fnv_digest(&own)
    }

    /// One pair's loss from its z.
    fn pair_loss(&self, z: f64) -> f64 {
        match self.objective {
            // -log σ(βz) = log(1 + e^(-βz)), computed without overflow.
            Objective::Dpo {
                beta,
                loss: PreferenceLoss::Sigmoid,
                ..
            } => softplus(-beta * z),
            Objective::Dpo {
                beta,
                loss: PreferenceLoss::Ipo,
                ..
            } => (z - 0.5 / beta).powi(2),
            Objective::Reward { .. } => softplus(-z),
        }
    }

    /// The same as a tensor to differentiate.
    fn pair_loss_tensor(&self, z: &Tensor) -> Result<Tensor> {
        let softplus_neg = |z: Tensor| -> Result<Tensor> {
            let u = z.neg()?;
            Ok((u.relu()? + (u.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
        };
        match self.objective {
            Objective::Dpo {
                beta,
                loss: PreferenceLoss::Sigmoid,
                ..
            } => softplus_neg((z * beta)?),
            Objective::Dpo {
                beta,
                loss: PreferenceLoss::Ipo,
                ..
            } => Ok((z - 0.5 / beta)?.sqr()?),
            Objective::Reward { .. } => softplus_neg(z.clone()),
        }
    }

    /// The scale of z in the reported margin (β for DPO: its implicit reward).
    fn margin_scale(&self) -> f64 {
        match self.objective {
            Objective::Dpo { beta, .. } => beta,
            Objective::Reward { .. } => 1.0,
        }
    }
}

fn softplus(u: f64) -> f64 {
    u.max(0.0) + (-u.abs()).exp().ln_1p()
}

/// A pair encoded: each side's tokens with its answer marked, and the pair's margin.
#[derive(Debug, Clone)]
pub struct PairSample {
    pub chosen: TrainingSample,
    pub rejected: TrainingSample,
    pub margin: f64,
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
    /// Reads and encodes the run's pairs with the model's chat format. A reward model
    /// scores a conversation at its last token, so for it a pair with a side longer than
    /// `seq_len` is dropped rather than cut.
    pub fn load(
        cfg: &SftConfig,
        format: &ChatFormat,
        tok: &Tokenizer,
        cut_allowed: bool,
    ) -> Result<Self> {
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
                        margin: p.margin,
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
                let margin = p.margin;
                let (c, c_cut, c_drop) = fit_to_length(vec![p.chosen], cfg.seq_len);
                let (r, r_cut, r_drop) = fit_to_length(vec![p.rejected], cfg.seq_len);
                let was_cut = c_cut + r_cut > 0;
                cut += usize::from(was_cut);
                match (c.into_iter().next(), r.into_iter().next()) {
                    (Some(chosen), Some(rejected))
                        if c_drop + r_drop == 0 && (cut_allowed || !was_cut) =>
                    {
                        kept.push(PairSample {
                            chosen,
                            rejected,
                            margin,
                        })
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

/// How a model ranks a set of pairs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreferenceStats {
    /// Mean loss.
    pub loss: f64,
    /// Mean scaled z: DPO's implicit reward margin β h; a reward model's r_c - r_r - m.
    pub objective_margin: f64,
    /// Share of pairs with z > 0 (ties count half: at DPO's start every h is 0).
    pub objective_accuracy: f64,
    /// Mean a_c - a_r: DPO's log π(chosen) - log π(rejected); a reward model's r_c - r_r.
    pub margin: f64,
    /// Share of pairs with a_c > a_r (ties count half): the share whose chosen answer is
    /// the more likely (DPO), a reward model's pairwise accuracy.
    pub accuracy: f64,
}

impl PreferenceStats {
    /// From each pair's [a_c, a_r] and offset.
    fn new(cfg: &PairConfig, values: &[[f64; 2]], offsets: &[f64]) -> Self {
        let n = values.len().max(1) as f64;
        let won = |x: f64| {
            if x > 0.0 {
                1.0
            } else if x == 0.0 {
                0.5
            } else {
                0.0
            }
        };
        let (mut s, mut om, mut oa, mut m, mut a) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (v, off) in values.iter().zip(offsets) {
            let z = (v[0] - v[1]) - off;
            s += cfg.pair_loss(z);
            om += cfg.margin_scale() * z;
            oa += won(z);
            m += v[0] - v[1];
            a += won(v[0] - v[1]);
        }
        Self {
            loss: s / n,
            objective_margin: om / n,
            objective_accuracy: oa / n,
            margin: m / n,
            accuracy: a / n,
        }
    }
}

/// One step's figures, as written to `metrics.jsonl` (the fields pretraining writes, so
/// the loss plots read them, and the preference figures).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairMetrics {
    pub step: u64,
    /// Mean loss over the step's pairs.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub tokens: u64,
    /// The training pairs' figures this step.
    pub train: PreferenceStats,
    /// Held-out loss (for the plots) and the held-out figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val: Option<PreferenceStats>,
}

/// What a run reports as it goes.
pub enum PairEvent<'a> {
    /// DPO's reference log-probabilities are being computed for this many pairs.
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
    Step(&'a PairMetrics),
    Checkpoint(&'a Path),
}

/// Each pair's offset, as kept in the run directory for DPO (the reference's
/// log-probability margins) or taken from the data (reward margins).
#[derive(serde::Serialize, serde::Deserialize)]
struct Offsets {
    settings: String,
    train: Vec<f64>,
    val: Vec<f64>,
}

/// A preference run.
pub struct PairTrainer<'a> {
    pub config: PairConfig,
    pub model: TrainableLlama,
    pub optimizer: AdamW,
    pub data: PreferenceData,
    tokenizer: &'a Tokenizer,
    run: RunDir,
    state: LoopState,
    offsets: Option<Offsets>,
}

impl<'a> PairTrainer<'a> {
    /// Opens the model (with a score head for a reward model) and with `resume` restores
    /// the last checkpoint in `out` (and DPO's reference, computed at the run's start).
    pub fn new(
        config: PairConfig,
        data: PreferenceData,
        tokenizer: &'a Tokenizer,
        out: &Path,
        resume: bool,
    ) -> Result<Self> {
        config.check()?;
        let mut model = open_model(&config.tuning, tokenizer)?;
        if let Objective::Reward { .. } = config.objective {
            let h = model.config.hidden_size;
            model.add_head(SCORE, &score_init(h, config.tuning.seed)?)?;
        }
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
        let offsets = match config.objective {
            Objective::Reward { use_margin } => {
                let m = |p: &PairSample| if use_margin { p.margin } else { 0.0 };
                Some(Offsets {
                    settings: digest.clone(),
                    train: data.train.iter().map(m).collect(),
                    val: data.val.iter().map(m).collect(),
                })
            }
            Objective::Dpo { .. } if state.step > 0 => {
                Some(Self::read_reference(&run, &digest, &data)?)
            }
            Objective::Dpo { .. } => None,
        };
        let text = toml::to_string_pretty(&config)
            .map_err(|e| Error::Internal(format!("encoding the config: {e}")))?;
        crate::checkpoint::write_synced(&run.root.join(config.file_name()), text.as_bytes())?;
        keep_metrics_through(&run.metrics(), state.step)?;
        Ok(Self {
            config,
            model,
            optimizer,
            data,
            tokenizer,
            run,
            state,
            offsets,
        })
    }

    fn reference_path(run: &RunDir) -> std::path::PathBuf {
        run.root.join("reference.json")
    }

    fn read_reference(run: &RunDir, digest: &str, data: &PreferenceData) -> Result<Offsets> {
        let path = Self::reference_path(run);
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        let r: Offsets = serde_json::from_str(&text).map_err(|e| Error::Invalid {
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

    /// Each pair's [a_c, a_r] as tensors to differentiate (one forward per micro-batch of
    /// pairs, each side a row), handed to `each` micro-batch by micro-batch.
    fn side_values(
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
            let x = Tensor::from_slice(&mb.tokens, (mb.rows, mb.t), &Device::Cpu)?;
            let values: Vec<Tensor> = match self.config.objective {
                Objective::Dpo { .. } => {
                    let mut groups = vec![(Vec::new(), Vec::new()); mb.rows];
                    for (&i, &target) in mb.scored.iter().zip(&mb.targets) {
                        let g = &mut groups[i as usize / mb.t];
                        g.0.push(i);
                        g.1.push(target);
                    }
                    let nll = self.model.summed_losses_on(&x, &mb.packing, &groups)?;
                    nll.iter()
                        .map(|t| t.neg())
                        .collect::<candle_core::Result<_>>()?
                }
                Objective::Reward { .. } => {
                    let last: Vec<u32> = rows
                        .iter()
                        .enumerate()
                        .map(|(r, row)| (r * mb.t + row.tokens.len() - 1) as u32)
                        .collect();
                    let h = self.model.hidden_rows(&x, &mb.packing, &last)?;
                    let w = self.score_head()?;
                    let s = h.matmul(&w.t()?)?.flatten_all()?;
                    (0..mb.rows)
                        .map(|i| s.get(i))
                        .collect::<candle_core::Result<_>>()?
                }
            };
            let mut out = Vec::with_capacity(chunk.len());
            for two in values.chunks_exact(2) {
                out.push([two[0].clone(), two[1].clone()]);
            }
            each(out)?;
        }
        Ok(())
    }

    fn score_head(&self) -> Result<Tensor> {
        self.model
            .params()
            .find(|(n, _)| *n == SCORE)
            .map(|(_, v)| v.as_tensor().clone())
            .ok_or_else(|| Error::Internal("the reward model has no score head".into()))
    }

    /// Each pair's [a_c, a_r] as numbers.
    fn side_value_numbers(&self, pairs: &[PairSample]) -> Result<Vec<[f64; 2]>> {
        let refs: Vec<&PairSample> = pairs.iter().collect();
        let mut out = Vec::with_capacity(pairs.len());
        self.side_values(&refs, &mut |v| {
            for [c, r] in v {
                let n = |t: Tensor| -> Result<f64> { Ok(t.detach().to_scalar::<f32>()? as f64) };
                out.push([n(c)?, n(r)?]);
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn offsets(&self) -> Result<&Offsets> {
        self.offsets
            .as_ref()
            .ok_or_else(|| Error::Internal("no reference yet".into()))
    }

    /// The held-out figures of the model as it is now (None without held-out pairs).
    pub fn validation(&self) -> Result<Option<PreferenceStats>> {
        if self.data.val.is_empty() {
            return Ok(None);
        }
        let values = self.side_value_numbers(&self.data.val)?;
        Ok(Some(PreferenceStats::new(
            &self.config,
            &values,
            &self.offsets()?.val,
        )))
    }

    /// Runs to the last step or until `stop` is set (then checkpoints where it is).
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(PairEvent),
    ) -> Result<Summary> {
        let cfg = self.config.clone();
        let total_steps = self.total_steps();
        // No dropout (checked): every pass is the model's plain function.
        self.model.set_dropout_key(0);
        if self.offsets.is_none() {
            on_event(PairEvent::Reference {
                pairs: self.data.train.len() + self.data.val.len(),
            });
            let margins = |v: Vec<[f64; 2]>| v.iter().map(|[c, r]| c - r).collect();
            let reference = Offsets {
                settings: cfg.settings_digest(),
                train: margins(self.side_value_numbers(&self.data.train)?),
                val: margins(self.side_value_numbers(&self.data.val)?),
            };
            let text = serde_json::to_string(&reference)
                .map_err(|e| Error::Internal(format!("encoding the reference: {e}")))?;
            crate::checkpoint::write_synced(&Self::reference_path(&self.run), text.as_bytes())?;
            self.offsets = Some(reference);
        }
        let schedule = CosineSchedule {
            peak: cfg.tuning.lr,
            warmup: cfg.tuning.warmup,
            total: total_steps,
            min_ratio: cfg.tuning.min_lr_ratio,
        };
        on_event(PairEvent::Started {
            start_step: self.state.step,
            total_steps,
            parameters: self.model.num_parameters(),
        });
        if self.state.step == 0 {
            if let Some(v) = self.validation()? {
                on_event(PairEvent::Initial(&v));
            }
        }
        let (mut metrics_file, path) = open_metrics(&self.run)?;
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
            let all = &self.offsets()?.train;
            let offsets: Vec<f64> = picked.iter().map(|&i| all[i]).collect();
            let pairs: Vec<&PairSample> = picked.iter().map(|&i| &self.data.train[i]).collect();
            let tokens: usize = pairs
                .iter()
                .map(|p| p.chosen.tokens.len() + p.rejected.tokens.len())
                .sum();
            sums.fill(0.0);
            let (model, n) = (&self.model, pairs.len() as f64);
            let mut values: Vec<[f64; 2]> = Vec::with_capacity(pairs.len());
            self.side_values(&pairs, &mut |v| {
                let mut total: Option<Tensor> = None;
                for ([c, r], k) in v.into_iter().zip(values.len()..) {
                    let z = ((&c - &r)? - offsets[k])?;
                    let mut loss = cfg.pair_loss_tensor(&z)?;
                    if let Objective::Dpo { nll, .. } = cfg.objective {
                        if nll > 0.0 {
                            // c is log π(chosen): its negative per answer token.
                            let tokens = scored_targets(&pairs[k].chosen).max(1) as f64;
                            loss = (loss - (&c * (nll / tokens))?)?;
                        }
                    }
                    total = Some(match total {
                        Some(t) => (t + loss)?,
                        None => loss,
                    });
                    let num = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
                    values.push([num(&c)?, num(&r)?]);
                }
                match total {
                    Some(t) => add_gradients(&(t / n)?.backward()?, model, &mut sums),
                    None => Ok(()),
                }
            })?;
            let train = PreferenceStats::new(&cfg, &values, &offsets);
            if !train.loss.is_finite() {
                return Err(Error::Diverged {
                    step: self.state.step + 1,
                    loss: train.loss,
                });
            }
            let grad_norm = optimizer_step(
                &self.model,
                &mut self.optimizer,
                &sums,
                &sizes,
                cfg.tuning.grad_clip,
                lr,
            )?;
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
            let m = PairMetrics {
                step,
                loss: train.loss,
                lr,
                grad_norm,
                tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
                tokens: self.state.tokens,
                train,
                val_loss: val.map(|v| v.loss),
                val,
            };
            let line = serde_json::to_string(&m)
                .map_err(|e| Error::Internal(format!("encoding metrics: {e}")))?;
            writeln!(metrics_file, "{line}").map_err(|e| io(&path, e))?;
            on_event(PairEvent::Step(&m));
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
        on_event: &mut dyn FnMut(PairEvent),
    ) -> Result<()> {
        let dir = save_checkpoint(
            &self.run,
            &self.model,
            &self.optimizer,
            &self.state,
            self.config.tuning.keep_checkpoints,
            metrics,
        )?;
        on_event(PairEvent::Checkpoint(&dir));
        Ok(())
    }

    /// A reward model's score head, (1, hidden).
    pub fn score_weight(&self) -> Result<Tensor> {
        self.score_head()
    }
}

/// A score head's first values: U(-1/√hidden, 1/√hidden), a linear layer's default
/// initialisation in PyTorch, drawn from the run's seed.
fn score_init(hidden: usize, seed: u64) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed ^ 0x5c0e);
    let bound = 1.0 / (hidden.max(1) as f32).sqrt();
    let v: Vec<f32> = (0..hidden)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Ok(Tensor::from_vec(v, (1, hidden), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_at_the_start_and_as_z_grows() {
        let cfg = PairConfig::dpo();
        // At the start the policy is its reference: h = 0, loss ln 2, nothing preferred.
        assert!((cfg.pair_loss(0.0) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!(cfg.pair_loss(10.0) < cfg.pair_loss(0.0));
        assert!(cfg.pair_loss(-1e4).is_finite() && cfg.pair_loss(1e4) >= 0.0);
        let mut ipo = PairConfig::dpo();
        ipo.objective = Objective::Dpo {
            beta: 0.1,
            loss: PreferenceLoss::Ipo,
            nll: 0.0,
        };
        // IPO pulls h to 1/(2β) and no further.
        assert_eq!(ipo.pair_loss(5.0), 0.0);
        assert!(ipo.pair_loss(10.0) > 0.0);
        let s = PreferenceStats::new(&cfg, &[[-1.0, -3.0], [-2.0, -2.0]], &[2.0, -1.0]);
        // Pair 1: h = 0 (a tie); pair 2: h = 1.
        assert!((s.objective_accuracy - 0.75).abs() < 1e-12);
        assert!((s.objective_margin - 0.05).abs() < 1e-12);
        assert!((s.margin - 1.0).abs() < 1e-12);
        assert!((s.accuracy - 0.75).abs() < 1e-12);
        // The reward model's ranking loss with a margin: -log σ(r_c - r_r - m).
        let rm = PairConfig::reward();
        let want = -(1.0 / (1.0 + (-(2.0f64 - 0.5)).exp())).ln();
        assert!((rm.pair_loss(2.0 - 0.5) - want).abs() < 1e-12);
        let z = Tensor::new(&[1.5f32], &Device::Cpu).unwrap();
        let t: Vec<f32> = rm.pair_loss_tensor(&z).unwrap().to_vec1().unwrap();
        assert!((t[0] as f64 - want).abs() < 1e-6);
    }
}
