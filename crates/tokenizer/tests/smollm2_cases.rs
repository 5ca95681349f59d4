//! The strings of `tests/data/smollm2-tokenize.json` (made with llama.cpp's `llama-tokenize
//! --ids --no-escape [--no-parse-special]`, which passes `add_special` = the vocabulary's
//! add_bos) must encode to exactly the recorded ids, with and without parsing specials,
//! for the SmolLM2 vocabulary (no BOS) and for llama-spm (BOS = 1).

mod common;

use anyhow::{Context, Result};
use ferrollama_tokenizer::Tokenizer;
use serde_json::Value;

fn ids(case: &Value, key: &str) -> Result<Vec<u32>> {
    let arr = case[key]
        .as_array()
        .with_context(|| format!("case lacks {key}"))?;
    arr.iter()
        .map(|v| v.as_u64().map(|x| x as u32).context("id is not an integer"))
        .collect()
}

/// Checks every case for one vocabulary; returns how many comparisons were made.
fn check(tok: &Tokenizer, prefix: &str) -> Result<usize> {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(common::data(
        "smollm2-tokenize.json",
    ))?)?;
    let cases = json["cases"].as_array().context("no cases")?;
    let mut failures = Vec::new();
    let mut n = 0;
    for case in cases {
        let text = case["text"].as_str().context("case lacks text")?;
        for (parse_special, key) in [
            (true, format!("{prefix}.ids")),
            (false, format!("{prefix}.ids_no_parse_special")),
        ] {
            let expected = ids(case, &key)?;
            let got = tok.encode(text, true, parse_special);
            n += 1;
            if got != expected {
                failures.push(format!(
                    "{} (parse_special {parse_special}): {text:?}\n  expected: {}\n  got:      {}",
                    case["name"],
                    common::show(tok, &expected),
                    common::show(tok, &got)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{prefix}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(n)
}

#[test]
fn smollm2_vocab() -> Result<()> {
    let tok = common::smollm2()?;
    assert!(!tok.add_bos());
    assert_eq!(check(&tok, "smollm2_135m_q4_1")?, 12);
    Ok(())
}

#[test]
fn llama_spm_vocab_with_bos() -> Result<()> {
    let tok = common::vocab("llama-spm")?;
    assert!(tok.add_bos());
    assert_eq!(check(&tok, "llama_spm_vocab")?, 12);
    Ok(())
}
