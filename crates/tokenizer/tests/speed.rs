//! Texts that make naive BPE quadratic: 20 KB of mixed text, and 20 KB without a single
//! split point (one pre-tokenized word for BPE, one fragment for SPM). The test checks that
//! each encodes to plausible ids; how long they take is a benchmark, not a test
//! (`cargo test --release -p ferrollama-tokenizer --test speed -- --ignored --nocapture`
//! prints the times; each was well under a second here).

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use ferrollama_tokenizer::Tokenizer;

const SIZE: usize = 20_000;

fn mixed_text() -> Result<String> {
    let mut text = String::new();
    let cases = common::cases("llama-bpe")?;
    while text.len() < SIZE {
        for c in &cases {
            text.push_str(&c.text);
            text.push(' ');
        }
    }
    Ok(text)
}

fn timed(tok: &Tokenizer, text: &str) -> (Vec<u32>, Duration) {
    let t = Instant::now();
    let ids = tok.encode(text, false, false);
    (ids, t.elapsed())
}

fn check(name: &str, tok: &Tokenizer, print_times: bool) -> Result<()> {
    let texts = [
        mixed_text()?,
        "a".repeat(SIZE),
        "ab1".repeat(SIZE / 3),
        "é".repeat(SIZE / 2),
    ];
    for text in &texts {
        let (ids, dt) = timed(tok, text);
        let head: String = text.chars().take(8).collect();
        // Every token covers at least one byte (SPM may add one for the leading space).
        assert!(
            !ids.is_empty() && ids.len() <= text.len() + 1,
            "{name}: {head:?}... gave {} tokens for {} bytes",
            ids.len(),
            text.len()
        );
        assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
        if print_times {
            println!("{name}: {} bytes ({head:?}...) in {dt:?}", text.len());
        }
    }
    Ok(())
}

fn every_vocab(print_times: bool) -> Result<()> {
    for name in ["llama-spm", "gpt-2", "llama-bpe"] {
        check(name, &common::vocab(name)?, print_times)?;
    }
    check("smollm2", &common::smollm2()?, print_times)
}

#[test]
fn long_texts_without_split_points_encode() -> Result<()> {
    every_vocab(false)
}

/// The benchmark: encode times of the same texts.
#[test]
#[ignore]
fn encode_times_20kb() -> Result<()> {
    every_vocab(true)
}
