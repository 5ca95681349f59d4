//! The VADER port against `vaderSentiment` 3.3.2 itself: scores recorded by the reference
//! on its own example sentences and on edge cases of every rule (negation, "but", caps,
//! boosters, idioms, "least", punctuation, emoji, Python's whitespace), equal to the last
//! rounded digit. The lexicons come from the package (fetched into the cache).

use ferrollama_safety::Vader;

#[test]
fn polarity_scores_equal_vader_sentiment() {
    let dir = ferrollama_assets::vader_lexicons().expect("fetching vaderSentiment 3.3.2 from PyPI");
    let vader = Vader::open(&dir).unwrap();
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("data/vader_reference.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() > 50);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let got = vader.polarity_scores(text);
        let want = &case["scores"];
        for (name, value) in [
            ("neg", got.neg),
            ("neu", got.neu),
            ("pos", got.pos),
            ("compound", got.compound),
        ] {
            assert_eq!(
                value,
                want[name].as_f64().unwrap(),
                "{name} of {text:?}: {got:?}"
            );
        }
    }
}

#[test]
fn a_truncated_lexicon_is_an_error() {
    let dir = ferrollama_assets::vader_lexicons().unwrap();
    let tmp = std::env::temp_dir().join(format!("vader-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let lex = std::fs::read_to_string(dir.join("vader_lexicon.txt")).unwrap();
    let cut = lex.find("good").unwrap();
    std::fs::write(tmp.join("vader_lexicon.txt"), &lex[..cut + 2]).unwrap();
    std::fs::copy(
        dir.join("emoji_utf8_lexicon.txt"),
        tmp.join("emoji_utf8_lexicon.txt"),
    )
    .unwrap();
    let err = Vader::open(&tmp).err().expect("a line without its measure");
    assert!(err.to_string().contains("vader_lexicon.txt"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
