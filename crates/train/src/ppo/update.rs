//! PPO's update: forward passes over answers (log-probabilities, values, entropy; the
//! reference with the adapter switched off), advantages, and the clipped-objective steps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use ferrollama_generate::chat::TrainingSample;

use super::{Ppo, PpoEvent, PpoMetrics, VALUE};
use crate::advantage::{gae, token_rewards, whiten};
use crate::error::{io, Error, Result};
use crate::finetune::{optimizer_step, save_checkpoint};
use crate::policy::Distribution;
use crate::schedule::CosineSchedule;
use crate::sft_batches::{epoch_order, lay_out, MicroBatch};
use crate::trainer::add_gradients;

/// Per-token numbers of one answer from a forward pass without gradients.
#[derive(Debug, Clone, Default)]
pub(super) struct Tokens {
    pub(super) logp: Vec<f64>,
    values: Vec<f64>,
    entropy: Vec<f64>,
}

/// One forward pass's scored tokens: log-probabilities and values (differentiable), the
/// policy's entropy if asked for, and each answer's span among them.
struct Pass {
    logp: Tensor,
    values: Tensor,
    entropy: Option<Tensor>,
    spans: Vec<std::ops::Range<usize>>,
}

/// An answer ready to learn from.
struct Prepared {
    sample: TrainingSample,
    old: Tokens,
    advantages: Vec<f64>,
    returns: Vec<f64>,
}

impl Ppo<'_> {
    /// One forward pass over `samples` (at most a micro-batch): each one's scored tokens'
    /// log-probabilities and values (tensors, differentiable) and their spans in them; with
    /// `reference`, the reference's log-probabilities (values 0).
    fn pass(&self, samples: &[&TrainingSample], entropy: bool, reference: bool) -> Result<Pass> {
        let owned: Vec<TrainingSample> = samples.iter().map(|s| (*s).clone()).collect();
        let order: Vec<usize> = (0..owned.len()).collect();
        let rows = lay_out(&owned, &order, self.config.tuning.seq_len, false);
        if rows.len() != owned.len() {
            return Err(Error::Internal(
                "an answer did not get a row of its own".into(),
            ));
        }
        let pad = self.tokenizer.eos().unwrap_or(0);
        let mb = MicroBatch::new(&rows.iter().collect::<Vec<_>>(), pad)?;
        let mut spans = vec![0..0; mb.rows];
        for (k, &i) in mb.scored.iter().enumerate() {
            let r = i as usize / mb.t;
            if spans[r].is_empty() {
                spans[r] = k..k + 1;
            } else {
                spans[r].end = k + 1;
            }
        }
        spans.truncate(owned.len());
        let x = Tensor::from_slice(&mb.tokens, (mb.rows, mb.t), &Device::Cpu)?;
        // The reference: full-weight PPO's second model, or the policy itself with its
        // adapter switched off by the caller.
        let model = match (&self.reference, reference) {
            (Some(r), true) => r,
            _ => &self.model,
        };
        let h = model.hidden_rows(&x, &mb.packing, &mb.scored)?;
        let logits = model.vocab_logits(&h)?;
        let max = logits.max_keepdim(1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
        let lsm = shifted.broadcast_sub(&lse)?;
        let n = mb.targets.len();
        let idx = Tensor::from_slice(&mb.targets, (n, 1), &Device::Cpu)?;
        let logp = lsm.gather(&idx, 1)?.flatten_all()?;
        let values = if reference {
            Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu)?
        } else {
            h.matmul(&self.value_head()?.t()?)?.flatten_all()?
        };
        let ent = if entropy {
            Some((lsm.exp()? * &lsm)?.sum(1)?.neg()?)
        } else {
            None
        };
        Ok(Pass {
            logp,
            values,
            entropy: ent,
            spans,
        })
    }

    fn value_head(&self) -> Result<Tensor> {
        self.model
            .params()
            .find(|(n, _)| *n == VALUE)
            .map(|(_, v)| v.as_tensor().clone())
            .ok_or_else(|| Error::Internal("the policy has no value head".into()))
    }

    /// Per-token numbers of every sample, without gradients; with `reference` the
    /// adapter is off (the base model).
    pub(super) fn tokens_of(
        &self,
        samples: &[TrainingSample],
        reference: bool,
    ) -> Result<Vec<Tokens>> {
        self.model.set_adapter_enabled(!reference);
        let out = (|| -> Result<Vec<Tokens>> {
            let mut out = Vec::with_capacity(samples.len());
            for chunk in samples.chunks(self.config.tuning.micro_batch.max(1)) {
                let refs: Vec<&TrainingSample> = chunk.iter().collect();
                let Pass {
                    logp,
                    values,
                    entropy: ent,
                    spans,
                } = self.pass(&refs, !reference, reference)?;
                let v = |t: &Tensor| -> Result<Vec<f64>> {
                    Ok(t.detach()
                        .to_vec1::<f32>()?
                        .into_iter()
                        .map(f64::from)
                        .collect())
                };
                let (logp, values) = (v(&logp)?, v(&values)?);
                let ent = ent.as_ref().map(v).transpose()?;
                for s in spans {
                    out.push(Tokens {
                        logp: logp[s.clone()].to_vec(),
                        values: values[s.clone()].to_vec(),
                        entropy: ent.as_ref().map_or_else(Vec::new, |e| e[s].to_vec()),
                    });
                }
            }
            Ok(out)
        })();
        self.model.set_adapter_enabled(true);
        out
    }

    /// One iteration: rollouts, advantages, the clipped-objective steps, a checkpoint.
    pub(super) fn iterate(
        &mut self,
        iteration: usize,
        schedule: &CosineSchedule,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(PpoEvent),
    ) -> Result<Option<PpoMetrics>> {
        let cfg = self.config.clone();
        let Some(rollouts) = self.rollouts(iteration, stop, on_event)? else {
            return Ok(None);
        };
        let started = Instant::now();
        on_event(PpoEvent::Stage {
            iteration,
            what: "log-probabilities, values and the reference",
        });
        let samples = rollouts
            .iter()
            .map(|r| self.sample_of(&self.train[r.prompt], r))
            .collect::<Result<Vec<_>>>()?;
        let old = self.tokens_of(&samples, false)?;
        let reference = self.tokens_of(&samples, true)?;
        let mut scores: Vec<f64> = rollouts.iter().map(|r| r.score).collect();
        if cfg.whiten_rewards {
            whiten(&mut scores);
        }
        let mut prepared: Vec<Prepared> = Vec::with_capacity(samples.len());
        let mut kl = 0.0;
        for ((sample, old), (reference, score)) in samples
            .into_iter()
            .zip(old)
            .zip(reference.iter().zip(&scores))
        {
            kl += old
                .logp
                .iter()
                .zip(&reference.logp)
                .map(|(a, b)| a - b)
                .sum::<f64>();
            let rewards = token_rewards(*score, &old.logp, &reference.logp, cfg.kl_coef);
            let (advantages, returns) = gae(&rewards, &old.values, cfg.gamma, cfg.lam);
            prepared.push(Prepared {
                sample,
                old,
                advantages,
                returns,
            });
        }
        // Advantages whitened over all the iteration's tokens.
        let mut flat: Vec<f64> = prepared.iter().flat_map(|p| p.advantages.clone()).collect();
        whiten(&mut flat);
        let mut it = flat.into_iter();
        for p in &mut prepared {
            for a in &mut p.advantages {
                *a = it.next().unwrap_or(0.0);
            }
        }
        let n_tokens: usize = prepared.iter().map(|p| p.old.logp.len()).sum();
        let entropy =
            prepared.iter().flat_map(|p| &p.old.entropy).sum::<f64>() / n_tokens.max(1) as f64;
        let sizes: Vec<usize> = self.model.params().map(|(_, v)| v.elem_count()).collect();
        let mut sums = vec![0.0f64; sizes.iter().sum()];
        let (mut loss_sum, mut pg_sum, mut vf_sum, mut clipped, mut approx, mut counted) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let (mut grad_norm, mut lr) = (0.0, 0.0);
        for epoch in 0..cfg.ppo_epochs {
            let order = epoch_order(
                prepared.len(),
                mix_seed(cfg.tuning.seed, iteration),
                epoch as u64,
            );
            for mb in order.chunks(cfg.minibatch) {
                if stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let tokens: usize = mb.iter().map(|&i| prepared[i].old.logp.len()).sum();
                sums.fill(0.0);
                for chunk in mb.chunks(cfg.tuning.micro_batch.max(1)) {
                    let refs: Vec<&TrainingSample> =
                        chunk.iter().map(|&i| &prepared[i].sample).collect();
                    let Pass {
                        logp,
                        values,
                        spans,
                        ..
                    } = self.pass(&refs, false, false)?;
                    let gather = |f: &dyn Fn(&Prepared) -> &[f64]| -> Result<Tensor> {
                        let v: Vec<f32> = chunk
                            .iter()
                            .flat_map(|&i| f(&prepared[i]).iter().map(|&x| x as f32))
                            .collect();
                        let n = v.len();
                        Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
                    };
                    if spans.iter().map(|s| s.len()).sum::<usize>() != logp.dims1()? {
                        return Err(Error::Internal("answer spans and tokens disagree".into()));
                    }
                    let old_logp = gather(&|p| &p.old.logp)?;
                    let old_v = gather(&|p| &p.old.values)?;
                    let adv = gather(&|p| &p.advantages)?;
                    let ret = gather(&|p| &p.returns)?;
                    let l = token_losses(
                        &logp,
                        &old_logp,
                        &adv,
                        &values,
                        &old_v,
                        &ret,
                        cfg.clip,
                        cfg.value_clip,
                    )?;
                    let (pg, vf, ratio) = (l.policy, l.value, l.ratio);
                    let log_ratio = (&logp - &old_logp)?;
                    let total = ((&pg + (&vf * cfg.vf_coef)?)?.sum_all()? / tokens as f64)?;
                    add_gradients(&total.backward()?, &self.model, &mut sums)?;
                    let num = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.detach().to_vec1::<f32>()?) };
                    let (pg, vf, r, lr_) = (num(&pg)?, num(&vf)?, num(&ratio)?, num(&log_ratio)?);
                    pg_sum += pg.iter().map(|&x| x as f64).sum::<f64>();
                    vf_sum += vf.iter().map(|&x| x as f64).sum::<f64>();
                    clipped += r
                        .iter()
                        .filter(|&&x| (x as f64 - 1.0).abs() > cfg.clip)
                        .count() as f64;
                    approx += lr_.iter().map(|&x| -(x as f64)).sum::<f64>();
                    counted += pg.len() as f64;
                }
                loss_sum = pg_sum + cfg.vf_coef * vf_sum;
                lr = schedule.lr(self.state.step);
                grad_norm = optimizer_step(
                    &self.model,
                    &mut self.optimizer,
                    &sums,
                    &sizes,
                    cfg.tuning.grad_clip,
                    lr,
                )?;
                self.state.step += 1;
                self.state.tokens += tokens as u64;
                self.state.sequences += mb.len() as u64;
            }
        }
        let counted = counted.max(1.0);
        if !(loss_sum / counted).is_finite() {
            return Err(Error::Diverged {
                step: self.state.step,
                loss: loss_sum / counted,
            });
        }
        let raw: Vec<f64> = rollouts.iter().map(|r| r.score).collect();
        let m = PpoMetrics {
            step: self.state.step,
            iteration,
            loss: loss_sum / counted,
            lr,
            grad_norm,
            tokens_per_s: (n_tokens * cfg.ppo_epochs) as f64
                / started.elapsed().as_secs_f64().max(1e-9),
            tokens: self.state.tokens,
            reward: Distribution::of(&raw),
            kl: kl / rollouts.len().max(1) as f64,
            entropy,
            policy_loss: pg_sum / counted,
            value_loss: vf_sum / counted,
            clip_fraction: clipped / counted,
            approx_kl: approx / counted,
            finished: rollouts.iter().filter(|r| r.finished).count() as f64
                / rollouts.len().max(1) as f64,
            mean_answer_tokens: n_tokens as f64 / rollouts.len().max(1) as f64,
        };
        let (mut metrics, path) = crate::finetune::open_metrics(&self.run)?;
        let line = serde_json::to_string(&m)
            .map_err(|e| Error::Internal(format!("encoding metrics: {e}")))?;
        use std::io::Write;
        writeln!(metrics, "{line}").map_err(|e| io(&path, e))?;
        let dir = save_checkpoint(
            &self.run,
            &self.model,
            &self.optimizer,
            &self.state,
            self.config.tuning.keep_checkpoints,
            &metrics,
        )?;
        on_event(PpoEvent::Checkpoint(&dir));
        // The policy that sampled this iteration is the last checkpoint's weights; written
        // again if ever needed, it is the same bytes (an adapter: 19 MB at rank 16 for a
        // 135M model; full weights: the model in f16).
        let _ = std::fs::remove_dir_all(self.iter_dir(iteration).join("policy"));
        Ok(Some(m))
    }
}

/// Per-token losses of a pass, and the ratios π/π_old.
pub struct TokenLosses {
    pub policy: Tensor,
    pub value: Tensor,
    pub ratio: Tensor,
}

/// PPO's per-token losses as tensors (differentiable in `logp` and `values`): the clipped
/// surrogate and the clipped value loss of [`crate::advantage`], token by token.
#[allow(clippy::too_many_arguments)]
pub fn token_losses(
    logp: &Tensor,
    old_logp: &Tensor,
    adv: &Tensor,
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    clip: f64,
    value_clip: f64,
) -> Result<TokenLosses> {
    let ratio = (logp - old_logp)?.exp()?;
    let unclipped = (adv.neg()? * &ratio)?;
    let clipped = (adv.neg()? * ratio.clamp(1.0 - clip, 1.0 + clip)?)?;
    let policy = unclipped.maximum(&clipped)?;
    let step = (values - old_values)?.clamp(-value_clip, value_clip)?;
    let v_clipped = (old_values + step)?;
    let value = ((values - returns)?
        .sqr()?
        .maximum(&(v_clipped - returns)?.sqr()?)?
        * 0.5)?;
    Ok(TokenLosses {
        policy,
        value,
        ratio,
    })
}

/// The seed of an iteration's minibatch order.
fn mix_seed(seed: u64, iteration: usize) -> u64 {
    crate::finetune::mix(seed, iteration as u64, 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advantage::{clipped_policy_loss, clipped_value_loss};

    #[test]
    fn tensor_losses_match_the_plain_ones_and_clip_the_gradient() {
        let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        let logp_v = [-1.0f32, -0.2, -3.0, -0.9, -2.0];
        let old_v = [-1.0f32, -0.6, -2.5, -0.8, -2.0];
        let adv_v = [0.5f32, 1.0, -1.0, -2.0, 0.0];
        let val_v = [0.3f32, 1.0, -0.5, 0.0, 2.0];
        let oldval_v = [0.2f32, 0.5, 0.0, 0.1, 1.5];
        let ret_v = [0.0f32, 2.0, -1.0, 0.3, 1.0];
        let logp = candle_core::Var::new(&logp_v[..], &Device::Cpu).unwrap();
        let l = token_losses(
            logp.as_tensor(),
            &t(&old_v),
            &t(&adv_v),
            &t(&val_v),
            &t(&oldval_v),
            &t(&ret_v),
            0.2,
            0.2,
        )
        .unwrap();
        let pg: Vec<f32> = l.policy.to_vec1().unwrap();
        let vf: Vec<f32> = l.value.to_vec1().unwrap();
        for i in 0..5 {
            let want = clipped_policy_loss(logp_v[i] as f64, old_v[i] as f64, adv_v[i] as f64, 0.2);
            assert!(
                (pg[i] as f64 - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                pg[i]
            );
            let want =
                clipped_value_loss(val_v[i] as f64, oldval_v[i] as f64, ret_v[i] as f64, 0.2);
            assert!(
                (vf[i] as f64 - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                vf[i]
            );
        }
        // d/dlogp: -Â ρ inside the band; nothing where the clip holds the ratio (token 1:
        // ρ = e^0.4 > 1.2 with Â > 0).
        let g = l.policy.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = g.get(logp.as_tensor()).unwrap().to_vec1().unwrap();
        let ratio0 = 1.0f32;
        assert!((g[0] + 0.5 * ratio0).abs() < 1e-5, "{g:?}");
        assert_eq!(g[1], 0.0, "{g:?}");
        let r3 = (-0.9f32 + 0.8).exp();
        assert!((g[3] - 2.0 * r3).abs() < 1e-5, "{g:?}");
    }
}
