//! A trained reward model at work: the backbone exported by `ferrollama reward train`
//! (`model.gguf`, LoRA merged) and its score head (`score.safetensors`, `score.weight`
//! (1, hidden)), scoring conversations at their last token in the training path's f32,
//! as training scored them.

use std::path::Path;

use candle_core::{Device, Tensor};
use ferrollama_generate::chat::TrainingSample;
use ferrollama_model::TrainableLlama;

use crate::error::{io, Error, Result};
use crate::preference::SCORE;
use crate::sft_batches::{lay_out, MicroBatch};

/// A reward model: backbone and score head.
pub struct RewardModel {
    pub model: TrainableLlama,
    score: Tensor,
}

impl RewardModel {
    /// Opens a reward run's output directory (`model.gguf`, `score.safetensors`).
    pub fn open(dir: &Path, max_seq: usize) -> Result<Self> {
        let model = TrainableLlama::open(&dir.join("model.gguf"), max_seq)?;
        let path = dir.join("score.safetensors");
        if !path.exists() {
            return Err(Error::Config(format!(
                "{}: no score.safetensors (is this a `ferrollama reward train` output?)",
                dir.display()
            )));
        }
        let tensors =
            candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| Error::Invalid {
                file: path.display().to_string(),
                msg: e.to_string(),
            })?;
        let score = tensors
            .get(SCORE)
            .ok_or_else(|| Error::Invalid {
                file: path.display().to_string(),
                msg: format!("no `{SCORE}`"),
            })?
            .to_dtype(candle_core::DType::F32)?;
        if score.dims() != [1, model.config.hidden_size] {
            return Err(Error::Invalid {
                file: path.display().to_string(),
                msg: format!(
                    "`{SCORE}` has shape {:?}, the model's hidden size is {}",
                    score.dims(),
                    model.config.hidden_size
                ),
            });
        }
        Ok(Self { model, score })
    }

    /// The score of each conversation (at its last token), `batch` at a time.
    pub fn scores(&self, samples: &[TrainingSample], batch: usize, pad: u32) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(samples.len());
        let order: Vec<usize> = (0..samples.len()).collect();
        let rows = lay_out(samples, &order, self.model.max_seq(), false);
        for chunk in rows.chunks(batch.max(1)) {
            let mb = MicroBatch::new(&chunk.iter().collect::<Vec<_>>(), pad)?;
            let x = Tensor::from_slice(&mb.tokens, (mb.rows, mb.t), &Device::Cpu)?;
            let last: Vec<u32> = chunk
                .iter()
                .enumerate()
                .map(|(r, row)| (r * mb.t + row.tokens.len() - 1) as u32)
                .collect();
            let h = self.model.hidden_rows(&x, &mb.packing, &last)?;
            let s: Vec<f32> = h.matmul(&self.score.t()?)?.flatten_all()?.to_vec1()?;
            out.extend(s.into_iter().map(f64::from));
        }
        Ok(out)
    }
}

/// Writes a reward model's score head beside its exported backbone.
pub fn save_score(dir: &Path, score: &Tensor) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tensors = [(SCORE.to_string(), score.clone())].into_iter().collect();
    crate::checkpoint::save_tensors(&dir.join("score.safetensors"), &tensors)
}

/// Where Llama 2 lets the safety reward model decide: σ(r_s) below this, the answer is
/// judged unsafe whatever the helpfulness model says.
pub const SAFETY_THRESHOLD: f64 = 0.15;

/// Llama 2's combined reward (Touvron et al. 2023, 3.2.3): with R = σ(r) for each model's
/// raw score r,
///
///   R_c = R_s  if the prompt is unsafe or R_s < 0.15,  R_h otherwise;
///   R̃_c = WHITEN(LOGIT(R_c)),
///
/// LOGIT undoing the sigmoid (so the chosen model's raw score) and WHITEN standardising
/// over the batch (mean 0, standard deviation 1; all 0 when the batch does not vary).
/// Returns (R_c before whitening, as a raw score; R̃_c) per item.
pub fn combine(helpful: &[f64], safety: &[f64], unsafe_prompt: &[bool]) -> Vec<(f64, f64)> {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let chosen: Vec<f64> = helpful
        .iter()
        .zip(safety)
        .zip(unsafe_prompt)
        .map(|((&h, &s), &u)| {
            if u || sigmoid(s) < SAFETY_THRESHOLD {
                s
            } else {
                h
            }
        })
        .collect();
    let n = chosen.len().max(1) as f64;
    let mean = chosen.iter().sum::<f64>() / n;
    let std = (chosen.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    chosen
        .iter()
        .map(|&c| (c, if std > 0.0 { (c - mean) / std } else { 0.0 }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::combine;

    #[test]
    fn safety_decides_on_unsafe_prompts_and_below_the_threshold() {
        // logit(0.15) = -1.7346: -1.0 is above the threshold, -2.0 below it.
        let h = [3.0, 3.0, 3.0, 0.5];
        let s = [-1.0, -2.0, 1.0, 2.0];
        let unsafe_prompt = [false, false, true, false];
        let c = combine(&h, &s, &unsafe_prompt);
        let raw: Vec<f64> = c.iter().map(|x| x.0).collect();
        assert_eq!(raw, [3.0, -2.0, 1.0, 0.5]);
        let w: Vec<f64> = c.iter().map(|x| x.1).collect();
        let mean = w.iter().sum::<f64>() / 4.0;
        let var = w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12);
        assert_eq!(combine(&[1.0, 1.0], &[0.0, 0.0], &[false, false])[1].1, 0.0);
    }
}
