//! What a grammar accepts, and the token mask against checking every token one by one.

use std::sync::Arc;

use ferrollama_grammar::{matches, parse, Constraint, Vocabulary};
use proptest::prelude::*;

fn accepts(grammar: &str, text: &str) -> bool {
    matches(&parse(grammar).unwrap(), text).unwrap()
}

#[test]
fn literals_classes_and_alternatives() {
    let g = r#"root ::= "yes" | "no" | [0-9] [a-f]"#;
    for ok in ["yes", "no", "3c"] {
        assert!(accepts(g, ok), "{ok}");
    }
    for bad in ["", "ye", "yess", "3g", "33", "No"] {
        assert!(!accepts(g, bad), "{bad}");
    }
}

#[test]
fn repetitions_count_exactly() {
    let g = r#"root ::= "a"{2,3} "b"* "c"+ "d"? "e"{2,} "f"{,1}"#;
    assert!(accepts(g, "aacee"));
    assert!(accepts(g, "aaabbbcccdeeeef"));
    assert!(!accepts(g, "acee"), "one a");
    assert!(!accepts(g, "aaaacee"), "four a");
    assert!(!accepts(g, "aaee"), "no c");
    assert!(!accepts(g, "aace"), "one e");
    assert!(!accepts(g, "aaceeff"), "two f");
    // A repeated group repeats the whole group.
    assert!(accepts(r#"root ::= ("ab" | "c"){3}"#, "abcab"));
    assert!(!accepts(r#"root ::= ("ab" | "c"){3}"#, "abc"));
}

#[test]
fn negated_classes_any_character_and_unicode() {
    let g = r#"root ::= "\"" [^"\\]* "\"" . [α-ω] "\u00e9" [\U0001F600]"#;
    assert!(accepts(g, "\"hi there\"!λé😀"));
    assert!(accepts(g, "\"\"\nβé😀"));
    assert!(!accepts(g, "\"a\"b\"!λé😀"), "quote inside");
    assert!(!accepts(g, "\"\"!aé😀"), "latin a is not Greek");
}

#[test]
fn rules_refer_to_each_other_and_recurse() {
    let g = "root ::= expr\nexpr ::= term (\"+\" term)*\nterm ::= [0-9]+ | \"(\" expr \")\"\n";
    assert!(accepts(g, "1+(2+30)+((4))"));
    assert!(!accepts(g, "1+(2+30"));
    assert!(!accepts(g, "1++2"));
}

#[test]
fn comments_and_line_breaks_in_groups() {
    let g = "# a list\nroot ::= (\n  item # first\n  (\",\" item)*\n)\n\nitem ::= [a-z]+ # words\n";
    assert!(accepts(g, "ab,c,def"));
    assert!(!accepts(g, "ab,,c"));
}

/// Tokens of a toy vocabulary: single and multi-byte pieces, pieces that end inside a
/// character, a control token (empty) and an end-of-generation token.
fn toy_vocab() -> Vocabulary {
    let pieces = [
        "a", "b", "ab", "ba", "aab", "{", "}", "\"", "\":", ",", " ", "\n", "1", "12", "0", "-",
        "é", "€", "true", "tr", "ue", "null", "[", "]", "{\"", "\"}", "a\"", ", \"",
    ];
    let mut v: Vec<Option<Vec<u8>>> = pieces.iter().map(|p| Some(p.as_bytes().to_vec())).collect();
    v.push(Some(vec![0xE2])); // first byte of '€'
    v.push(Some(vec![0x82, 0xAC])); // its other two
    v.push(Some(vec![0xC3])); // first byte of 'é'
    v.push(Some(vec![0xFF])); // never UTF-8
    v.push(None); // a control token
    v.push(Some(Vec::new())); // EOS, below
    let eos = (v.len() - 1) as u32;
    Vocabulary::new(v, &[eos])
}

/// The mask computed token by token, the plain way.
fn reference_mask(c: &Constraint) -> Vec<bool> {
    (0..c.vocabulary().len() as u32)
        .map(|id| c.allows(id).unwrap())
        .collect()
}

const GRAMMARS: &[&str] = &[
    r#"root ::= "{" ws "\"" [a-b]* "\":" ws value ws "}"
value ::= "true" | "null" | "-"? [0-9]+ | "\"" [^"]* "\""
ws ::= [ \n]*"#,
    r#"root ::= ([ab]{1,3} ",")* [€é]+ "a"?"#,
    r#"root ::= "a" root | "b""#,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Walk random allowed tokens; at every step the trie mask equals the one-by-one mask.
    #[test]
    fn trie_mask_equals_token_by_token(grammar in 0..GRAMMARS.len(), picks in prop::collection::vec(any::<u16>(), 0..12)) {
        let g = Arc::new(parse(GRAMMARS[grammar]).unwrap());
        let mut c = Constraint::new(g, Arc::new(toy_vocab())).unwrap();
        for pick in picks {
            let want = reference_mask(&c);
            let mask = c.mask().unwrap();
            let got: Vec<bool> = (0..want.len() as u32).map(|i| mask.allows(i)).collect();
            prop_assert_eq!(&got, &want);
            let allowed: Vec<u32> = (0..want.len() as u32)
                .filter(|&i| want[i as usize] && !c.vocabulary().is_eog(i))
                .collect();
            if allowed.is_empty() {
                break;
            }
            c.accept(allowed[pick as usize % allowed.len()]).unwrap();
        }
    }
}

#[test]
fn end_of_generation_only_when_complete() {
    let v = Arc::new(toy_vocab());
    let eos = (v.len() - 1) as u32;
    let g = Arc::new(parse(r#"root ::= "ab" | "ab" "a""#).unwrap());
    let mut c = Constraint::new(g, v.clone()).unwrap();
    assert!(!c.allows(eos).unwrap());
    assert!(c.accept(eos).is_err());
    c.accept(2).unwrap(); // "ab"
    assert!(c.is_complete() && !c.is_finished());
    assert!(c.mask().unwrap().allows(eos));
    c.accept(0).unwrap(); // "a"
    assert!(c.is_finished());
    let m = c.mask().unwrap();
    assert_eq!(m.count(), 1, "only the end");
    assert!(m.allows(eos));
}

#[test]
fn control_and_invalid_tokens_are_never_allowed() {
    let v = Arc::new(toy_vocab());
    let g = Arc::new(parse("root ::= .*").unwrap());
    let mut c = Constraint::new(g, v.clone()).unwrap();
    let m = c.mask().unwrap();
    let n = v.len() as u32;
    assert!(!m.allows(n - 2), "control token");
    assert!(!m.allows(n - 3), "0xFF");
    assert!(m.allows(n - 6), "first byte of a character");
    assert!(!m.allows(n - 5), "continuation bytes with nothing before");
    // A rejected token leaves the state as it was.
    let g = Arc::new(parse(r#"root ::= "b""#).unwrap());
    let mut c = Constraint::new(g, v).unwrap();
    assert!(c.accept(0).is_err());
    c.accept(1).unwrap();
    assert!(c.is_finished());
}

#[test]
fn characters_split_across_tokens() {
    let v = Arc::new(toy_vocab());
    let n = v.len() as u32;
    let g = Arc::new(parse(r#"root ::= "€" "a""#).unwrap());
    let mut c = Constraint::new(g, v).unwrap();
    let m = c.mask().unwrap();
    assert!(
        m.allows(17) && m.allows(n - 6) && !m.allows(n - 4),
        "€ whole or its first byte, not é's"
    );
    c.accept(n - 6).unwrap();
    let m = c.mask().unwrap();
    assert_eq!(m.count(), 1);
    assert!(m.allows(n - 5));
    c.accept(n - 5).unwrap();
    c.accept(0).unwrap();
    assert!(c.is_finished());
}

#[test]
fn ambiguity_is_bounded() {
    // Every way of splitting a run of a's: exponential parses if nothing stopped it.
    let g =
        parse("root ::= x*\nx ::= \"a\" | \"a\" \"a\" | \"a\" \"a\" \"a\" | [a] | [a-b]").unwrap();
    let r = matches(&g, &"a".repeat(64));
    // Either a clear error or an answer, never a hang or a panic.
    if let Ok(ok) = r {
        assert!(ok);
    }
}
