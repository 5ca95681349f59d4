//! SentencePiece `tokenizer.model` files: a real BPE model trained by Google's sentencepiece
//! must encode as sentencepiece does; GGUF → tokenizer.model → tokenizer must encode as the
//! GGUF; damaged files must give errors, never panics.
//!
//! The fixture and its expected ids come from `scripts/make_spm_fixture.py` (sentencepiece
//! 0.2.3, `SentencePieceProcessor.encode(text)`, no BOS). That script also loads the
//! llama-spm export in sentencepiece (`--check-export`: all 46 llama.cpp strings agree).
//!
//! No case is excluded: the fixture is trained with identity normalization and
//! `remove_extra_whitespaces=false`, which llama.cpp (ignoring both) effectively assumes.
//! With sentencepiece's defaults instead, 19 of the 46 strings would differ: whitespace runs
//! collapsed and trimmed (9 strings), and NFKC folding `\t`, `\n`, `\r`, U+00A0, `Ⅻ`, `ﬁ` (10).

mod common;

use anyhow::{Context, Result};
use ferrollama_tokenizer::{Error, TokenType, Tokenizer, Vocab};
use serde_json::Value;

const FIXTURE: &str = "spm-bpe-1k.model";

fn fixture_bytes() -> Result<Vec<u8>> {
    Ok(std::fs::read(common::data(FIXTURE))?)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn field(number: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(number) << 3 | 2, &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// A `ModelProto.pieces` entry with a piece text and a type (varint field 3).
fn piece(text: &str, ty: u64) -> Vec<u8> {
    let mut body = field(1, text.as_bytes());
    body.push(0x18);
    varint(ty, &mut body);
    field(1, &body)
}

fn spm_error(r: Result<Tokenizer, Error>) -> String {
    match r {
        Err(e @ Error::SpmModel { .. }) => e.to_string(),
        Err(e) => panic!("expected an SpmModel error, got {e}"),
        Ok(_) => panic!("expected an error, the model loaded"),
    }
}

#[test]
fn sentencepiece_fixture_encodes_as_sentencepiece() -> Result<()> {
    let tok = Tokenizer::from_sentencepiece_model(common::data(FIXTURE))?;
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(common::data(
        "spm-bpe-1k.expected.json",
    ))?)?;
    let cases = doc["cases"].as_array().context("cases")?;
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().context("text")?;
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone())?;
        let got = tok.encode(text, false, false);
        if got != want {
            failures.push(format!(
                "{text:?}\n  sentencepiece: {}\n  ferrollama:    {}",
                common::show(&tok, &want),
                common::show(&tok, &got)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 40, "{} cases", cases.len());
    Ok(())
}

#[test]
fn sentencepiece_fixture_settings() -> Result<()> {
    let tok = Tokenizer::from_sentencepiece_model(common::data(FIXTURE))?;
    assert_eq!(tok.vocab_size(), 1000);
    assert_eq!(
        (tok.unk(), tok.bos(), tok.eos(), tok.pad()),
        (Some(0), Some(1), Some(2), None)
    );
    assert!(tok.add_space_prefix() && tok.add_bos() && !tok.add_eos());
    assert_eq!(tok.piece(3 + 0x41), Some("<0x41>"));
    assert!(tok.is_byte(3 + 0x41) && tok.is_control(1) && tok.is_control(2));
    assert_eq!(
        tok.vocab().token_types.as_ref().map(|t| t[0]),
        Some(TokenType::Unknown)
    );
    // BPE merges are scored -rank; the first one is stored as -0.0.
    assert_eq!(
        tok.vocab()
            .scores
            .as_ref()
            .map(|s| (s[259].to_bits(), s[260])),
        Some(((-0.0f32).to_bits(), -1.0))
    );
    assert_eq!(tok.encode("Hello", true, false)[0], 1);
    Ok(())
}

#[test]
fn piece_types_map_as_llama_cpp_converter() -> Result<()> {
    let mut bytes = fixture_bytes()?;
    // Repeated fields append, so these become pieces 1000.. whatever order the file has.
    for (i, ty) in (1..=6).enumerate() {
        bytes.extend(piece(&format!("zz{i}"), ty));
    }
    bytes.extend(piece("zz9", 77)); // an undefined enum value stays NORMAL
    let v = Vocab::from_sentencepiece_bytes(&bytes)?;
    let types = v.token_types.context("types")?;
    // USER_DEFINED (4) becomes NORMAL: `_create_vocab_sentencepiece` has no branch for it.
    use TokenType::*;
    assert_eq!(
        types[1000..],
        [Normal, Unknown, Control, Normal, Unused, Byte, Normal]
    );
    Ok(())
}

#[test]
fn trainer_and_normalizer_settings_are_read() -> Result<()> {
    let mut bytes = fixture_bytes()?;
    // A second trainer_spec merges into the first: unk 5, bos -1 (none: llama.cpp's default 1
    // stays), eos 7, pad 9. A second normalizer_spec turns the dummy prefix off.
    let mut trainer = Vec::new();
    for (number, id) in [(40u64, 5i64), (41, -1), (42, 7), (43, 9)] {
        varint(number << 3, &mut trainer);
        varint(id as u64, &mut trainer);
    }
    bytes.extend(field(2, &trainer));
    bytes.extend(field(3, &[0x18, 0x00]));
    let v = Vocab::from_sentencepiece_bytes(&bytes)?;
    assert_eq!(
        (v.special.unk, v.special.bos, v.special.eos, v.special.pad),
        (Some(5), None, Some(7), Some(9))
    );
    assert_eq!(v.add_space_prefix, Some(false));
    let tok = Tokenizer::from_vocab(v)?;
    assert_eq!(
        (tok.unk(), tok.bos(), tok.eos(), tok.pad()),
        (Some(5), Some(1), Some(7), Some(9))
    );
    assert!(!tok.add_space_prefix());
    Ok(())
}

#[test]
fn unigram_and_other_model_types_are_refused() -> Result<()> {
    for (ty, want) in [
        (1u8, "is UNIGRAM (1); only BPE (2) models are supported"),
        (3, "is 3 (WORD = 3, CHAR = 4"),
    ] {
        let mut bytes = fixture_bytes()?;
        bytes.extend(field(2, &[0x18, ty]));
        let e = spm_error(Tokenizer::from_sentencepiece_bytes(&bytes));
        assert!(
            e.starts_with("tokenizer.model: trainer_spec.model_type: ") && e.contains(want),
            "{e}"
        );
    }
    // No trainer_spec at all means the proto's default, UNIGRAM.
    let e = spm_error(Tokenizer::from_sentencepiece_bytes(&piece("a", 1)));
    assert!(e.contains("UNIGRAM"), "{e}");
    Ok(())
}

#[test]
fn empty_and_repeated_pieces_are_refused() -> Result<()> {
    let mut bytes = fixture_bytes()?;
    bytes.extend(piece("▁t", 1));
    let e = spm_error(Tokenizer::from_sentencepiece_bytes(&bytes));
    assert!(
        e.contains("pieces[1000].piece: \"▁t\" repeats pieces[259]"),
        "{e}"
    );
    let mut bytes = fixture_bytes()?;
    bytes.extend(piece("", 1));
    assert!(spm_error(Tokenizer::from_sentencepiece_bytes(&bytes))
        .contains("pieces[1000].piece: is empty"));
    Ok(())
}

#[test]
fn every_truncation_is_an_error_or_a_whole_message() -> Result<()> {
    let bytes = fixture_bytes()?;
    let mut parsed = Vec::new();
    for len in 0..bytes.len() {
        match Tokenizer::from_sentencepiece_bytes(&bytes[..len]) {
            Err(Error::SpmModel { .. }) => {}
            Err(e) => panic!("prefix of {len} bytes: unexpected error kind: {e}"),
            Ok(_) => parsed.push(len),
        }
    }
    // The one proper prefix that is still a whole ModelProto stops right before the last
    // field, normalizer_spec (tag 0x1a, one length byte), whose defaults equal its values.
    let len = bytes.len();
    assert_eq!(parsed.len(), 1, "prefixes that parse: {parsed:?}");
    let at = parsed[0];
    assert!(
        bytes[at] == 0x1a && at + 2 + usize::from(bytes[at + 1]) == len,
        "prefix {at} of {len}"
    );
    Ok(())
}

#[test]
fn absurd_lengths_are_errors_naming_the_field() {
    // pieces: length 2^35 at the top level.
    let e = spm_error(Tokenizer::from_sentencepiece_bytes(&[
        0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0x0a,
    ]));
    assert!(
        e.contains("tokenizer.model: pieces: length 34359738368 exceeds the 1 bytes left"),
        "{e}"
    );
    // pieces[0].piece: length 127 inside a 3-byte piece.
    let e = spm_error(Tokenizer::from_sentencepiece_bytes(&[
        0x0a, 0x03, 0x0a, 0x7f, 0x41,
    ]));
    assert!(
        e.contains("pieces[0].piece: length 127 exceeds the 1 bytes left"),
        "{e}"
    );
}

#[test]
fn wrong_wire_types_are_errors_naming_the_field() {
    let cases: [(&[u8], &str); 4] = [
        (
            &[0x12, 0x05, 0x1d, 2, 0, 0, 0],
            "trainer_spec.model_type: has wire type 5 (fixed32), expected wire type 0 (varint)",
        ),
        (
            &[0x0a, 0x05, 0x0a, 0x01, 0x61, 0x10, 0x01],
            "pieces[0].score: has wire type 0 (varint), expected wire type 5 (fixed32)",
        ),
        (
            &[0x0a, 0x02, 0x08, 0x01],
            "pieces[0].piece: has wire type 0 (varint), expected wire type 2",
        ),
        (
            &[0x08, 0x01],
            "pieces: has wire type 0 (varint), expected wire type 2",
        ),
    ];
    for (bytes, want) in cases {
        let e = spm_error(Tokenizer::from_sentencepiece_bytes(bytes));
        assert!(e.contains(want), "{bytes:?}: {e}");
    }
}

#[test]
fn random_corruption_never_panics() -> Result<()> {
    let bytes = fixture_bytes()?;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..1000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        match Tokenizer::from_sentencepiece_bytes(&b) {
            Ok(tok) => {
                tok.encode("Hello world 123 日本", true, false);
                ok += 1;
            }
            Err(_) => err += 1,
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
    Ok(())
}

#[test]
fn llama_spm_export_round_trips() -> Result<()> {
    let tok = common::vocab("llama-spm")?;
    let back = Tokenizer::from_sentencepiece_bytes(&tok.to_sentencepiece_model()?)?;
    assert_eq!(back.vocab().tokens, tok.vocab().tokens);
    assert_eq!(back.vocab().scores, tok.vocab().scores);
    assert_eq!(back.vocab().token_types, tok.vocab().token_types);
    assert_eq!(back.special_ids(), tok.special_ids());
    assert_eq!(
        (back.add_bos(), back.add_eos(), back.add_space_prefix()),
        (tok.add_bos(), tok.add_eos(), tok.add_space_prefix())
    );
    let cases = common::cases("llama-spm")?;
    for case in &cases {
        assert_eq!(
            back.encode(&case.text, false, false),
            case.ids,
            "{:?}",
            case.text
        );
        assert_eq!(
            back.encode(&case.text, true, true),
            tok.encode(&case.text, true, true),
            "{:?} with specials",
            case.text
        );
    }
    assert!(cases.len() > 30);
    Ok(())
}

#[test]
fn fixture_export_reads_back_to_the_same_vocab() -> Result<()> {
    let tok = Tokenizer::from_sentencepiece_model(common::data(FIXTURE))?;
    let bytes = tok.to_sentencepiece_model()?;
    assert_eq!(&Vocab::from_sentencepiece_bytes(&bytes)?, tok.vocab());
    // Exporting is deterministic, and the re-export of the re-import is the same file.
    assert_eq!(
        Tokenizer::from_sentencepiece_bytes(&bytes)?.to_sentencepiece_model()?,
        bytes
    );
    Ok(())
}

#[test]
fn export_refuses_what_sentencepiece_cannot_load() -> Result<()> {
    let e = common::vocab("gpt-2")?
        .to_sentencepiece_model()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("only SentencePiece (`llama`) vocabularies"),
        "{e}"
    );
    let base = Vocab::from_sentencepiece_bytes(&fixture_bytes()?)?;
    let mut v = base.clone();
    v.tokens[500] = v.tokens[400].clone();
    let e = Tokenizer::from_vocab(v)?
        .to_sentencepiece_model()
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokens 400 and 500 are both"), "{e}");
    let mut v = base.clone();
    if let Some(t) = v.token_types.as_mut() {
        t[3 + 0x41] = TokenType::Normal;
    }
    let e = Tokenizer::from_vocab(v)?
        .to_sentencepiece_model()
        .unwrap_err()
        .to_string();
    assert!(e.contains("cover only 255 of the 256 bytes"), "{e}");
    let mut v = base;
    if let Some(t) = v.token_types.as_mut() {
        t[500] = TokenType::Byte;
    }
    let e = Tokenizer::from_vocab(v)?
        .to_sentencepiece_model()
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not of the form <0xNN>"), "{e}");
    Ok(())
}

#[test]
fn export_keeps_one_unknown_piece() -> Result<()> {
    // As in older llama.cpp conversions (Phi-3's vocab): <unk> typed control, padding typed
    // unknown. The unk token becomes the UNKNOWN piece, the others CONTROL.
    let mut v = Vocab::from_sentencepiece_bytes(&fixture_bytes()?)?;
    if let Some(t) = v.token_types.as_mut() {
        t[0] = TokenType::Control;
        t[998] = TokenType::Unknown;
        t[999] = TokenType::Unknown;
    }
    let back =
        Vocab::from_sentencepiece_bytes(&Tokenizer::from_vocab(v)?.to_sentencepiece_model()?)?;
    let types = back.token_types.context("types")?;
    assert_eq!(
        (types[0], types[998], types[999], back.special.unk),
        (
            TokenType::Unknown,
            TokenType::Control,
            TokenType::Control,
            Some(0)
        )
    );
    Ok(())
}

#[test]
fn hf_dir_without_tokenizer_json_loads_tokenizer_model() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("ferrollama-spm-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(common::data(FIXTURE), dir.join("tokenizer.model"))?;
    std::fs::write(
        dir.join("config.json"),
        r#"{"vocab_size": 1003, "eos_token_id": 1000}"#,
    )?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"add_bos_token": false, "add_eos_token": true, "added_tokens_decoder": {
            "1000": {"content": "<|im_end|>", "special": true},
            "1001": {"content": "▁hi▁there", "special": false},
            "5000": {"content": "<|far|>", "special": true}}}"#,
    )?;
    let result = Tokenizer::from_hf_dir(&dir);
    std::fs::remove_dir_all(&dir)?;
    let tok = result?;
    let plain = Tokenizer::from_sentencepiece_model(common::data(FIXTURE))?;
    assert_eq!(tok.vocab_size(), 1003);
    assert_eq!(
        (tok.piece(1000), tok.piece(1001), tok.piece(1002)),
        (Some("<|im_end|>"), Some(" hi there"), Some("[PAD1002]"))
    );
    assert!(tok.is_control(1000) && tok.is_user_defined(1001) && tok.token_id("<|far|>").is_none());
    assert_eq!(
        (tok.bos(), tok.eos(), tok.add_bos(), tok.add_eos()),
        (Some(1), Some(1000), false, true)
    );
    let body = plain.encode("Hello world", false, false);
    let mut want = body.clone();
    want.push(1000);
    assert_eq!(tok.encode("Hello world", true, false), want);
    assert_eq!(tok.encode(" hi there", false, false), [1001]);
    assert_eq!(tok.encode("x hi there", false, false).last(), Some(&1001));
    Ok(())
}
