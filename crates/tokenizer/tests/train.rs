//! Learning a vocabulary: its size, digits kept apart, byte fallback for what it never
//! saw, exact round trips, and the same encoding after a trip through tokenizer.json.

use ferrollama_tokenizer::train::{train_spm_bpe, TrainerOptions};
use ferrollama_tokenizer::Tokenizer;

/// A small corpus written for this test: repeated words so merges have something to find.
fn corpus() -> Vec<String> {
    let lines = [
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "A lazy afternoon by the river: the dog sleeps, the fox watches.",
        "In 1984 the weather was cold, and in 2023 it was warmer than ever.",
        "Training a tokenizer means counting pairs and merging the most frequent one.",
        "The river flows; the fox runs; the dog barks at the quick brown fox.",
    ];
    (0..40)
        .map(|i| {
            format!(
                "{} {}",
                lines[i % lines.len()],
                lines[(i * 3 + 1) % lines.len()]
            )
        })
        .collect()
}

fn trained(vocab_size: usize) -> Tokenizer {
    let opts = TrainerOptions {
        vocab_size,
        ..TrainerOptions::default()
    };
    Tokenizer::from_vocab(train_spm_bpe(&corpus(), &opts).unwrap()).unwrap()
}

#[test]
fn fills_the_vocabulary_to_the_size_asked() {
    assert_eq!(trained(400).vocab_size(), 400);
}

#[test]
fn frequent_words_become_single_tokens_and_digits_stay_apart() {
    let tok = trained(400);
    let the = tok.encode("the", false, false);
    assert_eq!(the.len(), 1, "{:?}", the);
    let digits = tok.encode("1984", false, false);
    // The space prefix, then one token per digit.
    let pieces: Vec<&str> = digits.iter().map(|&id| tok.piece(id).unwrap()).collect();
    assert_eq!(pieces, ["▁", "1", "9", "8", "4"]);
}

#[test]
fn unseen_characters_fall_back_to_bytes_and_round_trip() {
    let tok = trained(400);
    for text in [
        "the fox",
        "naïve 日本 fox 🦊",
        "  two  spaces\nand a newline",
    ] {
        let ids = tok.encode(text, false, false);
        let back = tok.decode(&ids, true).unwrap();
        assert_eq!(String::from_utf8(back).unwrap(), text);
    }
    let ids = tok.encode("日", false, false);
    assert!(ids.iter().skip(1).all(|&id| tok.is_byte(id)), "{ids:?}");
}

#[test]
fn tokenizer_json_reloads_to_the_same_encoder() {
    let tok = trained(400);
    let again = Tokenizer::from_hf_json(
        &tok.to_tokenizer_json(),
        Some(&tok.to_tokenizer_config_json(None)),
    )
    .unwrap();
    for text in corpus().iter().take(5) {
        assert_eq!(
            tok.encode(text, true, false),
            again.encode(text, true, false)
        );
    }
}

#[test]
fn too_small_a_vocabulary_is_an_error() {
    let opts = TrainerOptions {
        vocab_size: 100,
        ..TrainerOptions::default()
    };
    let err = train_spm_bpe(&corpus(), &opts).unwrap_err().to_string();
    assert!(err.contains("cannot hold"), "{err}");
    assert!(train_spm_bpe(&[], &TrainerOptions::default()).is_err());
}
