//! `generate_until` as the harness runs it: greedy (or seeded sampled) generation until a
//! stop string (or the end-of-text token, or `max_gen_toks`), the text cut at the first stop string; then its
//! filters (`regex`, `take_first`, `lowercase`, `uppercase`, `remove_whitespace`) pick the
//! answer, and `exact_match` compares it with the target after its `regexes_to_ignore`,
//! `ignore_case` and `ignore_punctuation`, as the harness's `exact_match_hf_evaluate`.

use std::sync::atomic::AtomicBool;

use ferrollama_generate::{generate_all, GenerateParams, Job};
use ferrollama_model::Llama;
use ferrollama_sampling::SamplingParams;
use ferrollama_tokenizer::Tokenizer;
use serde_yaml::Value as Yaml;

use crate::error::{Error, Result};

/// `generation_kwargs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub until: Vec<String>,
    pub max_gen_toks: usize,
    /// `do_sample: true` (or a temperature above 0): sampled with these settings, each
    /// document from its own seed; otherwise greedy.
    pub sampled: Option<Sampled>,
}

/// The sampling settings of `generation_kwargs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
}

impl Generation {
    /// Reads `generation_kwargs` (`until`, `max_gen_toks`, `do_sample`, `temperature`,
    /// `top_p`, `top_k`; as Hugging Face's `generate`, `do_sample` without a temperature
    /// samples at 1.0, and a temperature without `do_sample` is greedy unless above 0).
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
        let number = |k: &str| v.and_then(|g| g.get(k)).and_then(Yaml::as_f64);
        let max_gen_toks = number("max_gen_toks").map_or(256, |n| n.max(0.0) as usize);
        let do_sample = v.and_then(|g| g.get("do_sample")).and_then(Yaml::as_bool);
        let temperature = number("temperature");
        let sampled = match (do_sample, temperature) {
            (Some(false), _) | (None, None) => None,
            (_, Some(t)) if t <= 0.0 => None,
            (_, t) => {
                let s = Sampled {
                    temperature: t.unwrap_or(1.0) as f32,
                    top_p: number("top_p").unwrap_or(1.0) as f32,
                    top_k: number("top_k").unwrap_or(0.0).max(0.0) as usize,
                };
                if !(s.top_p > 0.0 && s.top_p <= 1.0) {
                    return Err(format!(
                        "generation_kwargs: top_p {} is not in (0, 1]",
                        s.top_p
                    ));
                }
                Some(s)
            }
        };
        Ok(Self {
            until,
            max_gen_toks,
            sampled,
        })
    }

    /// As the harness logs it in `arguments`.
    pub fn to_json(&self) -> serde_json::Value {
        match self.sampled {
            None => {
                serde_json::json!({"until": self.until, "do_sample": false, "temperature": 0.0, "max_gen_toks": self.max_gen_toks})
            }
            Some(s) => {
                serde_json::json!({"until": self.until, "do_sample": true, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "max_gen_toks": self.max_gen_toks})
            }
        }
    }

    /// The decode engine's settings for the document with this seed.
    pub fn params(&self, stops: &[String], seed: u64) -> GenerateParams {
        let sampling = match self.sampled {
            None => SamplingParams::greedy(),
            Some(s) => SamplingParams {
                temperature: s.temperature,
                top_p: s.top_p,
                top_k: s.top_k,
                seed,
                ..SamplingParams::greedy()
            },
        };
        GenerateParams {
            max_new_tokens: self.max_gen_toks,
            stop: stops.to_vec(),
            sampling,
            ignore_eos: false,
            grammar: None,
        }
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

/// How [`generate`] runs.
pub struct Run<'a> {
    /// The longest input in tokens: contexts longer than `max_len - max_gen_toks` lose
    /// tokens from the left, as the harness truncates them.
    pub max_len: usize,
    /// Sequences decoded together (the engine's slots; a slot that finishes takes the next
    /// prompt at once, and prompts sharing a prefix with a slot's cache reuse it).
    pub parallel: usize,
    /// Document `i` samples with seed `seed + i` (sampled tasks only).
    pub seed: u64,
    /// Set to abandon the run between steps.
    pub stop: &'a AtomicBool,
}

/// SQuAD's answer normalisation (its official `normalize_answer`): lower case, ASCII
/// punctuation removed, the articles a/an/the removed as words, whitespace collapsed.
pub fn squad_normalize(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQuAD's exact match: 1.0 when the normalised texts are equal.
pub fn squad_em(prediction: &str, gold: &str) -> f64 {
    f64::from(u8::from(
        squad_normalize(prediction) == squad_normalize(gold),
    ))
}

/// SQuAD's token F1 over normalised words (0 when they share none).
pub fn squad_f1(prediction: &str, gold: &str) -> f64 {
    let p = squad_normalize(prediction);
    let g = squad_normalize(gold);
    let p: Vec<&str> = p.split(' ').filter(|w| !w.is_empty()).collect();
    let g: Vec<&str> = g.split(' ').filter(|w| !w.is_empty()).collect();
    let mut counts: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for w in &g {
        *counts.entry(w).or_default() += 1;
    }
    let mut same = 0;
    for w in &p {
        if let Some(c) = counts.get_mut(w) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Continuations of `contexts` (token ids) on the decode engine: each generation stops at an
/// end-of-generation token, at `max_gen_toks`, or where a stop string appears (the
/// harness adds the EOS text to them), and its text ends before that stop string.
pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    contexts: &[Vec<u32>],
    g: &Generation,
    run: &Run,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<String>> {
    let mut until = g.until.clone();
    if let Some(eos) = tok.eos().and_then(|e| tok.decode_lossy(&[e], false).ok()) {
        until.push(eos);
    }
    until.retain(|u| !u.is_empty());
    let budget = run.max_len.saturating_sub(g.max_gen_toks).max(1);
    let jobs: Vec<Job> = contexts
        .iter()
        .enumerate()
        .map(|(i, t)| Job {
            id: i as u64,
            prompt: t[t.len().saturating_sub(budget)..].to_vec(),
            params: g.params(&until, run.seed.wrapping_add(i as u64)),
            top_logprobs: None,
            adapter: None,
        })
        .collect();
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let longest = jobs.iter().map(|j| j.prompt.len()).max().unwrap_or(1);
    let slot = longest + g.max_gen_toks + 1;
    let out = generate_all(
        model,
        tok,
        jobs,
        run.parallel.max(1),
        slot,
        run.stop,
        progress,
    )
    .map_err(|e| Error::Generation(e.to_string()))?
    .ok_or(Error::Interrupted)?;
    Ok(out.into_iter().map(|c| c.text).collect())
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

    #[test]
    fn nq_open_and_triviaqa_answers_match_as_the_harness_normalises_them() {
        // nq_open's metric: articles dropped, case and ASCII punctuation ignored.
        let nq = ExactMatch {
            ignore_case: true,
            ignore_punctuation: true,
            regexes_to_ignore: vec![r"\b(?:The |the |An |A |The |a |an )".into()],
        };
        assert_eq!(nq.score("the Beatles", "The Beatles").unwrap(), 1.0);
        assert_eq!(nq.score("Beatles", "The Beatles").unwrap(), 1.0);
        assert_eq!(nq.score("U.S.A.", "USA").unwrap(), 1.0);
        assert_eq!(nq.score("Beatles band", "The Beatles").unwrap(), 0.0);
        // "Theresa" keeps its "The": the article needs the space after it.
        assert_eq!(nq.score("resa", "Theresa").unwrap(), 0.0);
        let strip = Filter {
            name: "remove_whitespace".into(),
            steps: vec![Step::RemoveWhitespace, Step::TakeFirst],
        };
        assert_eq!(strip.apply(&["  Paris".into()]).unwrap(), "Paris");
    }

    #[test]
    fn sampling_settings_are_read_as_hugging_face_reads_them() {
        let y = |s: &str| serde_yaml::from_str::<Yaml>(s).unwrap();
        let g = Generation::from_yaml(
            Some(&y("{until: [x], do_sample: false, temperature: 0.7}")),
            "\n\n",
        )
        .unwrap();
        assert_eq!(g.sampled, None);
        let g = Generation::from_yaml(Some(&y("{do_sample: true}")), "\n\n").unwrap();
        assert_eq!(g.sampled.unwrap().temperature, 1.0);
        assert_eq!(g.until, ["\n\n"]);
        let g = Generation::from_yaml(
            Some(&y("{temperature: 0.2, top_p: 0.95, max_gen_toks: 9}")),
            "",
        )
        .unwrap();
        assert_eq!(g.sampled.unwrap().top_p, 0.95);
        assert_eq!(g.max_gen_toks, 9);
        assert!(Generation::from_yaml(Some(&y("{do_sample: true, top_p: 0}")), "").is_err());
    }

    /// SQuAD's official scorer (`evaluate-v1.1.py`) on its own kinds of cases.
    #[test]
    fn squad_scores_as_the_official_script() {
        assert_eq!(squad_normalize("The  Cat, the hat!"), "cat hat");
        assert_eq!(squad_normalize("An apple a day"), "apple day");
        // "a" only as a word: "Aachen" keeps its letters.
        assert_eq!(squad_normalize("Aachen"), "aachen");
        assert_eq!(squad_em("the Denver Broncos", "Denver Broncos"), 1.0);
        assert_eq!(squad_em("Denver", "Denver Broncos"), 0.0);
        assert!((squad_f1("Denver", "Denver Broncos") - 2.0 / 3.0).abs() < 1e-12);
        assert!((squad_f1("Broncos of Denver", "Denver Broncos") - 0.8).abs() < 1e-12);
        assert_eq!(squad_f1("", "x"), 0.0);
        assert_eq!(
            squad_f1("the", "the"),
            0.0,
            "nothing left after normalising"
        );
    }
}
