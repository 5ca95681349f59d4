//! token_to_piece / decode on the real vocabularies: `▁` and byte-fallback handling, the
//! leading-space rule of SPM detokenizing, control tokens, and out-of-range ids.

mod common;

use anyhow::{Context, Result};
use ferrollama_tokenizer::{Error, Tokenizer};

fn id(tok: &Tokenizer, text: &str) -> Result<u32> {
    tok.token_id(text)
        .with_context(|| format!("{text:?} is not a token"))
}

#[test]
fn spm_space_marker_becomes_a_space() -> Result<()> {
    let tok = common::vocab("llama-spm")?;
    let hello = id(&tok, "▁Hello")?;
    assert_eq!(tok.token_to_piece(hello, false)?, b" Hello");
    assert_eq!(
        tok.encode("Hello world", false, false),
        [hello, id(&tok, "▁world")?]
    );
    // A leading space of the text stays a token of its own after the added prefix space.
    assert_eq!(tok.encode(" Hello", false, false), [id(&tok, "▁")?, hello]);
    // A literal ▁ in the input is indistinguishable from an escaped space.
    let ids = tok.encode("a▁b", false, false);
    assert_eq!(tok.decode(&ids, false)?, b"a b");
    Ok(())
}

#[test]
fn spm_byte_fallback_round_trips() -> Result<()> {
    let tok = common::vocab("llama-spm")?;
    let llama = "🦙";
    let mut expected = vec![id(&tok, "▁")?];
    for b in llama.bytes() {
        expected.push(id(&tok, &format!("<0x{b:02X}>"))?);
    }
    let ids = tok.encode(llama, false, false);
    assert_eq!(ids, expected);
    assert!(ids[1..].iter().all(|&i| tok.is_byte(i)));
    assert_eq!(tok.token_to_piece(ids[1], false)?, [0xF0]);
    assert_eq!(tok.decode(&ids, false)?, llama.as_bytes());
    assert_eq!(tok.token_to_piece(id(&tok, "<0x0A>")?, false)?, b"\n");
    Ok(())
}

#[test]
fn spm_leading_space_rules_of_detokenize() -> Result<()> {
    let tok = common::vocab("llama-spm")?;
    let ids = tok.encode("Hello", true, false);
    assert_eq!(ids[0], 1);
    // llama.cpp strips the prefix space only when no BOS was removed in front of it.
    assert_eq!(tok.decode(&ids, true)?, b" Hello");
    assert_eq!(tok.decode(&ids, false)?, b"<s> Hello");
    assert_eq!(tok.decode(&ids[1..], true)?, b"Hello");
    // The invisible BOS still takes the one-space strip, so the space survives here too.
    assert_eq!(tok.detokenize(&ids, false, false)?, b" Hello");
    Ok(())
}

#[test]
fn control_tokens_render_only_when_asked() -> Result<()> {
    let tok = common::smollm2()?;
    let im_end = id(&tok, "<|im_end|>")?;
    assert!(tok.is_control(im_end));
    assert_eq!(tok.token_to_piece(im_end, false)?, b"");
    assert_eq!(tok.token_to_piece(im_end, true)?, b"<|im_end|>");
    assert_eq!(tok.token_to_piece(id(&tok, "Ġworld")?, false)?, b" world");
    Ok(())
}

#[test]
fn bpe_clean_spaces_as_llama_cpp() -> Result<()> {
    let tok = common::vocab("gpt-2")?;
    assert!(tok.clean_spaces());
    let ids = tok.encode("Hi , you ' re here .", false, false);
    let raw: Vec<u8> = ids
        .iter()
        .map(|&i| tok.token_to_piece(i, false))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    assert_eq!(raw, b"Hi , you ' re here .");
    assert_eq!(tok.decode(&ids, false)?, b"Hi, you're here.");
    let smol = common::smollm2()?;
    assert!(!smol.clean_spaces());
    let ids = smol.encode("Hi , you", false, false);
    assert_eq!(smol.decode(&ids, false)?, b"Hi , you");
    Ok(())
}

#[test]
fn out_of_range_ids_are_errors() -> Result<()> {
    for tok in [common::vocab("llama-spm")?, common::smollm2()?] {
        let n = tok.vocab_size() as u32;
        let err = tok
            .token_to_piece(n, true)
            .err()
            .context("no error for id = vocab size")?;
        assert!(matches!(err, Error::TokenOutOfRange { id, .. } if id == n));
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(tok.decode(&[0, u32::MAX], false).is_err());
        assert_eq!(tok.piece(n), None);
        assert!(!tok.is_eog(u32::MAX));
    }
    Ok(())
}

#[test]
fn byte_token_coverage() -> Result<()> {
    for name in ["gpt-2", "llama-bpe", "llama-spm"] {
        let tok = common::vocab(name)?;
        assert!(
            (0..=255u8).all(|b| tok.byte_token(b).is_some()),
            "{name} lacks a byte token"
        );
    }
    // SmolLM2 was trained without some bytes; llama.cpp drops them when encoding.
    let smol = common::smollm2()?;
    let missing: Vec<u8> = (0..=255u8)
        .filter(|&b| smol.byte_token(b).is_none())
        .collect();
    assert_eq!(missing.len(), 21, "{missing:x?}");
    assert!(missing.contains(&0xF1) && missing.contains(&0x04));
    assert_eq!(
        smol.decode(&smol.encode("a\u{4}b", false, false), false)?,
        b"ab"
    );
    Ok(())
}
