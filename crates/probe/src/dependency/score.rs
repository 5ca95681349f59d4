//! Attachment scores against a treebank: UPOS accuracy, unlabelled and labelled
//! attachment (UAS, LAS), over every gold word. A sentence whose answer did not parse, or
//! whose tokens differ from the gold ones, scores zero on all its words.

use serde::Serialize;

use super::labels::universal;
use crate::conllu::Sentence;

/// Counts over a set of sentences.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scores {
    pub sentences: usize,
    /// Answers that parsed as an analysis.
    pub parsed: usize,
    /// Parsed answers whose tokens are the gold tokens.
    pub aligned: usize,
    pub words: usize,
    pub upos_correct: usize,
    pub heads_correct: usize,
    /// Right head and right universal relation.
    pub labelled_correct: usize,
}

impl Scores {
    /// Adds one sentence: `pred` is the answer, when it parsed.
    pub fn add(&mut self, gold: &Sentence, pred: Option<&Sentence>) {
        self.sentences += 1;
        self.words += gold.words.len();
        let Some(pred) = pred else { return };
        self.parsed += 1;
        if pred.forms() != gold.forms() {
            return;
        }
        self.aligned += 1;
        for (g, p) in gold.words.iter().zip(&pred.words) {
            self.upos_correct += usize::from(g.upos == p.upos);
            if g.head == p.head {
                self.heads_correct += 1;
                let same =
                    universal(&g.deprel).is_some() && universal(&g.deprel) == universal(&p.deprel);
                self.labelled_correct += usize::from(same);
            }
        }
    }

    fn rate(n: usize, d: usize) -> f64 {
        if d == 0 {
            0.0
        } else {
            n as f64 / d as f64
        }
    }

    /// Share of answers that parsed.
    pub fn parse_rate(&self) -> f64 {
        Self::rate(self.parsed, self.sentences)
    }
    pub fn upos(&self) -> f64 {
        Self::rate(self.upos_correct, self.words)
    }
    pub fn uas(&self) -> f64 {
        Self::rate(self.heads_correct, self.words)
    }
    pub fn las(&self) -> f64 {
        Self::rate(self.labelled_correct, self.words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conllu::Word;

    fn sent(words: &[(&str, &str, usize, &str)]) -> Sentence {
        Sentence {
            id: "s".into(),
            text: String::new(),
            words: words
                .iter()
                .map(|&(f, u, h, d)| Word {
                    form: f.into(),
                    upos: u.into(),
                    head: h,
                    deprel: d.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn counts_tags_heads_and_universal_labels() {
        let gold = sent(&[
            ("I", "PRON", 2, "nsubj"),
            ("ate", "VERB", 0, "root"),
            ("it", "PRON", 2, "obj"),
        ]);
        // spaCy-style labels map to UD's; one wrong tag, one wrong head.
        let pred = sent(&[
            ("I", "PRON", 2, "nsubj"),
            ("ate", "NOUN", 0, "ROOT"),
            ("it", "PRON", 1, "dobj"),
        ]);
        let mut s = Scores::default();
        s.add(&gold, Some(&pred));
        assert_eq!(
            (s.upos_correct, s.heads_correct, s.labelled_correct),
            (2, 2, 2)
        );
        // Unparsed and misaligned answers count their words as wrong.
        s.add(&gold, None);
        s.add(&gold, Some(&sent(&[("I", "PRON", 0, "root")])));
        assert_eq!((s.sentences, s.parsed, s.aligned, s.words), (3, 2, 1, 9));
        assert!((s.uas() - 2.0 / 9.0).abs() < 1e-12);
        assert!((s.parse_rate() - 2.0 / 3.0).abs() < 1e-12);
    }
}
