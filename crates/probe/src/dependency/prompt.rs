//! The seminar's prompts and the grammar that holds an answer to the analysis format.

use ferrollama_grammar::literal;

use super::analysis::{py_string, Analysis};
use super::labels::{answer_labels, UPOS};

/// How many examples precede the sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shots {
    /// An instruction describing the format, no example.
    Zero,
    /// The seminar's two examples.
    Two,
}

/// The seminar's two examples (spaCy's analyses of them).
pub fn examples() -> [(&'static str, Analysis); 2] {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    [
        (
            "I ate a sandwich",
            Analysis {
                tokens: s(&["I", "ate", "a", "sandwich"]),
                pos: s(&["PRON", "VERB", "DET", "NOUN"]),
                deps: s(&["nsubj", "ROOT", "det", "dobj"]),
                heads: vec![Some(1), None, Some(3), Some(1)],
            },
        ),
        (
            "The dog chases the cat",
            Analysis {
                tokens: s(&["The", "dog", "chases", "the", "cat"]),
                pos: s(&["DET", "NOUN", "VERB", "DET", "NOUN"]),
                deps: s(&["det", "nsubj", "ROOT", "det", "dobj"]),
                heads: vec![Some(1), Some(2), None, Some(4), Some(2)],
            },
        ),
    ]
}

const ZERO_SHOT: &str = "Analyse the grammatical structure of the sentence. Give a Python dict named data with \
the keys \"Token\" (the tokens of the sentence), \"POS Tag\" (the universal part-of-speech tag of each token), \
\"Dependency\" (the dependency relation of each token to its head) and \"Head\" (the index of each token's head, \
counting from 0, None for the root).\n";

/// The prompt text for `sentence`, up to where the analysis begins (`Analysis:`; the
/// answer starts with ` data = {`): for a model continuing text.
pub fn prompt(sentence: &str, shots: Shots) -> String {
    format!("{}\nAnalysis:", request(sentence, shots))
}

/// The request as a user message (the examples, then `Sentence: "..."`), for a chat
/// model; the assistant's answer is the analysis, starting with `data = {`.
pub fn request(sentence: &str, shots: Shots) -> String {
    let mut p = String::new();
    match shots {
        Shots::Zero => p.push_str(ZERO_SHOT),
        Shots::Two => {
            for (text, a) in examples() {
                p.push_str(&format!(
                    "Sentence: \"{text}\"\nAnalysis: {}\n\n",
                    a.to_python()
                ));
            }
            p.push_str("Use the same format.\n");
        }
    }
    p.push_str(&format!("Sentence: \"{sentence}\""));
    p
}

/// The GBNF grammar of an answer for a sentence of these tokens: `lead` (a space after
/// `Analysis:`, nothing in a chat answer), then the layout of [`Analysis::to_python`], the
/// tokens fixed, one tag from [`UPOS`] and one relation from [`answer_labels`] per token,
/// each head another token's index or `None`.
pub fn grammar(tokens: &[String], lead: &str) -> String {
    let n = tokens.len();
    let join = |items: Vec<String>| items.join(" \", \" ");
    let toks: Vec<String> = tokens.iter().map(|t| py_string(t)).collect();
    let mut g = String::new();
    g.push_str(&format!(
        "root ::= {} pos-list {} dep-list {} head-list {}\n",
        literal(&format!(
            "{lead}data = {{\n  \"Token\": [{}],\n  \"POS Tag\": [",
            toks.join(", ")
        )),
        literal("],\n  \"Dependency\": ["),
        literal("],\n  \"Head\": ["),
        literal("],\n}"),
    ));
    g.push_str(&format!(
        "pos-list ::= {}\n",
        join(vec!["pos".to_string(); n])
    ));
    g.push_str(&format!(
        "dep-list ::= {}\n",
        join(vec!["dep".to_string(); n])
    ));
    g.push_str(&format!(
        "head-list ::= {}\n",
        join((0..n).map(|i| format!("head-{i}")).collect())
    ));
    let quoted = |labels: &[&str]| {
        labels
            .iter()
            .map(|l| literal(&py_string(l)))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    g.push_str(&format!("pos ::= {}\n", quoted(UPOS)));
    g.push_str(&format!("dep ::= {}\n", quoted(&answer_labels())));
    for i in 0..n {
        let mut alts = vec![literal("None")];
        alts.extend((0..n).filter(|&h| h != i).map(|h| literal(&h.to_string())));
        g.push_str(&format!("head-{i} ::= {}\n", alts.join(" | ")));
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrollama_grammar::{matches, parse};

    #[test]
    fn the_two_shot_prompt_is_the_seminars() {
        let p = prompt("Dogs bark", Shots::Two);
        assert!(p.starts_with("Sentence: \"I ate a sandwich\"\nAnalysis: data = {\n  \"Token\": [\"I\", \"ate\", \"a\", \"sandwich\"],"));
        assert!(p.contains("\"Head\": [1, 2, None, 4, 2],\n}\n\nUse the same format.\nSentence: \"Dogs bark\"\nAnalysis:"));
        assert!(p.ends_with("Analysis:"));
        assert!(prompt("Dogs bark", Shots::Zero).contains("counting from 0"));
    }

    #[test]
    fn the_grammar_takes_exactly_well_formed_analyses_of_the_tokens() {
        let (_, a) = examples()[0].clone();
        let g = parse(&grammar(&a.tokens, " ")).unwrap();
        let chat = parse(&grammar(&a.tokens, "")).unwrap();
        assert!(matches(&chat, &a.to_python()).unwrap());
        let answer = format!(" {}", a.to_python());
        assert!(matches(&g, &answer).unwrap(), "{answer}");
        // UD labels are answers too.
        let ud = answer
            .replace("\"dobj\"", "\"obj\"")
            .replace("\"ROOT\"", "\"root\"");
        assert!(matches(&g, &ud).unwrap());
        for bad in [
            answer.replace("\"sandwich\"", "\"sandwiches\""),
            answer.replace("\"NOUN\"", "\"NOUNS\""),
            answer.replace("\"det\"", "\"determiner\""),
            answer.replace("[1, None, 3, 1]", "[1, None, 3, 4]"),
            answer.replace("[1, None, 3, 1]", "[0, None, 3, 1]"),
            answer.replace("[1, None, 3, 1]", "[1, None, 3]"),
        ] {
            assert!(!matches(&g, &bad).unwrap(), "{bad}");
        }
        // Whatever the answer inside the grammar, it parses.
        let parsed = Analysis::parse(&answer).unwrap();
        assert_eq!(parsed, a);
    }
}
