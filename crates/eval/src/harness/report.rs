//! Output in the harness's own shapes: the samples file (one JSON object per document, as
//! `--log_samples` writes them), the results JSON (`results` -> task -> `acc,none`, ...),
//! and its Markdown table.

use serde_json::{json, Map, Value};

use super::metrics::{self, pool, Aggregate};
use super::TaskResult;

/// One document as the harness logs it: one line, or for a generation task one line per
/// filter.
pub fn sample_lines(s: &super::Sample) -> Vec<Value> {
    let r = &s.requests;
    let mut arguments = Map::new();
    for (i, (ctx, cont)) in r.arguments.iter().enumerate() {
        let second = r.generation.clone().unwrap_or_else(|| json!(cont));
        arguments.insert(
            format!("gen_args_{i}"),
            json!({"arg_0": ctx, "arg_1": second}),
        );
    }
    let base = |filter: &str| {
        let mut out = Map::new();
        out.insert("doc_id".into(), json!(r.doc_id));
        out.insert("doc".into(), Value::Object(r.doc.clone()));
        out.insert("target".into(), r.target.clone());
        out.insert("arguments".into(), Value::Object(arguments.clone()));
        out.insert("filter".into(), json!(filter));
        out
    };
    let metric_json = |v: &super::metrics::Value| match v {
        super::metrics::Value::Scalar(x) => json!(x),
        super::metrics::Value::Weighted(x, w) => json!([x, w]),
    };
    if let Some(text) = &s.generated {
        return s
            .filtered
            .iter()
            .map(|(filter, answer)| {
                let mut out = base(filter);
                let all: Vec<&String> = std::iter::once(text).chain(&s.repeats).collect();
                out.insert("resps".into(), json!([all]));
                out.insert("filtered_resps".into(), json!([answer]));
                let mine: Vec<_> = s
                    .metrics
                    .iter()
                    .filter(|(name, _)| name.split_once(',').is_some_and(|(_, f)| f == filter))
                    .collect();
                out.insert(
                    "metrics".into(),
                    json!(mine
                        .iter()
                        .map(|(n, _)| n.split(',').next().unwrap_or(n))
                        .collect::<Vec<_>>()),
                );
                for (name, v) in mine {
                    out.insert(
                        name.split(',').next().unwrap_or(name).to_string(),
                        metric_json(v),
                    );
                }
                out.extend(s.extra.clone());
                Value::Object(out)
            })
            .collect();
    }
    let pair = |x: &super::Scored| json!([py_float(x.loglikelihood), py_bool(x.is_greedy)]);
    let mut out = base("none");
    out.insert(
        "resps".into(),
        Value::Array(s.scored.iter().map(|x| json!([pair(x)])).collect()),
    );
    out.insert(
        "filtered_resps".into(),
        Value::Array(s.scored.iter().map(pair).collect()),
    );
    out.insert(
        "metrics".into(),
        json!(s.metrics.iter().map(|m| &m.0).collect::<Vec<_>>()),
    );
    for (name, v) in &s.metrics {
        out.insert(name.clone(), metric_json(v));
    }
    vec![Value::Object(out)]
}

/// A group row: MMLU's subjects pooled.
pub struct Group<'a> {
    pub name: &'a str,
    pub tasks: &'a [TaskResult],
}

/// The harness's results JSON for tasks (and groups pooled over some of them).
pub fn results_json(tasks: &[TaskResult], groups: &[Group], config: Value) -> Value {
    let mut results = Map::new();
    let mut n_shot = Map::new();
    let mut n_samples = Map::new();
    let mut higher = Map::new();
    for g in groups {
        results.insert(
            g.name.into(),
            Value::Object(metric_fields(g.name, &pooled(g))),
        );
        let shots = g.tasks.first().map_or(0, |t| t.num_fewshot);
        n_shot.insert(g.name.into(), json!(shots));
    }
    for t in tasks {
        results.insert(
            t.task.clone(),
            Value::Object(metric_fields(&t.task, &t.metrics)),
        );
        n_shot.insert(t.task.clone(), json!(t.num_fewshot));
        n_samples.insert(
            t.task.clone(),
            json!({"original": t.n_original, "effective": t.n_effective}),
        );
        higher.insert(
            t.task.clone(),
            Value::Object(
                t.metrics
                    .iter()
                    .map(|(m, _)| {
                        let metric = split_filter(m).0;
                        (metric.to_string(), json!(metrics::higher_is_better(metric)))
                    })
                    .collect(),
            ),
        );
    }
    let mut out = Map::new();
    out.insert("results".into(), Value::Object(results));
    if !groups.is_empty() {
        let subtasks: Map<String, Value> = groups
            .iter()
            .map(|g| {
                (
                    g.name.to_string(),
                    json!(g.tasks.iter().map(|t| &t.task).collect::<Vec<_>>()),
                )
            })
            .collect();
        out.insert("group_subtasks".into(), Value::Object(subtasks));
    }
    out.insert("n-shot".into(), Value::Object(n_shot));
    out.insert("higher_is_better".into(), Value::Object(higher));
    out.insert("n-samples".into(), Value::Object(n_samples));
    out.insert("config".into(), config);
    let secs: f64 = tasks.iter().map(|t| t.seconds).sum();
    out.insert(
        "total_evaluation_time_seconds".into(),
        json!(format!("{secs}")),
    );
    Value::Object(out)
}

fn pooled(g: &Group) -> Vec<(String, Aggregate)> {
    let Some(first) = g.tasks.first() else {
        return Vec::new();
    };
    first
        .metrics
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let parts: Vec<(Aggregate, usize)> = g
                .tasks
                .iter()
                .filter_map(|t| t.metrics.get(i).map(|m| (m.1, t.n_effective)))
                .collect();
            (name.clone(), pool(&parts))
        })
        .collect()
}

fn metric_fields(alias: &str, metrics: &[(String, Aggregate)]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("alias".into(), json!(alias));
    for (name, a) in metrics {
        let (metric, filter) = split_filter(name);
        m.insert(format!("{metric},{filter}"), json!(a.value));
        m.insert(
            format!("{metric}_stderr,{filter}"),
            a.stderr.map_or(json!("N/A"), |s| json!(s)),
        );
    }
    m
}

/// `exact_match,strict-match` -> (exact_match, strict-match); a plain name's filter is
/// `none`.
fn split_filter(name: &str) -> (&str, &str) {
    name.split_once(',').unwrap_or((name, "none"))
}

/// The harness's results table (`make_table`).
pub fn table(tasks: &[TaskResult], groups: &[Group]) -> String {
    let mut rows: Vec<[String; 9]> = Vec::new();
    let mut push = |name: &str, shots: usize, metrics: &[(String, Aggregate)]| {
        for (i, (m, a)) in metrics.iter().enumerate() {
            rows.push([
                if i == 0 {
                    name.to_string()
                } else {
                    String::new()
                },
                if i == 0 { "1".into() } else { String::new() },
                split_filter(m).1.to_string(),
                if i == 0 {
                    shots.to_string()
                } else {
                    String::new()
                },
                split_filter(m).0.to_string(),
                if metrics::higher_is_better(m) {
                    "↑".into()
                } else {
                    "↓".into()
                },
                format!("{:.4}", a.value),
                "±".into(),
                a.stderr.map_or("N/A".into(), |s| format!("{s:.4}")),
            ]);
        }
    };
    for g in groups {
        push(
            g.name,
            g.tasks.first().map_or(0, |t| t.num_fewshot),
            &pooled(g),
        );
    }
    for t in tasks {
        let name = if groups
            .iter()
            .any(|g| g.tasks.iter().any(|x| x.task == t.task))
        {
            format!(" - {}", t.task)
        } else {
            t.task.clone()
        };
        push(&name, t.num_fewshot, &t.metrics);
    }
    let header = [
        "Tasks", "Version", "Filter", "n-shot", "Metric", "", "Value", "", "Stderr",
    ];
    let right = [false, true, false, true, false, false, true, false, true];
    let widths: Vec<usize> = (0..9)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (c, cell) in cells.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if right[c] {
                s.push_str(&format!("{}{cell}|", " ".repeat(pad)));
            } else {
                s.push_str(&format!("{cell}{}|", " ".repeat(pad)));
            }
        }
        s
    };
    let mut out = line(&header.map(String::from));
    out.push('\n');
    out.push('|');
    for c in 0..9 {
        let dashes = "-".repeat(widths[c].max(1));
        if right[c] {
            out.push_str(&format!("{}:|", &dashes[1..]));
        } else {
            out.push_str(&format!("{dashes}|"));
        }
    }
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// Python's `str(float)`: the shortest text that reads back to the same value, with an
/// exponent below 1e-4 and from 1e16, as `repr` writes it.
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust's `{:e}` is also shortest round-trip: 1.5e-5 -> "1.5e-5"; Python writes
        // "1.5e-05" (at least two exponent digits, a sign).
        let s = format!("{x:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mant}e{sign}{digits:0>2}");
    }
    let s = format!("{x}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python() {
        // CPython: str(-4.25), str(-12.0), str(1.5e-05), str(-3.0000000000000004), str(1e16)
        assert_eq!(py_float(-4.25), "-4.25");
        assert_eq!(py_float(-12.0), "-12.0");
        assert_eq!(py_float(1.5e-5), "1.5e-05");
        assert_eq!(py_float(-3.0000000000000004), "-3.0000000000000004");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(0.0), "0.0");
    }
}
