//! Property: decoding the encoding of any valid UTF-8 string gives the string back, in the
//! precise sense llama.cpp allows (`add_special = false`, `parse_special = false` unless
//! stated):
//! - byte-level BPE: the pieces (`token_to_piece(id, false)`) concatenate to exactly the bytes
//!   of `s` that have a byte token (all of them for gpt-2 and llama-bpe; SmolLM2 lacks 21,
//!   e.g. 0x04 and the 0xF1 that starts U+40000..U+7FFFF, and llama.cpp drops those bytes),
//!   and `decode(ids, false)` is that after llama.cpp's `clean_spaces` when the vocabulary
//!   uses it (gpt-2, llama-bpe) and exactly that when it does not (SmolLM2);
//! - SPM (llama-spm): `decode(ids, false)` is `s` with every literal `▁` turned into a space
//!   (the escape is not reversible), the added prefix space being removed by detokenize; with
//!   BOS (`add_special = true`), `decode(ids, true)` keeps that space: `" " + s` (or "" for "").
//! - SmolLM2 with chat markup in the text and `parse_special = true`: `decode(ids, false)` is `s`.

mod common;

use std::sync::OnceLock;

use ferrollama_tokenizer::{clean_spaces, Tokenizer};
use proptest::prelude::*;

fn cached(
    cell: &'static OnceLock<Tokenizer>,
    load: impl FnOnce() -> anyhow::Result<Tokenizer>,
) -> &'static Tokenizer {
    cell.get_or_init(|| match load() {
        Ok(t) => t,
        Err(e) => panic!("loading a test vocabulary: {e:#}"),
    })
}

fn spm() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    cached(&T, || common::vocab("llama-spm"))
}

fn gpt2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    cached(&T, || common::vocab("gpt-2"))
}

fn llama3() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    cached(&T, || common::vocab("llama-bpe"))
}

fn smollm2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    cached(&T, common::smollm2)
}

/// Any characters, or text rich in the spaces, digits, apostrophes and punctuation that the
/// pre-tokenizers and clean-up treat specially.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..48).prop_map(String::from_iter),
        "[ a-zA-Z0-9'.,!?\n\r\t\u{a0}\u{3000}äß▁😀-]{0,48}",
    ]
}

fn pieces(tok: &Tokenizer, ids: &[u32]) -> Result<Vec<u8>, TestCaseError> {
    let mut out = Vec::new();
    for &id in ids {
        out.extend(
            tok.token_to_piece(id, false)
                .map_err(|e| TestCaseError::fail(e.to_string()))?,
        );
    }
    Ok(out)
}

fn decode(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<Vec<u8>, TestCaseError> {
    tok.decode(ids, skip_special)
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

/// The bytes of `s` that the vocabulary can represent.
fn representable(tok: &Tokenizer, s: &str) -> Vec<u8> {
    s.bytes().filter(|&b| tok.byte_token(b).is_some()).collect()
}

fn check_bpe(tok: &Tokenizer, s: &str) -> Result<(), TestCaseError> {
    let ids = tok.encode(s, false, false);
    let mut want = representable(tok, s);
    prop_assert_eq!(pieces(tok, &ids)?, want.clone());
    if tok.clean_spaces() {
        clean_spaces(&mut want);
    }
    prop_assert_eq!(decode(tok, &ids, false)?, want.clone());
    if tok.add_bos() {
        prop_assert_eq!(decode(tok, &tok.encode(s, true, false), true)?, want);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_2024),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn spm_round_trip(s in text()) {
        let tok = spm();
        let unescaped = s.replace('▁', " ");
        prop_assert_eq!(decode(tok, &tok.encode(&s, false, false), false)?, unescaped.as_bytes());
        let with_bos = tok.encode(&s, true, false);
        prop_assert_eq!(with_bos[0], 1);
        let want = if s.is_empty() { String::new() } else { format!(" {unescaped}") };
        prop_assert_eq!(decode(tok, &with_bos, true)?, want.as_bytes());
    }

    #[test]
    fn gpt2_round_trip(s in text()) {
        check_bpe(gpt2(), &s)?;
    }

    #[test]
    fn llama3_round_trip(s in text()) {
        check_bpe(llama3(), &s)?;
    }

    #[test]
    fn smollm2_round_trip(s in text()) {
        check_bpe(smollm2(), &s)?;
    }

    #[test]
    fn smollm2_round_trip_with_chat_markup(parts in proptest::collection::vec(
        prop_oneof![Just("<|im_start|>".to_string()), Just("<|im_end|>".to_string()), Just("\n".to_string()), text()], 0..8)) {
        let s = parts.concat();
        let tok = smollm2();
        prop_assert_eq!(decode(tok, &tok.encode(&s, false, true), false)?, representable(tok, &s));
    }
}
