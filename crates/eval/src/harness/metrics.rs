//! Per-document metrics and their aggregation with standard errors, as the harness computes
//! them (`process_results`, `mean`, `mean_stderr`, `perplexity`, `pooled_sample_stderr`).

use super::prompt::DocRequests;
use super::score::Scored;
use super::task::OutputType;

/// A document's value of one metric: a number, or for the rolling perplexities the
/// log-likelihood with the count it is spread over (words or bytes), as the harness keeps
/// them to aggregate by weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Scalar(f64),
    Weighted(f64, f64),
}

impl Value {
    fn scalar(self) -> f64 {
        match self {
            Value::Scalar(v) => v,
            Value::Weighted(v, _) => v,
        }
    }
}

/// One document's metric values, in the task's metric order.
pub fn doc_metrics(
    output_type: OutputType,
    metrics: &[String],
    req: &DocRequests,
    scored: &[Scored],
) -> Result<Vec<(String, Value)>, String> {
    let mut out = Vec::with_capacity(metrics.len());
    match output_type {
        OutputType::MultipleChoice => {
            let lls: Vec<f64> = scored.iter().map(|s| s.loglikelihood).collect();
            let chars: Vec<f64> = req
                .choices
                .iter()
                .map(|c| c.chars().count() as f64)
                .collect();
            let bytes: Vec<f64> = req.choices.iter().map(|c| c.len() as f64).collect();
            let pred = argmax(lls.iter().copied());
            let pred_norm = argmax(lls.iter().zip(&chars).map(|(l, n)| l / n));
            let pred_bytes = argmax(lls.iter().zip(&bytes).map(|(l, n)| l / n));
            let hit =
                |p: Option<usize>| f64::from(u8::from(p.is_some_and(|p| req.gold.contains(&p))));
            for m in metrics {
                let v = match m.as_str() {
                    "acc" => hit(pred),
                    "acc_norm" => hit(pred_norm),
                    "acc_bytes" => hit(pred_bytes),
                    "exact_match" => f64::from(u8::from(
                        req.gold
                            .iter()
                            .any(|&g| scored.get(g).is_some_and(|s| s.is_greedy)),
                    )),
                    other => {
                        return Err(format!(
                            "metric {other:?} is not supported for multiple_choice"
                        ))
                    }
                };
                out.push((m.clone(), Value::Scalar(v)));
            }
        }
        OutputType::Loglikelihood => {
            let s = scored.first().ok_or("no result for the request")?;
            for m in metrics {
                let v = match m.as_str() {
                    "perplexity" => s.loglikelihood,
                    "acc" => f64::from(u8::from(s.is_greedy)),
                    other => {
                        return Err(format!(
                            "metric {other:?} is not supported for loglikelihood"
                        ))
                    }
                };
                out.push((m.clone(), Value::Scalar(v)));
            }
        }
        OutputType::LoglikelihoodRolling => {
            // Every window of the text, summed.
            let ll: f64 = scored.iter().map(|s| s.loglikelihood).sum();
            let text = req.target.as_str().unwrap_or_default();
            // `len(re.split(r"\s+", doc))` and `len(doc.encode("utf-8"))`.
            let words = count_words(text) as f64;
            let bytes = text.len() as f64;
            for m in metrics {
                let v = match m.as_str() {
                    "word_perplexity" => Value::Weighted(ll, words),
                    "byte_perplexity" | "bits_per_byte" => Value::Weighted(ll, bytes),
                    other => {
                        return Err(format!(
                            "metric {other:?} is not supported for loglikelihood_rolling"
                        ))
                    }
                };
                out.push((m.clone(), v));
            }
        }
        other => return Err(format!("{other:?} tasks are not supported yet")),
    }
    Ok(out)
}

/// `len(re.split(r"\s+", text))`: pieces between runs of whitespace, the empty ones at
/// either end included.
fn count_words(text: &str) -> usize {
    let mut pieces = 1;
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_space {
                pieces += 1;
            }
            in_space = true;
        } else {
            in_space = false;
        }
    }
    pieces
}

/// Whether the harness aggregates a metric as a perplexity (exp of minus the mean) rather
/// than a mean.
pub fn is_perplexity(metric: &str) -> bool {
    metric == "perplexity"
}

/// Whether a higher value is better (the harness's `higher_is_better`).
pub fn higher_is_better(metric: &str) -> bool {
    !metric.contains("perplexity") && metric != "bits_per_byte"
}

/// An aggregated metric: its value and standard error (`None` where the harness prints
/// N/A: a single document, or a perplexity, whose error the harness bootstraps).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    pub value: f64,
    pub stderr: Option<f64>,
}

/// The harness's aggregation of one metric's per-document values: the weighted
/// perplexities and bits per byte over their summed counts, the rest as [`aggregate`].
pub fn aggregate_values(metric: &str, values: &[Value]) -> Aggregate {
    if values.iter().all(|v| matches!(v, Value::Weighted(..))) && !values.is_empty() {
        let (ll, n) = values.iter().fold((0.0, 0.0), |(a, b), v| match v {
            Value::Weighted(x, w) => (a + x, b + w),
            Value::Scalar(_) => (a, b),
        });
        let mean = ll / n;
        let value = if metric == "bits_per_byte" {
            -mean / std::f64::consts::LN_2
        } else {
            (-mean).exp()
        };
        return Aggregate {
            value,
            stderr: None,
        };
    }
    let scalars: Vec<f64> = values.iter().map(|v| v.scalar()).collect();
    aggregate(metric, &scalars)
}

/// The harness's aggregation of one metric's per-document values.
pub fn aggregate(metric: &str, values: &[f64]) -> Aggregate {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if is_perplexity(metric) {
        return Aggregate {
            value: (-mean).exp(),
            stderr: None,
        };
    }
    let stderr = (values.len() > 1).then(|| {
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        var.sqrt() / n.sqrt()
    });
    Aggregate {
        value: mean,
        stderr,
    }
}

/// A group's figure over its tasks (MMLU over its subjects): the mean weighted by size and
/// the pooled standard error, as the harness's `aggregate_subtask_metrics` and
/// `pooled_sample_stderr`.
pub fn pool(parts: &[(Aggregate, usize)]) -> Aggregate {
    let total: usize = parts.iter().map(|p| p.1).sum();
    let value = parts.iter().map(|(a, n)| a.value * *n as f64).sum::<f64>() / total as f64;
    let stderr = parts.iter().all(|p| p.0.stderr.is_some()).then(|| {
        let k = parts.len() as f64;
        let var = parts
            .iter()
            .map(|(a, n)| (*n as f64 - 1.0) * a.stderr.unwrap_or(0.0).powi(2) * *n as f64)
            .sum::<f64>()
            / (total as f64 - k);
        (var / total as f64).sqrt()
    });
    Aggregate { value, stderr }
}

/// numpy's argmax: the first maximum (a NaN counts as the maximum, as in numpy).
fn argmax(values: impl Iterator<Item = f64>) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in values.enumerate() {
        match best {
            Some((_, b)) if b.is_nan() => {}
            Some((_, b)) if !(v > b || v.is_nan()) => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|b| b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_stderr_as_the_harness() {
        // numpy: mean([1,0,1,1]) = 0.75; stdev(ddof=1)/sqrt(4) = 0.25.
        let a = aggregate("acc", &[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(a.value, 0.75);
        assert!((a.stderr.unwrap() - 0.25).abs() < 1e-12);
        let p = aggregate("perplexity", &[-1.0, -3.0]);
        assert!((p.value - 2f64.exp()).abs() < 1e-12);
        // weighted_perplexity: exp(-(-4 - 2) / (3 + 1)); bits_per_byte: 6 / 4 / ln 2.
        let w = [Value::Weighted(-4.0, 3.0), Value::Weighted(-2.0, 1.0)];
        assert!((aggregate_values("word_perplexity", &w).value - 1.5f64.exp()).abs() < 1e-12);
        assert!(
            (aggregate_values("bits_per_byte", &w).value - 1.5 / std::f64::consts::LN_2).abs()
                < 1e-12
        );
    }

    #[test]
    fn words_counted_as_python_splits_them() {
        // len(re.split(r"\s+", s)) in CPython for each string.
        assert_eq!(count_words("a b  c"), 3);
        assert_eq!(count_words(" a b "), 4);
        assert_eq!(count_words(""), 1);
        assert_eq!(count_words("a\n\tb"), 2);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax([1.0, 3.0, 3.0].into_iter()), Some(1));
        assert_eq!(argmax(std::iter::empty()), None);
    }
}
