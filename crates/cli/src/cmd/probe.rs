//! `ferrollama probe`: the seminar's probes of linguistic knowledge.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ferrollama_generate::grammar_vocabulary;
use ferrollama_probe::conllu::{self, Sentence, Word};
use ferrollama_probe::dependency::{self, Scores, Settings, Shots};
use ferrollama_probe::report;
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::ModelArgs;
use crate::load::load;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// A sentence's dependency analysis in the seminar's format (tokens, UPOS tags,
    /// relations, heads), asked zero- or two-shot, held to the format by a grammar,
    /// scored against CoNLL-U gold (UPOS, UAS, LAS) and drawn as arcs.
    Dependency(DependencyArgs),
    /// A word's morphology tree in bracket notation, asked one-shot with the seminar's
    /// prompt, held to well-formed trees by a grammar, drawn, and scored against
    /// reference trees (exact match, labelled constituents, morpheme boundaries).
    Morphology(MorphologyArgs),
}

#[derive(clap::Args, Debug)]
pub struct MorphologyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Words to analyse (default: every word of the references).
    pub words: Vec<String>,
    /// Reference trees, `word<TAB>tree[<TAB>tree...]` per line (default: the shipped
    /// set of 301 words built from hunspell-en-us and WordNet, with the seminar's
    /// ambiguous `unlockable`).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// The prompt, with `{word}` where the word goes (default: the seminar's).
    #[arg(long)]
    pub prompt: Option<PathBuf>,
    /// Let the model answer freely instead of holding it to well-formed trees.
    #[arg(long)]
    pub no_grammar: bool,
    /// Examples in the prompt: 1 (the seminar's) or 0 (the format described).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub shots: u8,
    /// Ask in the model's chat format (the request as a user message).
    #[arg(long)]
    pub chat: bool,
    /// Write the references as fine-tuning data for `ferrollama sft` (`prompt` = the
    /// request, `completion` = the first reference tree) and exit without running a model.
    #[arg(long, value_name = "FILE")]
    pub write_sft: Option<PathBuf>,
    /// Write each tree as SVG and PNG into this directory (`WORD.svg`, `WORD.png`).
    #[arg(long, value_name = "DIR")]
    pub svg: Option<PathBuf>,
    /// Sequences decoded at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct DependencyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One sentence to analyse (split into words at spaces and punctuation).
    #[arg(long, conflicts_with = "conllu")]
    pub sentence: Option<String>,
    /// Sentences with gold analyses (CoNLL-U, e.g. UD English EWT).
    #[arg(long)]
    pub conllu: Option<PathBuf>,
    /// The first N sentences (after --max-words).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Skip sentences of more words than this.
    #[arg(long, default_value_t = 40)]
    pub max_words: usize,
    /// Examples before the sentence: 2 (the seminar's) or 0 (an instruction only).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub shots: u8,
    /// Let the model answer freely instead of holding it to the format.
    #[arg(long)]
    pub no_grammar: bool,
    /// Ask in the model's chat format (the request as a user message, the analysis as
    /// the reply) instead of as text to continue after `Analysis:`.
    #[arg(long)]
    pub chat: bool,
    /// Write the sentences' gold analyses as fine-tuning data for `ferrollama sft`
    /// (`prompt` = the chat request, `completion` = the analysis, UD's universal
    /// relations) and exit without running a model.
    #[arg(long, value_name = "FILE")]
    pub write_sft: Option<PathBuf>,
    /// Another parser's analyses of the same sentences to score beside the model's
    /// (NAME=FILE.conllu, e.g. spacy=spacy.conllu from benches/spacy_parse.py); repeatable.
    #[arg(long, value_name = "NAME=FILE")]
    pub compare: Vec<String>,
    /// Write an HTML report with every sentence drawn (gold, model, others).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Write PNG drawings into this directory: per sentence the gold tree, the model's and
    /// each compared parser's (`NNN-gold.png`, `NNN-model.png`, `NNN-NAME.png`).
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Write the model's analyses as CoNLL-U (unparsed answers are left out).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write the model's answers, one JSON object per sentence.
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// Sequences decoded at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Print the scores as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Dependency(a) => dependency_probe(a),
        Command::Morphology(a) => morphology_probe(a),
    }
}

/// Words of a plain sentence: split at spaces, punctuation split off the ends of words.
fn words_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for w in text.split_whitespace() {
        let lead: String = w.chars().take_while(|c| c.is_ascii_punctuation()).collect();
        let rest = &w[lead.len()..];
        let core = rest.trim_end_matches(|c: char| c.is_ascii_punctuation());
        let trail = &rest[core.len()..];
        out.extend(lead.chars().map(String::from));
        if !core.is_empty() {
            out.push(core.to_string());
        }
        out.extend(trail.chars().map(String::from));
    }
    out
}

fn dependency_probe(a: DependencyArgs) -> Result<()> {
    let (sentences, has_gold) = match (&a.sentence, &a.conllu) {
        (Some(text), _) => {
            let words = words_of(text);
            if words.is_empty() {
                bail!("--sentence has no words");
            }
            let s = Sentence {
                id: "sentence".into(),
                text: text.clone(),
                words: words
                    .into_iter()
                    .map(|form| Word {
                        form,
                        upos: "_".into(),
                        head: 0,
                        deprel: "_".into(),
                    })
                    .collect(),
            };
            (vec![s], false)
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let all = conllu::read(&text).with_context(|| format!("reading {}", path.display()))?;
            let mut kept: Vec<Sentence> = all
                .into_iter()
                .filter(|s| s.words.len() <= a.max_words)
                .collect();
            if let Some(n) = a.limit {
                kept.truncate(n);
            }
            (kept, true)
        }
        (None, None) => bail!("give --sentence TEXT or --conllu FILE"),
    };
    if sentences.is_empty() {
        bail!("no sentence of at most {} words", a.max_words);
    }
    let mut others: Vec<(String, Vec<Option<Sentence>>, Scores)> = Vec::new();
    for spec in &a.compare {
        let (name, path) = spec
            .split_once('=')
            .with_context(|| format!("--compare {spec}: expected NAME=FILE"))?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let parsed = conllu::read(&text).with_context(|| format!("reading {path}"))?;
        let by_id: std::collections::HashMap<&str, &Sentence> =
            parsed.iter().map(|s| (s.id.as_str(), s)).collect();
        let aligned: Vec<Option<Sentence>> = sentences
            .iter()
            .map(|s| by_id.get(s.id.as_str()).map(|p| (*p).clone()))
            .collect();
        let mut scores = Scores::default();
        for (g, p) in sentences.iter().zip(&aligned) {
            scores.add(g, p.as_ref());
        }
        others.push((name.to_string(), aligned, scores));
    }

    if a.shots == 1 {
        bail!("--shots takes 0 or 2 (the seminar's two examples)");
    }
    let shots = if a.shots == 0 {
        Shots::Zero
    } else {
        Shots::Two
    };
    if let Some(path) = &a.write_sft {
        if !has_gold {
            bail!("--write-sft needs --conllu (gold analyses)");
        }
        let lines: Vec<String> = sentences
            .iter()
            .map(|s| {
                let (prompt, completion) = dependency::training_example(s, shots);
                serde_json::json!({"prompt": prompt, "completion": completion}).to_string()
            })
            .collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("{} examples written to {}", lines.len(), path.display());
        return Ok(());
    }
    let m = load(&a.model)?;
    let started = Instant::now();
    let vocab = grammar_vocabulary(&m.tokenizer);
    let settings = Settings {
        shots,
        constrained: !a.no_grammar,
        parallel: a.parallel,
        chat: a
            .chat
            .then(|| ferrollama_generate::ChatFormat::for_model(m.chat_template.as_deref())),
    };
    let bar = ProgressBar::new(sentences.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} sentences [{elapsed_precise} < {eta_precise}]",
    )?);
    let outcomes = dependency::probe(
        &m.model,
        &m.tokenizer,
        &Arc::clone(&vocab),
        &sentences,
        &settings,
        &mut |n| bar.set_position(n as u64),
    )?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let scores = dependency::score(&sentences, &outcomes);

    if let Some(path) = &a.output {
        let predicted: Vec<Sentence> = sentences
            .iter()
            .zip(&outcomes)
            .filter_map(|(g, o)| o.predicted(g))
            .collect();
        std::fs::write(path, conllu::write(&predicted))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.answers {
        let lines: Vec<String> = sentences
            .iter()
            .zip(&outcomes)
            .map(|(s, o)| {
                serde_json::json!({"id": s.id, "text": s.text, "answer": o.answer,
                    "finish": o.finish, "error": o.analysis.as_ref().err()})
                .to_string()
            })
            .collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.html {
        let other_refs: Vec<report::Other> = others
            .iter()
            .map(|(n, s, sc)| report::Other {
                name: n,
                sentences: s,
                scores: sc,
            })
            .collect();
        let title = format!(
            "Dependency probe: {} sentences, {}-shot{}, {}",
            sentences.len(),
            a.shots,
            if a.chat { ", chat" } else { "" },
            if a.no_grammar {
                "unconstrained"
            } else {
                "grammar-constrained"
            }
        );
        let html = if has_gold {
            report::html(&title, &sentences, &outcomes, &scores, &other_refs)
        } else {
            let p = outcomes[0].predicted(&sentences[0]);
            let body = match &p {
                Some(p) => report::drawing(p, None),
                None => format!(
                    "<pre>{}</pre>",
                    ferrollama_probe::draw::escape(&outcomes[0].answer)
                ),
            };
            format!("<!doctype html><html><head><meta charset=\"utf-8\"></head><body>{body}</body></html>")
        };
        std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))?;
    }

    if let Some(dir) = &a.png {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write_png = |name: String, s: &Sentence, gold: Option<&Sentence>| -> Result<()> {
            let png = ferrollama_probe::draw::png(&report::drawing(s, gold))
                .map_err(anyhow::Error::msg)?;
            let path = dir.join(name);
            std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))
        };
        for (i, (g, o)) in sentences.iter().zip(&outcomes).enumerate() {
            if has_gold {
                write_png(format!("{:03}-gold.png", i + 1), g, None)?;
            }
            if let Some(p) = o.predicted(g) {
                write_png(format!("{:03}-model.png", i + 1), &p, has_gold.then_some(g))?;
            }
            for (n, other, _) in &others {
                if let Some(Some(p)) = other.get(i) {
                    write_png(format!("{:03}-{n}.png", i + 1), p, Some(g))?;
                }
            }
        }
    }
    if !has_gold {
        let o = &outcomes[0];
        match &o.analysis {
            Ok(an) => println!("{}", an.to_python()),
            Err(e) => println!("{}\n(no analysis: {e})", o.answer.trim()),
        }
        return Ok(());
    }
    if a.json {
        let mut v = serde_json::json!({"model": scores, "seconds": seconds, "shots": a.shots,
            "constrained": !a.no_grammar, "chat": a.chat});
        for (n, _, s) in &others {
            v[n.as_str()] = serde_json::to_value(s)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("| parser | sentences | words | parsed | UPOS | UAS | LAS |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let row = |name: &str, s: &Scores| {
        println!(
            "| {name} | {} | {} | {:.1} % | {:.3} | {:.3} | {:.3} |",
            s.sentences,
            s.words,
            100.0 * s.parse_rate(),
            s.upos(),
            s.uas(),
            s.las()
        )
    };
    let name = format!(
        "model, {}-shot{}, {}",
        a.shots,
        if a.chat { " chat" } else { "" },
        if a.no_grammar { "free" } else { "grammar" }
    );
    row(&name, &scores);
    for (n, _, s) in &others {
        row(n, s);
    }
    eprintln!("{:.1} s", seconds);
    Ok(())
}

fn morphology_probe(a: MorphologyArgs) -> Result<()> {
    use ferrollama_probe::morphology::{self, Counts};
    let references = match &a.reference {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            morphology::read_references(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => morphology::read_references(morphology::REFERENCE).map_err(anyhow::Error::msg)?,
    };
    let words: Vec<String> = if a.words.is_empty() {
        references.iter().map(|(w, _)| w.clone()).collect()
    } else {
        a.words.clone()
    };
    if words.is_empty() {
        bail!("give words, or --reference FILE");
    }
    let template = match &a.prompt {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    if template.as_deref().is_some_and(|t| !t.contains("{word}")) {
        bail!("the prompt has no {{word}} placeholder");
    }
    if let Some(path) = &a.write_sft {
        let lines: Vec<String> = references
            .iter()
            .filter(|(w, _)| words.contains(w))
            .map(|(w, trees)| {
                let (prompt, completion) = morphology::training_example(w, &trees[0], a.shots == 1);
                serde_json::json!({"prompt": prompt, "completion": completion}).to_string()
            })
            .collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("{} examples written to {}", lines.len(), path.display());
        return Ok(());
    }
    let m = load(&a.model)?;
    let started = Instant::now();
    let vocab = grammar_vocabulary(&m.tokenizer);
    let bar = ProgressBar::new(words.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} words [{elapsed_precise} < {eta_precise}]",
    )?);
    let outcomes = morphology::probe(
        &m.model,
        &m.tokenizer,
        &vocab,
        &words,
        template.as_deref(),
        &morphology::Settings {
            one_shot: a.shots == 1,
            constrained: !a.no_grammar,
            parallel: a.parallel,
            chat: a
                .chat
                .then(|| ferrollama_generate::ChatFormat::for_model(m.chat_template.as_deref())),
        },
        &mut |n| bar.set_position(n as u64),
    )?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if let Some(dir) = &a.svg {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for o in &outcomes {
            if let Ok(t) = &o.tree {
                let svg = ferrollama_probe::draw::tree_svg(t);
                let safe: String = o
                    .word
                    .chars()
                    .map(|c| if c.is_alphanumeric() { c } else { '_' })
                    .collect();
                std::fs::write(dir.join(format!("{safe}.svg")), &svg)?;
                let png = ferrollama_probe::draw::png(&svg).map_err(anyhow::Error::msg)?;
                std::fs::write(dir.join(format!("{safe}.png")), png)?;
            }
        }
    }
    let (mut exact, mut brackets, mut boundaries, mut scored, mut parsed) =
        (0, Counts::default(), Counts::default(), 0, 0);
    let mut rows = Vec::new();
    for o in &outcomes {
        let refs = references
            .iter()
            .find(|(w, _)| *w == o.word)
            .map(|(_, t)| t.as_slice());
        let cmp = match (&o.tree, refs) {
            (Ok(t), Some(r)) => morphology::compare_best(t, r),
            _ => None,
        };
        parsed += usize::from(o.tree.is_ok());
        if let Some(r) = refs {
            scored += 1;
            match cmp {
                Some(c) => {
                    exact += usize::from(c.exact);
                    brackets.add(c.brackets);
                    boundaries.add(c.boundaries);
                }
                None => {
                    // No tree: every reference constituent and boundary is missed.
                    let c = morphology::compare(&r[0], &r[0]);
                    brackets.add(Counts {
                        matched: 0,
                        predicted: 0,
                        reference: c.brackets.reference,
                    });
                    boundaries.add(Counts {
                        matched: 0,
                        predicted: 0,
                        reference: c.boundaries.reference,
                    });
                }
            }
        }
        rows.push(serde_json::json!({
            "word": o.word,
            "tree": o.tree.as_ref().ok().map(morphology::write),
            "error": o.tree.as_ref().err(),
            "answer": o.answer,
            "comparison": cmp,
        }));
    }
    if a.json {
        let v = serde_json::json!({
            "words": outcomes.len(), "parsed": parsed, "scored": scored, "exact": exact,
            "brackets": brackets, "boundaries": boundaries,
            "bracket_f1": brackets.f1(), "boundary_f1": boundaries.f1(),
            "constrained": !a.no_grammar, "shots": a.shots, "chat": a.chat, "seconds": seconds, "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for o in &outcomes {
        match &o.tree {
            Ok(t) => println!("{} -> {}", o.word, morphology::write(t)),
            Err(e) => println!("{} -> (no tree: {e}) {}", o.word, o.answer.trim()),
        }
    }
    if scored > 0 {
        println!(
            "{scored} words with references: exact {exact} ({:.1} %), labelled constituents P {:.3} R {:.3} F1 {:.3}, boundaries P {:.3} R {:.3} F1 {:.3}; {parsed}/{} trees parsed",
            100.0 * exact as f64 / scored as f64,
            brackets.precision(),
            brackets.recall(),
            brackets.f1(),
            boundaries.precision(),
            boundaries.recall(),
            boundaries.f1(),
            outcomes.len()
        );
    }
    eprintln!("{seconds:.1} s");
    Ok(())
}
