//! The seeded sampler: penalties, then truncation, then temperature, then a draw.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::params::SamplingParams;
use crate::penalties::apply_penalties;

/// Picks tokens from logits with its own seeded random generator.
pub struct Sampler {
    params: SamplingParams,
    /// ChaCha8: its stream is fixed by its specification, unlike `StdRng`, which may change
    /// between rand versions; same seed, same text across builds.
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// The settings in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token; `logits` is modified (penalised) in place. `history` is every
    /// token so far, prompt included. Non-finite logits are never chosen unless all are.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        apply_penalties(logits, history, &self.params);
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let candidates = self.truncate(logits);
        let t = self.params.temperature;
        let max = candidates.first().map_or(0.0, |c| c.1);
        let weights: Vec<f32> = candidates
            .iter()
            .map(|&(_, l)| ((l - max) / t).exp())
            .collect();
        let total: f32 = weights.iter().sum();
        if !(total.is_finite() && total > 0.0) {
            return argmax(logits);
        }
        let mut r = self.rng.random::<f32>() * total;
        for (&(id, _), w) in candidates.iter().zip(&weights) {
            if r < *w {
                return id;
            }
            r -= w;
        }
        candidates.last().map_or_else(|| argmax(logits), |c| c.0)
    }

    /// Candidates (id, logit) sorted by logit, cut by top-k, top-p and min-p computed at
    /// temperature 1 as llama.cpp does. Never empty while some logit is finite.
    fn truncate(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let p = &self.params;
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan() && **l > f32::NEG_INFINITY)
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && c.len() > p.top_k {
            // Partition out the top k before sorting only them: sorting the whole
            // vocabulary was 9 % of a batched decode step. The order is total (ties go to
            // the lower id), so the result is the same as sorting everything.
            c.select_nth_unstable_by(p.top_k - 1, order);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(order);
        let Some(&(_, max)) = c.first() else { return c };
        let probs: Vec<f32> = {
            let e: Vec<f32> = c.iter().map(|&(_, l)| (l - max).exp()).collect();
            let z: f32 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect()
        };
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let keep = probs.iter().position(|&q| {
                cum += q;
                cum >= p.top_p
            });
            c.truncate(keep.map_or(c.len(), |k| k + 1));
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            let keep = probs
                .iter()
                .take(c.len())
                .take_while(|&&q| q >= floor)
                .count()
                .max(1);
            c.truncate(keep);
        }
        c
    }
}

/// Index of the largest logit (the first on ties), ignoring NaN.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut logits(), &[]), 1);
        assert_eq!(argmax(&[2.0, 5.0, 5.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..SamplingParams::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            ..SamplingParams::default()
        });
        // p(1) = 0.37, p(4) = 0.34: the first two reach 0.5.
        assert_eq!(
            s.truncate(&logits())
                .iter()
                .map(|c| c.0)
                .collect::<Vec<_>>(),
            vec![1, 4]
        );
        let s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            ..SamplingParams::default()
        });
        // exp(-1) = 0.37 < 0.5 drops id 2 and below.
        assert_eq!(
            s.truncate(&logits())
                .iter()
                .map(|c| c.0)
                .collect::<Vec<_>>(),
            vec![1, 4]
        );
    }

    #[test]
    fn same_seed_same_choices() {
        let params = SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..SamplingParams::default()
        };
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..100)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        assert_ne!(
            run(params.clone()),
            run(SamplingParams { seed: 43, ..params })
        );
    }

    #[test]
    fn draws_follow_the_distribution() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..SamplingParams::default()
        });
        let mut counts = [0usize; 2];
        for _ in 0..20000 {
            counts[s.sample(&mut [0.0, 2f32.ln()], &[]) as usize] += 1;
        }
        // Expected 1/3 vs 2/3.
        let frac = counts[1] as f64 / 20000.0;
        assert!((frac - 2.0 / 3.0).abs() < 0.02, "{frac}");
    }

    #[test]
    fn all_negative_infinity_falls_back_to_argmax() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        });
        assert_eq!(s.sample(&mut [f32::NEG_INFINITY; 3], &[]), 0);
    }

    #[test]
    fn validate_rejects_bad_settings() {
        assert!(SamplingParams::default().validate().is_ok());
        assert!(SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        }
        .validate()
        .is_err());
        let err = SamplingParams {
            temperature: f32::NAN,
            ..SamplingParams::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.setting, "temperature");
        assert_eq!(
            err.to_string(),
            "temperature must be a finite number >= 0, got NaN"
        );
    }
}
