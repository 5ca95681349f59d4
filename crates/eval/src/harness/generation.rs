//! `generate_until` as the harness runs it: greedy generation until a stop string (or the
//! end-of-text token, or `max_gen_toks`), the text cut at the first stop string; then its
//! filters (`regex`, `take_first`, `lowercase`, `uppercase`, `remove_whitespace`) pick the
//! answer, and `exact_match` compares it with the target after its `regexes_to_ignore`,
//! `ignore_case` and `ignore_punctuation`, as the harness's `exact_match_hf_evaluate`.

use ferrollama_model::llama::{Cache, SeqBatch};
use ferrollama_model::Llama;
use ferrollama_tokenizer::Tokenizer;
use serde_yaml::Value as Yaml;

use crate::error::Result;

/// `generation_kwargs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub until: Vec<String>,
    pub max_gen_toks: usize,
}

impl Generation {
    /// Reads `generation_kwargs`; only greedy decoding is offered (the harness's tasks that
    /// are scored by exact match decode greedily).
    pub fn from_yaml(
        v: Option<&Yaml>,
        fewshot_delimiter: &str,
    ) -> std::result::Result<Self, String> {
        let until = match v.and_then(|g| g.get("until")) {
            Some(Yaml::Sequence(s)) => s
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(Yaml::String(s)) => vec![s.clone()],
            _ => vec![fewshot_delimiter.to_string()],
        };
        let max_gen_toks = v
            .and_then(|g| g.get("max_gen_toks"))
            .and_then(Yaml::as_u64)
            .map_or(256, |n| n as usize);
        let sampled = v.and_then(|g| g.get("do_sample")).and_then(Yaml::as_bool) == Some(true)
            || v.and_then(|g| g.get("temperature"))
                .and_then(Yaml::as_f64)
                .is_some_and(|t| t > 0.0);
        if sampled {
            return Err("generation_kwargs: only greedy decoding (do_sample: false, temperature: 0) is supported".into());
        }
        Ok(Self {
            until,
            max_gen_toks,
        })
    }

    /// As the harness logs it in `arguments`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"until": self.until, "do_sample": false, "temperature": 0.0, "max_gen_toks": self.max_gen_toks})
    }
}

/// One step of a filter pipeline.
#[derive(Debug, Clone)]
pub enum Step {
    /// `regex`: `findall`, the `group_select`-th match (negative from the end), a tuple's
    /// first non-empty group, stripped; `fallback` when nothing matches.
    Regex {
        pattern: String,
        group_select: i64,
        fallback: String,
    },
    TakeFirst,
    Lowercase,
    Uppercase,
    RemoveWhitespace,
}

/// A named filter pipeline (`filter_list` entry).
#[derive(Debug, Clone)]
pub struct Filter {
    pub name: String,
    pub steps: Vec<Step>,
}

/// `filter_list`, or the harness's default (`none`: take_first).
pub fn filters_from_yaml(v: Option<&Yaml>) -> std::result::Result<Vec<Filter>, String> {
    let Some(v) = v else {
        return Ok(vec![Filter {
            name: "none".into(),
            steps: vec![Step::TakeFirst],
        }]);
    };
    let list = v.as_sequence().ok_or("`filter_list` must be a list")?;
    list.iter()
        .map(|f| {
            let name = f
                .get("name")
                .and_then(Yaml::as_str)
                .ok_or("every filter needs a `name`")?
                .to_string();
            let steps = f
                .get("filter")
                .and_then(Yaml::as_sequence)
                .ok_or_else(|| format!("filter {name}: `filter` must list steps"))?
                .iter()
                .map(|s| {
                    let function = s.get("function").and_then(Yaml::as_str).unwrap_or_default();
                    Ok(match function {
                        "regex" => Step::Regex {
                            pattern: s
                                .get("regex_pattern")
                                .and_then(Yaml::as_str)
                                .unwrap_or(r"#### (\-?[0-9\.\,]+)")
                                .to_string(),
                            group_select: s.get("group_select").and_then(Yaml::as_i64).unwrap_or(0),
                            fallback: s
                                .get("fallback")
                                .and_then(Yaml::as_str)
                                .unwrap_or("[invalid]")
                                .to_string(),
                        },
                        "take_first" => Step::TakeFirst,
                        "lowercase" => Step::Lowercase,
                        "uppercase" => Step::Uppercase,
                        "remove_whitespace" => Step::RemoveWhitespace,
                        other => {
                            return Err(format!(
                                "filter {name}: function {other:?} is not supported"
                            ))
                        }
                    })
                })
                .collect::<std::result::Result<_, String>>()?;
            Ok(Filter { name, steps })
        })
        .collect()
}

impl Filter {
    /// The filtered answer of one document's generations (one per repeat).
    pub fn apply(&self, generations: &[String]) -> std::result::Result<String, String> {
        let mut resps: Vec<String> = generations.to_vec();
        for step in &self.steps {
            match step {
                Step::TakeFirst => resps.truncate(1),
                Step::Lowercase => resps.iter_mut().for_each(|r| *r = r.to_lowercase()),
                Step::Uppercase => resps.iter_mut().for_each(|r| *r = r.to_uppercase()),
                Step::RemoveWhitespace => resps
                    .iter_mut()
                    .for_each(|r| *r = r.trim_start().to_string()),
                Step::Regex {
                    pattern,
                    group_select,
                    fallback,
                } => {
                    let re = fancy_regex::Regex::new(pattern)
                        .map_err(|e| format!("regex {pattern:?}: {e}"))?;
                    for r in resps.iter_mut() {
                        *r = find_all_select(&re, r, *group_select)
                            .unwrap_or_else(|| fallback.clone());
                    }
                }
            }
        }
        Ok(resps.into_iter().next().unwrap_or_default())
    }
}

/// `re.findall(text)[group_select]` as the harness's regex filter reads it.
fn find_all_select(re: &fancy_regex::Regex, text: &str, group_select: i64) -> Option<String> {
    let groups = re.captures_len() - 1;
    let matches: Vec<Vec<String>> = re
        .captures_iter(text)
        .filter_map(|c| c.ok())
        .map(|c| {
            if groups == 0 {
                vec![c.get(0).map_or("", |m| m.as_str()).to_string()]
            } else {
                (1..=groups)
                    .map(|g| c.get(g).map_or("", |m| m.as_str()).to_string())
                    .collect()
            }
        })
        .collect();
    let n = matches.len() as i64;
    let i = if group_select < 0 {
        n + group_select
    } else {
        group_select
    };
    let m = matches.get(usize::try_from(i).ok()?)?;
    // A tuple (several groups) gives its first non-empty group; none matched gives None.
    let s = if groups > 1 {
        m.iter().find(|g| !g.is_empty())?.clone()
    } else {
        m[0].clone()
    };
    Some(s.trim().to_string())
}

/// The options of `exact_match` in `metric_list`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExactMatch {
    pub ignore_case: bool,
    pub ignore_punctuation: bool,
    pub regexes_to_ignore: Vec<String>,
}

impl ExactMatch {
    pub fn from_yaml(entry: &Yaml) -> Self {
        let flag = |k: &str| entry.get(k).and_then(Yaml::as_bool).unwrap_or(false);
        Self {
            ignore_case: flag("ignore_case"),
            ignore_punctuation: flag("ignore_punctuation"),
            regexes_to_ignore: entry
                .get("regexes_to_ignore")
                .and_then(Yaml::as_sequence)
                .map(|s| {
                    s.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// 1.0 when the prediction equals the reference after the normalisations.
    pub fn score(&self, prediction: &str, reference: &str) -> std::result::Result<f64, String> {
        let norm = |s: &str| -> std::result::Result<String, String> {
            let mut s = s.to_string();
            for pattern in &self.regexes_to_ignore {
                let re = fancy_regex::Regex::new(pattern)
                    .map_err(|e| format!("regex {pattern:?}: {e}"))?;
                s = re.replace_all(&s, "").into_owned();
            }
            if self.ignore_case {
                s = s.to_lowercase();
            }
            if self.ignore_punctuation {
                s.retain(|c| !c.is_ascii_punctuation());
            }
            Ok(s)
        };
        Ok(f64::from(u8::from(norm(prediction)? == norm(reference)?)))
    }
}

/// Greedy continuations of `contexts` (token ids), `batch` at a time: each generation stops at an
/// end-of-text token, at `max_gen_toks`, or once its text holds a stop string, and is cut
/// at the first stop string (the harness adds the EOS text to them). Contexts longer than
/// `max_len - max_gen_toks` lose tokens from the left, as there.
pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    contexts: &[Vec<u32>],
    g: &Generation,
    max_len: usize,
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<String>> {
    let mut until = g.until.clone();
    if let Some(eos) = tok.eos().and_then(|e| tok.decode_lossy(&[e], false).ok()) {
        until.push(eos);
    }
    until.retain(|u| !u.is_empty());
    let budget = max_len.saturating_sub(g.max_gen_toks).max(1);
    let mut out = Vec::with_capacity(contexts.len());
    for chunk in contexts.chunks(batch.max(1)) {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|t| t[t.len().saturating_sub(budget)..].to_vec())
            .collect();
        let mut caches: Vec<Cache> = prompts
            .iter()
            .map(|p| model.new_cache(p.len() + g.max_gen_toks))
            .collect();
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); chunk.len()];
        let mut done = vec![g.max_gen_toks == 0; chunk.len()];
        // The prompts first, then one token per unfinished sequence per pass.
        let mut next: Vec<u32> = {
            let seqs: Vec<SeqBatch> = prompts
                .iter()
                .map(|p| SeqBatch {
                    tokens: p,
                    outputs: 1,
                    adapter: None,
                })
                .collect();
            let mut refs: Vec<&mut Cache> = caches.iter_mut().collect();
            let logits = model.forward_batch(&seqs, &mut refs)?;
            (0..chunk.len()).map(|i| argmax(logits.row(i))).collect()
        };
        loop {
            for i in 0..chunk.len() {
                if done[i] {
                    continue;
                }
                let t = next[i];
                if tok.is_eog(t) {
                    done[i] = true;
                    continue;
                }
                generated[i].push(t);
                let text = tok.decode_lossy(&generated[i], true).unwrap_or_default();
                if generated[i].len() >= g.max_gen_toks
                    || until.iter().any(|u| text.contains(u.as_str()))
                {
                    done[i] = true;
                }
            }
            let active: Vec<usize> = (0..chunk.len()).filter(|&i| !done[i]).collect();
            if active.is_empty() {
                break;
            }
            let tokens: Vec<[u32; 1]> = active.iter().map(|&i| [next[i]]).collect();
            let seqs: Vec<SeqBatch> = tokens
                .iter()
                .map(|t| SeqBatch {
                    tokens: t,
                    outputs: 1,
                    adapter: None,
                })
                .collect();
            let mut refs: Vec<&mut Cache> = caches
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| !done[*i])
                .map(|(_, c)| c)
                .collect();
            let logits = model.forward_batch(&seqs, &mut refs)?;
            for (row, &i) in active.iter().enumerate() {
                next[i] = argmax(logits.row(row));
            }
        }
        for g_ids in generated {
            let mut text = tok.decode_lossy(&g_ids, true).unwrap_or_default();
            for u in &until {
                if let Some(pos) = text.find(u.as_str()) {
                    text.truncate(pos);
                }
            }
            out.push(text);
        }
        progress(out.len());
    }
    Ok(out)
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regex(pattern: &str, group_select: i64) -> Filter {
        Filter {
            name: "f".into(),
            steps: vec![
                Step::Regex {
                    pattern: pattern.into(),
                    group_select,
                    fallback: "[invalid]".into(),
                },
                Step::TakeFirst,
            ],
        }
    }

    #[test]
    fn gsm8k_filters_and_exact_match_as_the_harness() {
        // The harness's gsm8k filters: strict-match and flexible-extract.
        let strict = regex(r"#### (\-?[0-9\.\,]+)", 0);
        let flexible = regex(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1);
        let text = "She sells 9 eggs for $2 each, 9 * 2 = $18.\n#### 18".to_string();
        assert_eq!(strict.apply(std::slice::from_ref(&text)).unwrap(), "18");
        assert_eq!(flexible.apply(std::slice::from_ref(&text)).unwrap(), "18");
        assert_eq!(
            strict.apply(&["So the answer is 7.".into()]).unwrap(),
            "[invalid]"
        );
        assert_eq!(
            flexible.apply(&["So the answer is 7.".into()]).unwrap(),
            "7."
        );
        assert_eq!(
            flexible.apply(&["It costs $1,200.".into()]).unwrap(),
            "$1,200."
        );
        let em = ExactMatch {
            ignore_case: true,
            ignore_punctuation: false,
            regexes_to_ignore: vec![
                ",".into(),
                "\\$".into(),
                "(?s).*#### ".into(),
                "\\.$".into(),
            ],
        };
        let target = "Janet sells 16 - 3 - 4 = 9 duck eggs.\n#### 1,800";
        assert_eq!(em.score("$1,800.", target).unwrap(), 1.0);
        assert_eq!(em.score("1800", target).unwrap(), 1.0);
        assert_eq!(em.score("180", target).unwrap(), 0.0);
    }
}
