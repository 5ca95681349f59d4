//! A dependency analysis in the seminar's format, a Python dict assigned to `data`:
//!
//! ```text
//! data = {
//!   "Token": ["I", "ate", "a", "sandwich"],
//!   "POS Tag": ["PRON", "VERB", "DET", "NOUN"],
//!   "Dependency": ["nsubj", "ROOT", "det", "dobj"],
//!   "Head": [1, None, 3, 1],
//! }
//! ```
//!
//! Heads count from 0; `None` marks the root. Written exactly so (the grammar asks for
//! this layout), read leniently (any Python literal layout, single or double quotes), so
//! that unconstrained answers are judged on content, not on spacing.

use ferrollama_eval::code::pyliteral::{parse_literal_prefix, Py};

use crate::conllu::{Sentence, Word};

/// One analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub tokens: Vec<String>,
    pub pos: Vec<String>,
    pub deps: Vec<String>,
    /// 0-based head index; `None` for the root.
    pub heads: Vec<Option<usize>>,
}

/// A Python string literal (double quotes, as the seminar writes them).
pub fn py_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Analysis {
    /// The gold analysis of a treebank sentence, labels as the treebank has them.
    pub fn from_sentence(s: &Sentence) -> Self {
        Analysis {
            tokens: s.words.iter().map(|w| w.form.clone()).collect(),
            pos: s.words.iter().map(|w| w.upos.clone()).collect(),
            deps: s.words.iter().map(|w| w.deprel.clone()).collect(),
            heads: s.words.iter().map(|w| w.head.checked_sub(1)).collect(),
        }
    }

    /// As the seminar writes it (`data = {` to `}`).
    pub fn to_python(&self) -> String {
        let list = |v: Vec<String>| v.join(", ");
        let strs = |v: &[String]| list(v.iter().map(|s| py_string(s)).collect());
        let heads = list(
            self.heads
                .iter()
                .map(|h| h.map_or("None".to_string(), |h| h.to_string()))
                .collect(),
        );
        format!(
            "data = {{\n  \"Token\": [{}],\n  \"POS Tag\": [{}],\n  \"Dependency\": [{}],\n  \"Head\": [{heads}],\n}}",
            strs(&self.tokens),
            strs(&self.pos),
            strs(&self.deps),
        )
    }

    /// Reads the first `data = {...}` (or bare `{...}`) in a model's answer. Errors say
    /// what is wrong, for the report.
    pub fn parse(text: &str) -> Result<Self, String> {
        let start = match text.find("data") {
            Some(i) => {
                let rest = &text[i + 4..];
                let eq = rest.find('=').ok_or("no `=` after `data`")?;
                i + 4 + eq + 1
            }
            None => text.find('{').ok_or("no dict in the answer")?,
        };
        let (value, _) = parse_literal_prefix(&text[start..])
            .map_err(|e| format!("not a Python literal: {e}"))?;
        let Py::Dict(pairs) = value else {
            return Err("`data` is not a dict".into());
        };
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
                .map(|(_, v)| v)
                .ok_or_else(|| format!("no \"{key}\""))
        };
        let strings = |key: &str| -> Result<Vec<String>, String> {
            match get(key)? {
                Py::List(v) | Py::Tuple(v) => v
                    .iter()
                    .map(|x| match x {
                        Py::Str(s) => Ok(s.clone()),
                        other => Err(format!("\"{key}\" holds {other:?}, not a string")),
                    })
                    .collect(),
                _ => Err(format!("\"{key}\" is not a list")),
            }
        };
        let heads = match get("Head")? {
            Py::List(v) | Py::Tuple(v) => v
                .iter()
                .map(|x| match x {
                    Py::None => Ok(None),
                    Py::Int(i) if *i >= 0 => Ok(Some(*i as usize)),
                    other => Err(format!("\"Head\" holds {other:?}")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err("\"Head\" is not a list".into()),
        };
        let a = Analysis {
            tokens: strings("Token")?,
            pos: strings("POS Tag")?,
            deps: strings("Dependency")?,
            heads,
        };
        let n = a.tokens.len();
        if a.pos.len() != n || a.deps.len() != n || a.heads.len() != n {
            return Err(format!(
                "lists of different lengths: {n} tokens, {} tags, {} relations, {} heads",
                a.pos.len(),
                a.deps.len(),
                a.heads.len()
            ));
        }
        if let Some(h) = a.heads.iter().flatten().find(|&&h| h >= n) {
            return Err(format!("head {h} is past the {n} tokens"));
        }
        Ok(a)
    }

    /// As CoNLL-U words (heads 1-based, 0 for the root), labels as given.
    pub fn to_sentence(&self, id: &str, text: &str) -> Sentence {
        Sentence {
            id: id.to_string(),
            text: text.to_string(),
            words: (0..self.tokens.len())
                .map(|i| Word {
                    form: self.tokens[i].clone(),
                    upos: self.pos[i].clone(),
                    head: self.heads[i].map_or(0, |h| h + 1),
                    deprel: self.deps[i].clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Analysis {
        Analysis {
            tokens: vec!["I".into(), "ate".into(), "a".into(), "\"sandwich\"".into()],
            pos: vec!["PRON".into(), "VERB".into(), "DET".into(), "NOUN".into()],
            deps: vec!["nsubj".into(), "ROOT".into(), "det".into(), "dobj".into()],
            heads: vec![Some(1), None, Some(3), Some(1)],
        }
    }

    #[test]
    fn writes_the_seminar_format_and_reads_it_back() {
        let a = example();
        let text = a.to_python();
        assert!(
            text.starts_with(
                "data = {\n  \"Token\": [\"I\", \"ate\", \"a\", \"\\\"sandwich\\\"\"],"
            ),
            "{text}"
        );
        assert!(text.ends_with("\"Head\": [1, None, 3, 1],\n}"), "{text}");
        assert_eq!(Analysis::parse(&text).unwrap(), a);
        // Leniently: single quotes, other spacing, text around it.
        let loose = "Sure! data={'Token':['I','ate','a','\"sandwich\"'],'POS Tag':['PRON','VERB','DET','NOUN'],\
                     'Dependency':['nsubj','ROOT','det','dobj'],'Head':[1,None,3,1]} Hope it helps.";
        assert_eq!(Analysis::parse(loose).unwrap(), a);
    }

    #[test]
    fn malformed_answers_say_why() {
        assert_eq!(
            Analysis::parse("I cannot").unwrap_err(),
            "no dict in the answer"
        );
        let short = "data = {\"Token\": [\"a\"], \"POS Tag\": [], \"Dependency\": [\"det\"], \"Head\": [None]}";
        assert!(Analysis::parse(short)
            .unwrap_err()
            .contains("different lengths"));
        let far = "data = {\"Token\": [\"a\"], \"POS Tag\": [\"X\"], \"Dependency\": [\"det\"], \"Head\": [3]}";
        assert!(Analysis::parse(far)
            .unwrap_err()
            .contains("past the 1 tokens"));
        assert!(Analysis::parse("data = {\"Token\": [\"a\"]")
            .unwrap_err()
            .contains("not a Python literal"));
    }

    #[test]
    fn gold_sentences_convert_both_ways() {
        let a = example();
        let s = a.to_sentence("x", "I ate a sandwich");
        assert_eq!(s.words[1].head, 0);
        assert_eq!(s.words[0].head, 2);
        assert_eq!(Analysis::from_sentence(&s), a);
    }
}
