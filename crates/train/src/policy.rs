//! What rejection sampling, PPO and context distillation share: prompts read from a file,
//! answers sampled from a policy on the decode engine, scored by reward models (or a rule),
//! and the log-probability of answers under a model in the training path (for the KL to a
//! reference).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use ferrollama_generate::chat::TrainingSample;
use ferrollama_generate::engine::Job;
use ferrollama_generate::{Bundle, ChatFormat, Completion, GenerateParams, Message, OpenOptions};
use ferrollama_model::TrainableLlama;
use ferrollama_sampling::SamplingParams;
use ferrollama_tokenizer::TokenizerFiles;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::reward::RewardModel;
use crate::sft::Conversation;
use crate::sft_batches::{lay_out, MicroBatch};

/// A prompt to answer, and whether it is unsafe (Llama 2 lets the safety reward model
/// decide on those).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub messages: Vec<Message>,
    pub unsafe_prompt: bool,
}

impl Prompt {
    /// The conversation with `answer` as the assistant's reply, only the reply learned.
    pub fn answered(&self, answer: &str) -> Conversation {
        let mut messages = self.messages.clone();
        messages.push(Message::new("assistant", answer));
        let unlearned = (0..self.messages.len())
            .filter(|&k| self.messages[k].role == "assistant")
            .collect();
        Conversation {
            messages,
            unlearned,
        }
    }
}

/// The prompts of a file (see [`crate::sft::prompt_from_record`] for the shapes), with the
/// boolean field `unsafe_field` marking unsafe ones (absent: safe).
pub fn read_prompts(path: &Path, unsafe_field: &str) -> Result<Vec<Prompt>> {
    let err = |n: usize, m: String| Error::Config(format!("{}: record {n}: {m}", path.display()));
    crate::sft::read_records(path)?
        .into_iter()
        .map(|(n, v)| {
            let unsafe_prompt = match v.get(unsafe_field) {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(err(n, format!("`{unsafe_field}` must be true or false"))),
            };
            let messages = crate::sft::prompt_from_record(&v).map_err(|m| err(n, m))?;
            Ok(Prompt {
                messages,
                unsafe_prompt,
            })
        })
        .collect()
}

/// The training and held-out prompts of a run: `val_prompts` when given, otherwise
/// `val_fraction` of `prompts` held out; both must be non-empty.
pub fn split_prompts(
    prompts: &Path,
    val_prompts: Option<&Path>,
    val_fraction: f64,
    unsafe_field: &str,
) -> Result<(Vec<Prompt>, Vec<Prompt>)> {
    let all = read_prompts(prompts, unsafe_field)?;
    let (train, val) = match val_prompts {
        Some(p) => (all, read_prompts(p, unsafe_field)?),
        None => crate::finetune::hold_out(all, val_fraction),
    };
    if train.is_empty() || val.is_empty() {
        return Err(Error::Config(format!(
            "{} training and {} held-out prompts: both are needed",
            train.len(),
            val.len()
        )));
    }
    Ok((train, val))
}

/// Claims the run directory `out` for a run whose settings file is `settings` (a path in
/// it): a new run is refused where one is already (`kind` names it), a resumed one unless
/// `same` says the settings saved there shape the run as this one's do (`may_change`
/// names what may differ).
pub fn claim_run_dir(
    out: &Path,
    settings: &Path,
    kind: &str,
    resume: bool,
    may_change: &str,
    same: impl FnOnce(&Path) -> Result<bool>,
) -> Result<()> {
    if settings.exists() {
        if !resume {
            return Err(Error::Resume(format!(
                "{} holds a {kind} run; pass --resume to continue it, or choose another --out",
                out.display()
            )));
        }
        if !same(settings)? {
            return Err(Error::Resume(format!(
                "{}: the run was made with other settings; resume with the same ones (only {may_change} may change)",
                settings.display()
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| crate::error::io(out, e))
}

/// How answers are sampled.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// Strings that end an answer (left out of it), beside the end-of-turn token.
    pub stop: Vec<String>,
    /// Sequences decoded together.
    pub parallel: usize,
}

impl Sampling {
    /// Refuses settings that cannot sample a policy's own answers.
    pub fn check(&self) -> Result<()> {
        if self.max_new_tokens == 0 || self.parallel == 0 {
            return Err(Error::Config(
                "max_new_tokens and parallel must be at least 1".into(),
            ));
        }
        if self.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(Error::Config(
                "the temperature must be above 0 (greedy answers are all the same)".into(),
            ));
        }
        Ok(())
    }

    /// The settings of one job: nothing but temperature and top-p shape the draw.
    fn params(&self, seed: u64) -> GenerateParams {
        GenerateParams {
            max_new_tokens: self.max_new_tokens,
            stop: self.stop.clone(),
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: 0,
                top_p: self.top_p,
                min_p: 0.0,
                seed,
                ..SamplingParams::default()
            },
            ..GenerateParams::default()
        }
    }
}

/// `per_prompt` answers to each prompt from the model at `model_path` (inference path, its
/// own chat format), sample k of prompt i drawn with a seed made of (`seed`, i, k) alone,
/// so the answers do not depend on batching. `None` when `stop` was set.
pub fn sample_answers(
    model_path: &Path,
    prompts: &[Prompt],
    per_prompt: usize,
    sampling: &Sampling,
    seed: u64,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Option<Vec<Vec<Completion>>>> {
    sample_answers_with(
        model_path, None, prompts, per_prompt, sampling, seed, stop, progress,
    )
}

/// [`sample_answers`] from the model at `model_path` with the LoRA adapter in `adapter`
/// (PEFT's layout) applied by the engine, as a server applies one.
#[allow(clippy::too_many_arguments)]
pub fn sample_answers_with(
    model_path: &Path,
    adapter: Option<&Path>,
    prompts: &[Prompt],
    per_prompt: usize,
    sampling: &Sampling,
    seed: u64,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Option<Vec<Vec<Completion>>>> {
    let files = TokenizerFiles::load(model_path)?;
    let format = ChatFormat::for_model(files.chat_template.as_deref());
    let encoded: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| format.encode(&p.messages, &files.tokenizer))
        .collect::<std::result::Result<_, _>>()?;
    let longest = encoded.iter().map(Vec::len).max().unwrap_or(1);
    let context = ferrollama_model::weights::with_checkpoint(model_path, |_, c| Ok(c))?
        .max_position_embeddings;
    if longest >= context {
        return Err(Error::Config(format!(
            "{}: a prompt has {longest} tokens, the model's context is {context}",
            model_path.display()
        )));
    }
    let n_ctx = (longest + sampling.max_new_tokens).min(context);
    let mut bundle = Bundle::open(
        model_path,
        &OpenOptions {
            ctx: Some(n_ctx),
            pack_cache_dir: None,
            ..OpenOptions::default()
        },
    )?;
    let adapter = adapter
        .map(|dir| bundle.model.load_adapter(dir, 1.0))
        .transpose()?;
    let jobs: Vec<Job> = encoded
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            (0..per_prompt).map(move |k| Job {
                id: 0,
                prompt: p.clone(),
                params: sampling.params(crate::finetune::mix(seed, i as u64, k as u64)),
                top_logprobs: None,
                adapter,
            })
        })
        .collect();
    let total = jobs.len();
    let done = ferrollama_generate::generate_all(
        &bundle.model,
        &bundle.tokenizer,
        jobs,
        sampling.parallel,
        n_ctx,
        stop,
        &mut |n| progress(n, total),
    )?;
    Ok(done.map(|all| {
        let mut it = all.into_iter();
        (0..prompts.len())
            .map(|_| it.by_ref().take(per_prompt).collect())
            .collect()
    }))
}

/// The file to sample from for the model at `model`: itself, or for a GGUF file with f32
/// matrices (an exported training round) an f16 copy written once as `copy` (candle's f32
/// products run batched decoding at about a third of the packed f16 kernels' speed; f16
/// keeps 11 significant bits, far finer than the sampling noise).
pub fn sampling_copy(model: &Path, copy: &Path) -> Result<std::path::PathBuf> {
    if model.is_dir() {
        return Ok(model.to_path_buf());
    }
    let file = ferrollama_gguf::GgufFile::open(model).map_err(ferrollama_model::Error::from)?;
    let f32_matrices = file
        .header
        .tensors
        .iter()
        .any(|t| t.dims.len() == 2 && t.ggml_type == ferrollama_gguf::GgmlType::F32);
    if !f32_matrices {
        return Ok(model.to_path_buf());
    }
    if !copy.exists() {
        let tmp = copy.with_extension("tmp");
        ferrollama_model::convert::requantize(
            &file,
            &tmp,
            ferrollama_gguf::GgmlType::F16,
            |_, _| {},
        )?;
        std::fs::rename(&tmp, copy).map_err(|e| crate::error::io(copy, e))?;
    }
    Ok(copy.to_path_buf())
}

/// Scores answered conversations.
pub trait Reward {
    /// One score per conversation; `unsafe_prompt` marks those whose prompt is unsafe.
    fn scores(&self, conversations: &[Conversation], unsafe_prompt: &[bool]) -> Result<Vec<f64>>;
}

/// The reward of every answer, prompt by prompt: `completions[i]` answers `prompts[i]`.
pub fn score_answers(
    reward: &dyn Reward,
    prompts: &[Prompt],
    completions: &[Vec<Completion>],
) -> Result<Vec<Vec<f64>>> {
    let (mut conversations, mut flags) = (Vec::new(), Vec::new());
    for (p, cs) in prompts.iter().zip(completions) {
        for c in cs {
            conversations.push(p.answered(&c.text));
            flags.push(p.unsafe_prompt);
        }
    }
    let flat = reward.scores(&conversations, &flags)?;
    if flat.len() != conversations.len() {
        return Err(Error::Internal(format!(
            "the reward gave {} scores for {} answers",
            flat.len(),
            conversations.len()
        )));
    }
    let mut it = flat.into_iter();
    Ok(completions
        .iter()
        .map(|cs| it.by_ref().take(cs.len()).collect())
        .collect())
}

/// Llama 2's reward: a helpfulness reward model, and optionally a safety one combined with
/// it ([`crate::reward::combine`], before whitening: a raw score, comparable across
/// batches). Each model reads conversations in its own chat format.
pub struct RewardModels {
    helpful: (RewardModel, ChatFormat, ferrollama_tokenizer::Tokenizer),
    safety: Option<(RewardModel, ChatFormat, ferrollama_tokenizer::Tokenizer)>,
    batch: usize,
}

impl RewardModels {
    /// Opens `ferrollama reward train` outputs; `batch` conversations per forward.
    pub fn open(helpful: &Path, safety: Option<&Path>, batch: usize) -> Result<Self> {
        let open = |dir: &Path| -> Result<(RewardModel, ChatFormat, _)> {
            let gguf = dir.join("model.gguf");
            if !gguf.exists() {
                return Err(Error::Config(format!(
                    "{}: no model.gguf (is this a `ferrollama reward train` output?)",
                    dir.display()
                )));
            }
            let files = TokenizerFiles::load(&gguf)?;
            let context = ferrollama_model::weights::with_checkpoint(&gguf, |_, c| Ok(c))?
                .max_position_embeddings
                .min(4096);
            let model = RewardModel::open(dir, context)?;
            Ok((
                model,
                ChatFormat::for_model(files.chat_template.as_deref()),
                files.tokenizer,
            ))
        };
        Ok(Self {
            helpful: open(helpful)?,
            safety: safety.map(open).transpose()?,
            batch: batch.max(1),
        })
    }
}

impl Reward for RewardModels {
    fn scores(&self, conversations: &[Conversation], unsafe_prompt: &[bool]) -> Result<Vec<f64>> {
        let run = |(model, format, tok): &(RewardModel, ChatFormat, _)| -> Result<Vec<f64>> {
            let tok: &ferrollama_tokenizer::Tokenizer = tok;
            let samples = conversations
                .iter()
                .map(|c| {
                    let mut s = format.encode_for_training(&c.messages, tok)?;
                    // The score is read at the last token; a conversation longer than
                    // the backbone's positions is cut at its start.
                    let keep = model.model.max_seq();
                    if s.tokens.len() > keep {
                        let cut = s.tokens.len() - keep;
                        s.tokens.drain(..cut);
                        s.scored.drain(..cut);
                    }
                    Ok(s)
                })
                .collect::<Result<Vec<TrainingSample>>>()?;
            model.scores(&samples, self.batch, tok.eos().unwrap_or(0))
        };
        let helpful = run(&self.helpful)?;
        match &self.safety {
            None => Ok(helpful),
            Some(s) => {
                let safety = run(s)?;
                Ok(crate::reward::combine(&helpful, &safety, unsafe_prompt)
                    .into_iter()
                    .map(|(raw, _)| raw)
                    .collect())
            }
        }
    }
}

/// The summed log-probability of each sample's scored tokens under `model` (training path,
/// f32, no gradient), `batch` samples per forward; 0 for a sample with none scored.
pub fn answer_logprobs(
    model: &TrainableLlama,
    samples: &[TrainingSample],
    batch: usize,
    pad: u32,
) -> Result<Vec<f64>> {
    if let Some(long) = samples.iter().find(|s| s.tokens.len() > model.max_seq()) {
        return Err(Error::Config(format!(
            "a conversation of {} tokens is longer than the {} positions the model was opened with",
            long.tokens.len(),
            model.max_seq()
        )));
    }
    let order: Vec<usize> = (0..samples.len()).collect();
    let rows = lay_out(samples, &order, model.max_seq(), false);
    let mut out = Vec::with_capacity(samples.len());
    for chunk in rows.chunks(batch.max(1)) {
        let mb = MicroBatch::new(&chunk.iter().collect::<Vec<_>>(), pad)?;
        let x = Tensor::from_slice(&mb.tokens, (mb.rows, mb.t), &Device::Cpu)?;
        let mut groups = vec![(Vec::new(), Vec::new()); mb.rows];
        for (&i, &target) in mb.scored.iter().zip(&mb.targets) {
            let g = &mut groups[i as usize / mb.t];
            g.0.push(i);
            g.1.push(target);
        }
        let scored: Vec<usize> = (0..mb.rows).filter(|&r| !groups[r].0.is_empty()).collect();
        let kept: Vec<(Vec<u32>, Vec<u32>)> = scored.iter().map(|&r| groups[r].clone()).collect();
        let mut values = vec![0.0f64; chunk.len()];
        if !kept.is_empty() {
            let nll = model.summed_losses_on(&x, &mb.packing, &kept)?;
            for (&r, t) in scored.iter().zip(nll) {
                if r < chunk.len() {
                    values[r] = -(t.detach().to_scalar::<f32>()? as f64);
                }
            }
        }
        out.extend(values);
    }
    if out.len() != samples.len() {
        return Err(Error::Internal(format!(
            "{} log-probabilities for {} samples",
            out.len(),
            samples.len()
        )));
    }
    Ok(out)
}

/// A distribution of rewards in a few numbers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Distribution {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub q25: f64,
    pub median: f64,
    pub q75: f64,
    pub max: f64,
}

impl Distribution {
    /// Of `values` (all 0 when empty); quantiles by linear interpolation.
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self {
                n,
                mean: 0.0,
                std: 0.0,
                min: 0.0,
                q25: 0.0,
                median: 0.0,
                q75: 0.0,
                max: 0.0,
            };
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let x = p * (n - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
        };
        let mean = v.iter().sum::<f64>() / n as f64;
        Self {
            n,
            mean,
            std: (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt(),
            min: v[0],
            q25: q(0.25),
            median: q(0.5),
            q75: q(0.75),
            max: v[n - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_quantiles() {
        let d = Distribution::of(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!(
            (d.min, d.q25, d.median, d.q75, d.max),
            (1.0, 2.0, 3.0, 4.0, 5.0)
        );
        assert_eq!(d.mean, 3.0);
        assert!((d.std - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(Distribution::of(&[]).n, 0);
        assert_eq!(Distribution::of(&[1.0, 2.0]).median, 1.5);
    }

    #[test]
    fn an_answered_prompt_learns_only_the_answer() {
        let p = Prompt {
            messages: vec![
                Message::new("user", "a"),
                Message::new("assistant", "b"),
                Message::new("user", "c"),
            ],
            unsafe_prompt: false,
        };
        let c = p.answered("d");
        assert_eq!(c.messages.len(), 4);
        assert_eq!(c.unlearned, [1]);
    }
}
