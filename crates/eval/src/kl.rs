//! How far a model (a quantized one) is from a base model (the f16 or f32 original) on a
//! text, as llama.cpp's `llama-perplexity --kl-divergence` reports it: the same chunks and
//! scored positions as perplexity (`crate::perplexity`); at each scored position the KL
//! divergence of the model's next-token distribution from the base's, whether their top
//! tokens agree, and the change Δp in the probability of the actual next token; both
//! perplexities, their ratio and correlation. Unlike llama.cpp, which stores the base's
//! log-probabilities as 16-bit integers, both distributions are kept exact (f64).

use ferrollama_model::Llama;

use crate::error::{Error, Result};
use crate::perplexity::{check_sizes, score_chunk};

/// A mean and its standard error, as llama.cpp's `mean_and_uncertainty` gives them (no
/// error below 11 values).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub stderr: f64,
}

impl Estimate {
    fn of(sum: f64, sum2: f64, n: usize) -> Self {
        if n == 0 {
            return Self {
                mean: 0.0,
                stderr: 0.0,
            };
        }
        let mean = sum / n as f64;
        let var = sum2 / n as f64 - mean * mean;
        let stderr = if var > 0.0 && n > 10 {
            (var / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Self { mean, stderr }
    }
}

/// The comparison of a model with a base model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KlReport {
    pub n_ctx: usize,
    pub n_chunks: usize,
    pub n_scored: usize,
    /// Perplexity of the model, and of the base (with their standard errors).
    pub ppl: Estimate,
    pub ppl_base: Estimate,
    /// Correlation of the two per-token negative log-likelihoods.
    pub ln_ppl_correlation: f64,
    /// ln(PPL / PPL(base)) and PPL / PPL(base).
    pub ln_ppl_ratio: Estimate,
    pub ppl_ratio: f64,
    /// KL(base || model) per scored position, in nats.
    pub kld: Estimate,
    pub kld_max: f64,
    pub kld_p99_9: f64,
    pub kld_p99: f64,
    pub kld_median: f64,
    pub kld_min: f64,
    /// Share of positions where both models' most likely token is the same.
    pub same_top: Estimate,
    /// p(model) - p(base) of the actual next token: its mean and root mean square.
    pub delta_p: Estimate,
    pub delta_p_rms: f64,
    pub seconds: f64,
}

/// Sums over scored positions, as llama.cpp's `kl_divergence_result`.
#[derive(Default)]
struct Sums {
    nll: f64,
    nll2: f64,
    nll_base: f64,
    nll_base2: f64,
    nll_nll_base: f64,
    kld: f64,
    kld2: f64,
    p_diff: f64,
    p_diff2: f64,
    same_top: usize,
    count: usize,
}

/// Log-softmax of `row` in f64, and its arg max.
fn log_softmax(row: &[f32]) -> (Vec<f64>, usize) {
    let (mut imax, mut max) = (0, f32::NEG_INFINITY);
    for (i, &x) in row.iter().enumerate() {
        if x > max {
            (imax, max) = (i, x);
        }
    }
    let max = f64::from(max);
    let lse = row
        .iter()
        .map(|&x| (f64::from(x) - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    (row.iter().map(|&x| f64::from(x) - lse).collect(), imax)
}

/// Compares `model` with `base` on `tokens` (chunks of `n_ctx`, first token of each
/// replaced by `bos` when given); `progress(done, total)` after each chunk.
pub fn kl_divergence(
    base: &Llama,
    model: &Llama,
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    mut progress: impl FnMut(usize, usize),
) -> Result<KlReport> {
    if base.config.vocab_size != model.config.vocab_size {
        return Err(Error::VocabularyMismatch {
            base: base.config.vocab_size,
            model: model.config.vocab_size,
        });
    }
    let start = std::time::Instant::now();
    let n_chunks = check_sizes(tokens, n_ctx)?;
    let (mut base_cache, mut cache) = (base.new_cache(n_ctx), model.new_cache(n_ctx));
    let mut s = Sums::default();
    let mut klds = Vec::new();
    for chunk in 0..n_chunks {
        let (lb, targets) = score_chunk(base, &mut base_cache, tokens, chunk, n_ctx, bos)?;
        let (lm, _) = score_chunk(model, &mut cache, tokens, chunk, n_ctx, bos)?;
        for (i, &t) in targets.iter().enumerate() {
            let (pb, top_b) = log_softmax(lb.row(i));
            let (pm, top_m) = log_softmax(lm.row(i));
            let kld: f64 = pb
                .iter()
                .zip(&pm)
                .map(|(&b, &m)| if b > -50.0 { b.exp() * (b - m) } else { 0.0 })
                .sum();
            let (nll, nll_base) = (-pm[t as usize], -pb[t as usize]);
            let p_diff = (-nll).exp() - (-nll_base).exp();
            s.nll += nll;
            s.nll2 += nll * nll;
            s.nll_base += nll_base;
            s.nll_base2 += nll_base * nll_base;
            s.nll_nll_base += nll * nll_base;
            s.kld += kld;
            s.kld2 += kld * kld;
            s.p_diff += p_diff;
            s.p_diff2 += p_diff * p_diff;
            s.same_top += usize::from(top_b == top_m);
            s.count += 1;
            klds.push(kld);
        }
        progress(chunk + 1, n_chunks);
    }
    Ok(report(
        s,
        klds,
        n_ctx,
        n_chunks,
        start.elapsed().as_secs_f64(),
    ))
}

fn report(s: Sums, mut klds: Vec<f64>, n_ctx: usize, n_chunks: usize, seconds: f64) -> KlReport {
    let n = s.count;
    let ln_ppl = Estimate::of(s.nll, s.nll2, n);
    let ln_ppl_base = Estimate::of(s.nll_base, s.nll_base2, n);
    let cov = if n < 10 {
        0.0
    } else {
        (s.nll_nll_base / n as f64 - ln_ppl.mean * ln_ppl_base.mean) / (n - 1) as f64
    };
    let ratio = ln_ppl.mean - ln_ppl_base.mean;
    let ratio_err = (ln_ppl.stderr.powi(2) + ln_ppl_base.stderr.powi(2) - 2.0 * cov)
        .max(0.0)
        .sqrt();
    let exp = |e: Estimate| Estimate {
        mean: e.mean.exp(),
        stderr: e.mean.exp() * e.stderr,
    };
    klds.sort_by(f64::total_cmp);
    // llama.cpp's percentile: linear between the two nearest ranks.
    let pct = |f: f64| {
        let p = f * (klds.len() - 1) as f64;
        let i = p as usize;
        let hi = klds[(i + 1).min(klds.len() - 1)];
        (1.0 - (p - i as f64)) * klds[i] + (p - i as f64) * hi
    };
    let same = s.same_top as f64 / n as f64;
    KlReport {
        n_ctx,
        n_chunks,
        n_scored: n,
        ppl: exp(ln_ppl),
        ppl_base: exp(ln_ppl_base),
        ln_ppl_correlation: if ln_ppl.stderr > 0.0 && ln_ppl_base.stderr > 0.0 {
            cov / (ln_ppl.stderr * ln_ppl_base.stderr)
        } else {
            0.0
        },
        ln_ppl_ratio: Estimate {
            mean: ratio,
            stderr: ratio_err,
        },
        ppl_ratio: ratio.exp(),
        kld: Estimate::of(s.kld, s.kld2, n),
        kld_max: klds[klds.len() - 1],
        kld_p99_9: pct(0.999),
        kld_p99: pct(0.99),
        kld_median: pct(0.5),
        kld_min: klds[0],
        same_top: Estimate {
            mean: same,
            stderr: (same * (1.0 - same) / (n.max(2) - 1) as f64).sqrt(),
        },
        delta_p: Estimate::of(s.p_diff, s.p_diff2, n),
        delta_p_rms: (s.p_diff2 / n as f64).sqrt(),
        seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalises_and_finds_the_top() {
        let (lp, top) = log_softmax(&[1.0, 3.0, 2.0]);
        assert_eq!(top, 1);
        let total: f64 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn identical_distributions_give_zero_divergence_and_full_agreement() {
        let mut s = Sums::default();
        for i in 0..20 {
            let nll = 1.0 + i as f64 / 10.0;
            s.nll += nll;
            s.nll2 += nll * nll;
            s.nll_base += nll;
            s.nll_base2 += nll * nll;
            s.nll_nll_base += nll * nll;
            s.same_top += 1;
            s.count += 1;
        }
        let r = report(s, vec![0.0; 20], 8, 2, 0.0);
        assert_eq!(r.kld.mean, 0.0);
        assert_eq!(r.same_top.mean, 1.0);
        assert!((r.ppl_ratio - 1.0).abs() < 1e-12);
        assert!(
            (r.ln_ppl_correlation - 1.0).abs() < 1e-9,
            "{}",
            r.ln_ppl_correlation
        );
    }
}
