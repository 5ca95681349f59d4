//! Per-document metrics and their aggregation with standard errors, as the harness computes
//! them (`process_results`, `mean`, `mean_stderr`, `perplexity`, `pooled_sample_stderr`).

use super::prompt::DocRequests;
use super::score::Scored;
use super::task::OutputType;

/// One document's metric values, in the task's metric order.
pub fn doc_metrics(
    output_type: OutputType,
    metrics: &[String],
    req: &DocRequests,
    scored: &[Scored],
) -> Result<Vec<(String, f64)>, String> {
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
                out.push((m.clone(), v));
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
                out.push((m.clone(), v));
            }
        }
        other => return Err(format!("{other:?} tasks are not supported yet")),
    }
    Ok(out)
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
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax([1.0, 3.0, 3.0].into_iter()), Some(1));
        assert_eq!(argmax(std::iter::empty()), None);
    }
}
