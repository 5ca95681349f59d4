//! llama.cpp's tokenizer test vectors (`models/ggml-vocab-*.gguf.{inp,out}`, MIT): every case
//! must encode, as `test-tokenizer-0` does it (`add_special = false`, `parse_special =
//! false`), to exactly the expected ids. Besides the three vocabularies the project relies
//! on, four more exercise other pre-tokenizer names and user-defined tokens.

mod common;

use anyhow::Result;

/// Encodes every case and reports all mismatches at once; returns the number of cases.
fn check(name: &str) -> Result<usize> {
    let tok = common::vocab(name)?;
    let cases = common::cases(name)?;
    let mut failures = Vec::new();
    for case in &cases {
        let got = tok.encode(&case.text, false, false);
        if got != case.ids {
            failures.push(format!(
                "case {:?}\n  expected: {}\n  got:      {}",
                case.text,
                common::show(&tok, &case.ids),
                common::show(&tok, &got)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{name}: {} cases pass", cases.len());
    Ok(cases.len())
}

#[test]
fn llama_spm() -> Result<()> {
    assert!(check("llama-spm")? > 30);
    Ok(())
}

#[test]
fn gpt_2() -> Result<()> {
    assert!(check("gpt-2")? > 30);
    Ok(())
}

#[test]
fn llama_bpe() -> Result<()> {
    assert!(check("llama-bpe")? > 30);
    Ok(())
}

#[test]
fn mpt_user_defined_spaces() -> Result<()> {
    assert!(check("mpt")? > 30);
    Ok(())
}

#[test]
fn starcoder_digits() -> Result<()> {
    assert!(check("starcoder")? > 30);
    Ok(())
}

#[test]
fn refact_digits() -> Result<()> {
    assert!(check("refact")? > 30);
    Ok(())
}

#[test]
fn command_r() -> Result<()> {
    assert!(check("command-r")? > 30);
    Ok(())
}

#[test]
fn phi_3_rstrip() -> Result<()> {
    assert!(check("phi-3")? > 30);
    Ok(())
}
