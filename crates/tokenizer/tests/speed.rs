//! Encoding must stay far from quadratic: 20 KB of mixed text, and 20 KB without a single
//! split point (one pre-tokenized word for BPE, one fragment for SPM), each well under a
//! second in release builds.

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

fn timed(tok: &Tokenizer, text: &str) -> Duration {
    let t = Instant::now();
    let ids = tok.encode(text, true, true);
    let dt = t.elapsed();
    assert!(!ids.is_empty());
    dt
}

fn check(name: &str, tok: &Tokenizer) -> Result<()> {
    let texts = [
        mixed_text()?,
        "a".repeat(SIZE),
        "ab1".repeat(SIZE / 3),
        "é".repeat(SIZE / 2),
    ];
    for text in &texts {
        let dt = timed(tok, text);
        let head: String = text.chars().take(8).collect();
        eprintln!("{name}: {} bytes ({head:?}...) in {dt:?}", text.len());
        assert!(
            dt < Duration::from_secs(1),
            "{name}: {} bytes took {dt:?}",
            text.len()
        );
    }
    Ok(())
}

#[test]
fn encode_20kb_quickly() -> Result<()> {
    for name in ["llama-spm", "gpt-2", "llama-bpe"] {
        check(name, &common::vocab(name)?)?;
    }
    check("smollm2", &common::smollm2()?)
}
