//! The seminar's morphology probe: a word's structure as a tree in square-bracket
//! notation, each node `[label child ...]`, each leaf a morpheme `[form]`:
//!
//! ```text
//! [adverb [adjective [prefix [in]] [adjective [verb [depend]] [suffix [ent]]]] [suffix [ly]]]
//! ```
//!
//! Asked one-shot (the seminar's prompt), held to well-formed trees by a grammar, read,
//! drawn, and scored against reference trees: exact match, labelled constituents
//! (a constituent is its label and the morphemes it covers, so trees with different
//! leaves can still share constituents) and morpheme boundaries (positions in the
//! concatenated leaves).

use std::collections::HashMap;

use crate::draw::Tree;

/// The labels a tree may use.
pub const LABELS: &[&str] = &["noun", "verb", "adjective", "adverb", "prefix", "suffix"];

/// Deepest tree the grammar allows (the seminar's example has depth 5 with its leaves).
pub const MAX_DEPTH: usize = 6;

/// The seminar's example, with the closing bracket its text lacks.
pub const EXAMPLE: (&str, &str) = (
    "independently",
    "[adverb [adjective [prefix [in]] [adjective [verb [depend]] [suffix [ent]]]] [suffix [ly]]]",
);

/// The seminar's one-shot prompt for `word` (`{word}` in a template of one's own); with
/// `one_shot` false, the same request without the example (the format described instead).
pub fn prompt(word: &str, template: Option<&str>, one_shot: bool) -> String {
    match template {
        Some(t) => t.replace("{word}", word),
        None if one_shot => format!(
            "Generate a morphology tree in square bracket notation based on the following example:\n\
             {} ->\n{}\n\
             The tree contains the morphemes as well as their word forms.\n\
             Now it's your turn to generate the morphology tree (use the same format as the example and give no additional explanations):\n\
             {word} ->",
            EXAMPLE.0, EXAMPLE.1
        ),
        None => format!(
            "Generate the morphology tree of a word in square bracket notation: each node is \
             [label children], the labels are noun, verb, adjective, adverb, prefix and suffix, \
             and each morpheme is a leaf in brackets of its own. \
             The tree contains the morphemes as well as their word forms. Give no additional explanations.\n\
             {word} ->"
        ),
    }
}

/// Most morphemes (leaves) a tree may have.
pub const MAX_MORPHEMES: usize = 6;

/// Longest leaf the grammar allows for `word`: its length and a few letters for spelling
/// changes (happy in happiness).
fn leaf_limit(word: &str) -> usize {
    word.chars().count() + 4
}

/// The GBNF grammar of an answer for `word`: a space or line break, then one tree of at
/// most [`MAX_DEPTH`] levels and [`MAX_MORPHEMES`] leaves, each node one or two children
/// (word formation is binary: the seminar's example and every reference tree are), labels
/// from [`LABELS`], leaves of lowercase letters (apostrophes, hyphens) no longer than the
/// word and four letters. Its longest sentence is therefore short, and
/// [`answer_budget`] covers it: a constrained answer is never cut off.
///
/// `t-d-k` is a tree at depth d with at most k leaves; a binary node splits its k.
pub fn grammar(word: &str) -> String {
    let labels: Vec<String> = LABELS.iter().map(|l| format!("\"{l}\"")).collect();
    let mut g = format!(
        "root ::= [ \\n] t-0-{MAX_MORPHEMES}\nlabel ::= {}\nleaf ::= \"[\" [a-z'-]{{1,{}}} \"]\"\n",
        labels.join(" | "),
        leaf_limit(word)
    );
    for d in 0..MAX_DEPTH {
        for k in 1..=MAX_MORPHEMES {
            if d + 1 == MAX_DEPTH {
                g.push_str(&format!("t-{d}-{k} ::= leaf\n"));
                continue;
            }
            let n = d + 1;
            let mut alts = vec![
                "leaf".to_string(),
                format!("\"[\" label \" \" t-{n}-{k} \"]\""),
            ];
            for j in 1..k {
                alts.push(format!(
                    "\"[\" label \" \" t-{n}-{j} \" \" t-{n}-{} \"]\"",
                    k - j
                ));
            }
            g.push_str(&format!("t-{d}-{k} ::= {}\n", alts.join(" | ")));
        }
    }
    g
}

/// Characters of the longest answer [`grammar`] allows for `word` (every token is at
/// least one character, so this many tokens always suffice).
pub fn answer_budget(word: &str) -> usize {
    let label = LABELS.iter().map(|l| l.len()).max().unwrap_or(0);
    let leaf = leaf_limit(word) + 2;
    // longest[d][k], filled from the deepest level up.
    let mut longest = vec![vec![0usize; MAX_MORPHEMES + 1]; MAX_DEPTH];
    for d in (0..MAX_DEPTH).rev() {
        for k in 1..=MAX_MORPHEMES {
            longest[d][k] = if d + 1 == MAX_DEPTH {
                leaf
            } else {
                let below = &longest[d + 1];
                let unary = label + 3 + below[k];
                let binary = (1..k)
                    .map(|j| label + 4 + below[j] + below[k - j])
                    .max()
                    .unwrap_or(0);
                leaf.max(unary).max(binary)
            };
        }
    }
    1 + longest[0][MAX_MORPHEMES]
}

/// Reads a tree from the start of `text` (leading blanks skipped); text after it is left.
pub fn parse(text: &str) -> Result<Tree, String> {
    let mut p = Reader {
        s: text.trim_start().as_bytes(),
        i: 0,
    };
    let t = p.node(0)?;
    Ok(t)
}

struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn blanks(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn node(&mut self, depth: usize) -> Result<Tree, String> {
        if depth > 64 {
            return Err("nested deeper than 64".into());
        }
        self.blanks();
        if self.s.get(self.i) != Some(&b'[') {
            return Err(format!("expected `[` at byte {}", self.i));
        }
        self.i += 1;
        self.blanks();
        let start = self.i;
        while self.i < self.s.len()
            && !matches!(self.s[self.i], b'[' | b']' | b' ' | b'\n' | b'\t' | b'\r')
        {
            self.i += 1;
        }
        let label = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        if label.is_empty() {
            return Err(format!("a node without a label at byte {start}"));
        }
        let mut children = Vec::new();
        loop {
            self.blanks();
            match self.s.get(self.i) {
                Some(b']') => {
                    self.i += 1;
                    return Ok(Tree { label, children });
                }
                Some(b'[') => children.push(self.node(depth + 1)?),
                Some(_) => return Err(format!("unexpected text at byte {}", self.i)),
                None => return Err("the tree is not closed".into()),
            }
        }
    }
}

/// The tree in bracket notation.
pub fn write(t: &Tree) -> String {
    if t.children.is_empty() {
        return format!("[{}]", t.label);
    }
    let kids: Vec<String> = t.children.iter().map(write).collect();
    format!("[{} {}]", t.label, kids.join(" "))
}

/// The morphemes (leaves) left to right.
pub fn morphemes(t: &Tree) -> Vec<&str> {
    if t.children.is_empty() {
        return vec![t.label.as_str()];
    }
    t.children.iter().flat_map(morphemes).collect()
}

/// Labelled constituents: (label, the morphemes covered joined by `+`), leaves excluded.
fn constituents(t: &Tree, out: &mut HashMap<(String, String), usize>) {
    if t.children.is_empty() {
        return;
    }
    *out.entry((t.label.clone(), morphemes(t).join("+")))
        .or_default() += 1;
    for c in &t.children {
        constituents(c, out);
    }
}

/// Morpheme boundaries: character offsets between leaves in their concatenation.
fn boundaries(t: &Tree) -> Vec<usize> {
    let mut at = 0;
    let mut out = Vec::new();
    let m = morphemes(t);
    for (i, leaf) in m.iter().enumerate() {
        at += leaf.chars().count();
        if i + 1 < m.len() {
            out.push(at);
        }
    }
    out
}

/// Counts for precision/recall: matched, predicted, reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Counts {
    pub matched: usize,
    pub predicted: usize,
    pub reference: usize,
}

impl Counts {
    pub fn add(&mut self, o: Counts) {
        self.matched += o.matched;
        self.predicted += o.predicted;
        self.reference += o.reference;
    }
    pub fn precision(&self) -> f64 {
        ratio(self.matched, self.predicted)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.matched, self.reference)
    }
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

/// How one predicted tree compares with one reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Comparison {
    pub exact: bool,
    pub brackets: Counts,
    pub boundaries: Counts,
}

/// Compares a prediction with a reference tree.
pub fn compare(pred: &Tree, reference: &Tree) -> Comparison {
    let (mut p, mut r) = (HashMap::new(), HashMap::new());
    constituents(pred, &mut p);
    constituents(reference, &mut r);
    let matched = p
        .iter()
        .map(|(k, n)| (*n).min(*r.get(k).unwrap_or(&0)))
        .sum();
    let brackets = Counts {
        matched,
        predicted: p.values().sum(),
        reference: r.values().sum(),
    };
    let (pb, rb) = (boundaries(pred), boundaries(reference));
    let boundaries = Counts {
        matched: pb.iter().filter(|b| rb.contains(b)).count(),
        predicted: pb.len(),
        reference: rb.len(),
    };
    Comparison {
        exact: write(pred) == write(reference),
        brackets,
        boundaries,
    }
}

/// Compares with the best of several references (an ambiguous word has more than one):
/// the one of highest bracket F1, then boundary F1.
pub fn compare_best(pred: &Tree, references: &[Tree]) -> Option<Comparison> {
    references.iter().map(|r| compare(pred, r)).max_by(|a, b| {
        (a.exact, a.brackets.f1(), a.boundaries.f1())
            .partial_cmp(&(b.exact, b.brackets.f1(), b.boundaries.f1()))
            .unwrap_or(std::cmp::Ordering::Equal)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrollama_grammar::{matches, parse as parse_gbnf};

    fn t(s: &str) -> Tree {
        parse(s).unwrap()
    }

    #[test]
    fn trees_read_and_write_back() {
        let tree = t(EXAMPLE.1);
        assert_eq!(write(&tree), EXAMPLE.1);
        assert_eq!(morphemes(&tree), ["in", "depend", "ent", "ly"]);
        assert_eq!(boundaries(&tree), [2, 8, 11]);
        assert!(parse("[adverb [in]").unwrap_err().contains("not closed"));
        assert!(parse("adverb").unwrap_err().contains("expected `[`"));
        assert!(parse("[ ]").unwrap_err().contains("without a label"));
        // Text after the tree is left alone.
        assert_eq!(write(&t(" [noun [cat]] and more")), "[noun [cat]]");
    }

    #[test]
    fn the_grammar_takes_well_formed_trees_only() {
        let g = parse_gbnf(&grammar(EXAMPLE.0)).unwrap();
        assert!(matches(&g, &format!(" {}", EXAMPLE.1)).unwrap());
        assert!(matches(
            &g,
            "\n[adjective [prefix [un]] [adjective [verb [lock]] [suffix [able]]]]"
        )
        .unwrap());
        for bad in [
            format!(" {}", &EXAMPLE.1[..EXAMPLE.1.len() - 1]),
            " [thing [a]]".to_string(),
            " [noun [Cat]]".to_string(),
            " [noun]x".to_string(),
            format!(" {}[a]{}", "[noun ".repeat(6), "]".repeat(6)),
            " [noun [a] [b] [c]]".to_string(),
            format!(" [noun [{}]]", "a".repeat(18)),
            " [noun [noun [a] [b]] [noun [noun [c] [d]] [noun [e] [noun [f] [g]]]]]".to_string(),
        ] {
            assert!(!matches(&g, &bad).unwrap(), "{bad}");
        }
        // Six morphemes fit.
        assert!(matches(
            &g,
            " [noun [noun [a] [b]] [noun [noun [c] [d]] [noun [e] [f]]]]"
        )
        .unwrap());
    }

    #[test]
    fn the_budget_covers_the_longest_tree_the_grammar_allows() {
        // The longest tree: unary chains as deep as allowed over binary splits, longest
        // labels and leaves. Build it greedily from the same recursion and check it.
        fn longest(d: usize, k: usize, leaf: &str) -> Tree {
            let label = "adjective".to_string();
            if d + 1 == MAX_DEPTH {
                return Tree {
                    label: leaf.into(),
                    children: vec![],
                };
            }
            let size = |t: &Tree| write(t).len();
            let mut best = Tree {
                label: leaf.into(),
                children: vec![],
            };
            let unary = Tree {
                label: label.clone(),
                children: vec![longest(d + 1, k, leaf)],
            };
            if size(&unary) > size(&best) {
                best = unary;
            }
            for j in 1..k {
                let t = Tree {
                    label: label.clone(),
                    children: vec![longest(d + 1, j, leaf), longest(d + 1, k - j, leaf)],
                };
                if size(&t) > size(&best) {
                    best = t;
                }
            }
            best
        }
        let word = "unlockable";
        let leaf = "x".repeat(leaf_limit(word));
        let t = longest(0, MAX_MORPHEMES, &leaf);
        let answer = format!(" {}", write(&t));
        assert!(matches(&parse_gbnf(&grammar(word)).unwrap(), &answer).unwrap());
        assert_eq!(answer.len(), answer_budget(word));
        assert!(answer_budget(word) < 1200, "{}", answer_budget(word));
    }

    #[test]
    fn scores_count_constituents_and_boundaries() {
        let left = t("[adjective [verb [prefix [un]] [verb [lock]]] [suffix [able]]]");
        let right = t("[adjective [prefix [un]] [adjective [verb [lock]] [suffix [able]]]]");
        let c = compare(&right, &left);
        assert!(!c.exact);
        // Shared: prefix un, verb lock, suffix able, and the whole adjective.
        assert_eq!(
            c.brackets,
            Counts {
                matched: 4,
                predicted: 5,
                reference: 5
            }
        );
        assert_eq!(
            c.boundaries,
            Counts {
                matched: 2,
                predicted: 2,
                reference: 2
            }
        );
        assert!(compare(&left, &left).exact);
        // Against both readings the best one wins.
        let best = compare_best(&right, &[left.clone(), right.clone()]).unwrap();
        assert!(best.exact);
        let flat = t("[adjective [unlock] [able]]");
        let c = compare(&flat, &left);
        assert_eq!(
            c.boundaries,
            Counts {
                matched: 1,
                predicted: 1,
                reference: 2
            }
        );
    }
}

/// How to ask.
#[derive(Debug, Clone)]
pub struct Settings {
    /// With the seminar's example (else the format described, no example).
    pub one_shot: bool,
    /// Hold answers to well-formed trees.
    pub constrained: bool,
    pub parallel: usize,
    /// Ask as a user message in this chat format.
    pub chat: Option<ferrollama_generate::ChatFormat>,
}

/// One supervised example: the chat request for `word` and its tree as the answer
/// (after the space or line break the grammar begins with).
pub fn training_example(word: &str, tree: &Tree, one_shot: bool) -> (String, String) {
    (prompt(word, None, one_shot), format!(" {}", write(tree)))
}

/// One word's answer.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub word: String,
    pub answer: String,
    pub finish: ferrollama_generate::FinishReason,
    /// The tree, or why the answer is not one.
    pub tree: Result<Tree, String>,
}

/// Asks for every word's tree (greedy), with the grammar when `constrained`.
pub fn probe(
    model: &ferrollama_model::Llama,
    tok: &ferrollama_tokenizer::Tokenizer,
    vocab: &std::sync::Arc<ferrollama_grammar::Vocabulary>,
    words: &[String],
    template: Option<&str>,
    settings: &Settings,
    progress: &mut dyn FnMut(usize),
) -> crate::Result<Vec<Outcome>> {
    let Settings {
        one_shot,
        constrained,
        parallel,
        chat,
    } = settings;
    use ferrollama_generate::{generate_all, FinishReason, GenerateParams, Job};
    use std::sync::Arc;
    let mut jobs = Vec::with_capacity(words.len());
    let mut longest = 0;
    for (i, w) in words.iter().enumerate() {
        let text = prompt(w, template, *one_shot);
        let prompt = match chat {
            // The request as a user message; the answer is the tree after `-> `'s line.
            Some(format) => {
                format.encode(&[ferrollama_generate::Message::new("user", &text)], tok)?
            }
            None => tok.encode(&text, true, true),
        };
        let constraint = if *constrained {
            let g = Arc::new(ferrollama_grammar::parse(&grammar(w))?);
            Some(ferrollama_grammar::Constraint::new(g, Arc::clone(vocab))?)
        } else {
            None
        };
        // A free answer gets 160 tokens (plenty for a tree; a free run that rambles
        // would otherwise take the whole grammar bound).
        let budget = if *constrained { answer_budget(w) } else { 160 };
        longest = longest.max(prompt.len() + budget);
        jobs.push(Job {
            id: i as u64,
            prompt,
            params: GenerateParams {
                max_new_tokens: budget,
                stop: vec!["\n\n".into()],
                sampling: ferrollama_sampling::SamplingParams::greedy(),
                ignore_eos: false,
                grammar: constraint,
            },
            top_logprobs: None,
            adapter: None,
        });
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let n_ctx = longest.min(model.max_context());
    let done = generate_all(model, tok, jobs, (*parallel).max(1), n_ctx, &stop, progress)?
        .ok_or_else(|| crate::Error::Input("the probe was stopped".into()))?;
    Ok(words
        .iter()
        .zip(done)
        .map(|(w, c)| Outcome {
            word: w.clone(),
            tree: if c.finish == FinishReason::Length {
                Err("cut off".into())
            } else {
                parse(&c.text)
            },
            answer: c.text,
            finish: c.finish,
        })
        .collect())
}

/// Reference trees: `word<TAB>tree[<TAB>tree...]` per line (more than one tree for an
/// ambiguous word), `#` comments.
pub fn read_references(text: &str) -> Result<Vec<(String, Vec<Tree>)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.split('\t');
        let word = cols.next().unwrap_or_default().trim().to_string();
        let trees = cols
            .map(|c| parse(c).map_err(|e| format!("line {}: {e}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        if word.is_empty() || trees.is_empty() {
            return Err(format!("line {}: expected word<TAB>tree", i + 1));
        }
        out.push((word, trees));
    }
    Ok(out)
}

/// The shipped reference set (`data/morphology-reference.tsv`, see `data/README.md`).
pub const REFERENCE: &str = include_str!("../data/morphology-reference.tsv");

#[cfg(test)]
mod reference_tests {
    use super::*;
    use ferrollama_grammar::{matches, parse as parse_gbnf};

    #[test]
    fn every_shipped_reference_is_a_tree_the_grammar_takes() {
        let refs = read_references(REFERENCE).unwrap();
        assert!(refs.len() >= 300, "{}", refs.len());
        let mut ambiguous = 0;
        for (word, trees) in &refs {
            ambiguous += usize::from(trees.len() > 1);
            let g = parse_gbnf(&grammar(word)).unwrap();
            for t in trees {
                assert!(
                    matches(&g, &format!(" {}", write(t))).unwrap(),
                    "{word}: {}",
                    write(t)
                );
                assert!(morphemes(t).len() >= 2, "{word}");
            }
        }
        assert!(ambiguous >= 40);
        let (_, unlockable) = refs.iter().find(|(w, _)| w == "unlockable").unwrap();
        assert_eq!(
            unlockable.len(),
            2,
            "the seminar's ambiguous word has both readings"
        );
    }
}
