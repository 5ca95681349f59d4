//! The tags and relations the dependency probe asks for, and how they compare with
//! Universal Dependencies.
//!
//! The seminar's examples use spaCy's English labels (ClearNLP style: `dobj`, `ROOT`);
//! a model trained on UD trees answers with UD's. The probe accepts both and scores by
//! UD's universal relation (the part before `:`), mapping the ClearNLP labels as below.
//! Where the two schemes attach words differently (UD makes content words heads:
//! prepositions are `case` children of their noun, copulas `cop` children of the
//! predicate), the map cannot help: such words count as wrong heads whatever the label,
//! for spaCy's parse as for the model's.

/// Universal POS tags (UD v2).
pub const UPOS: &[&str] = &[
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
    "PUNCT", "SCONJ", "SYM", "VERB", "X",
];

/// spaCy `en_core_web_sm` 3.8.0's dependency labels (ClearNLP style) and the UD universal
/// relation each corresponds to.
pub const CLEAR_TO_UD: &[(&str, &str)] = &[
    ("ROOT", "root"),
    ("acl", "acl"),
    ("acomp", "xcomp"),
    ("advcl", "advcl"),
    ("advmod", "advmod"),
    ("agent", "obl"),
    ("amod", "amod"),
    ("appos", "appos"),
    ("attr", "xcomp"),
    ("aux", "aux"),
    ("auxpass", "aux"),
    ("case", "case"),
    ("cc", "cc"),
    ("ccomp", "ccomp"),
    ("compound", "compound"),
    ("conj", "conj"),
    ("csubj", "csubj"),
    ("csubjpass", "csubj"),
    ("dative", "iobj"),
    ("dep", "dep"),
    ("det", "det"),
    ("dobj", "obj"),
    ("expl", "expl"),
    ("intj", "discourse"),
    ("mark", "mark"),
    ("meta", "parataxis"),
    ("neg", "advmod"),
    ("nmod", "nmod"),
    ("npadvmod", "obl"),
    ("nsubj", "nsubj"),
    ("nsubjpass", "nsubj"),
    ("nummod", "nummod"),
    ("oprd", "xcomp"),
    ("parataxis", "parataxis"),
    ("pcomp", "advcl"),
    ("pobj", "obl"),
    ("poss", "nmod"),
    ("preconj", "cc"),
    ("predet", "det"),
    ("prep", "case"),
    ("prt", "compound"),
    ("punct", "punct"),
    ("quantmod", "advmod"),
    ("relcl", "acl"),
    ("xcomp", "xcomp"),
];

/// UD v2's universal relations.
pub const UD: &[&str] = &[
    "acl",
    "advcl",
    "advmod",
    "amod",
    "appos",
    "aux",
    "case",
    "cc",
    "ccomp",
    "clf",
    "compound",
    "conj",
    "cop",
    "csubj",
    "dep",
    "det",
    "discourse",
    "dislocated",
    "expl",
    "fixed",
    "flat",
    "goeswith",
    "iobj",
    "list",
    "mark",
    "nmod",
    "nsubj",
    "nummod",
    "obj",
    "obl",
    "orphan",
    "parataxis",
    "punct",
    "reparandum",
    "root",
    "vocative",
    "xcomp",
];

/// Every label the probe lets a model answer with: spaCy's, then UD's not among them.
pub fn answer_labels() -> Vec<&'static str> {
    let mut v: Vec<&str> = CLEAR_TO_UD.iter().map(|(c, _)| *c).collect();
    for u in UD {
        if !v.contains(u) {
            v.push(u);
        }
    }
    v
}

/// The UD universal relation of a label from either scheme (a UD subtype is dropped);
/// `None` for a label of neither.
pub fn universal(label: &str) -> Option<&'static str> {
    if let Some((_, ud)) = CLEAR_TO_UD.iter().find(|(c, _)| *c == label) {
        return Some(ud);
    }
    let base = label.split(':').next().unwrap_or(label);
    UD.iter().find(|u| **u == base).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemes_map_to_universal_relations() {
        assert_eq!(universal("dobj"), Some("obj"));
        assert_eq!(universal("ROOT"), Some("root"));
        assert_eq!(universal("root"), Some("root"));
        assert_eq!(universal("nmod:poss"), Some("nmod"));
        assert_eq!(universal("obl:tmod"), Some("obl"));
        assert_eq!(universal("xyz"), None);
        let labels = answer_labels();
        assert_eq!(labels.len(), 45 + 15, "{labels:?}");
        assert!(labels.iter().all(|l| universal(l).is_some()));
    }
}
