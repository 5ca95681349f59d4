//! Small hand-built vocabularies: SPM merging order and byte fallback, llama.cpp's defaults
//! for absent keys, GGUF metadata round trip, and errors that name what is wrong.

use anyhow::{Context, Result};
use ferrollama_gguf::{GgufFile, GgufWriter, Value};
use ferrollama_tokenizer::{Error, ModelKind, SpecialIds, TokenType, Tokenizer, Vocab};

/// `<unk> <s> </s> <0x00>..<0xFF>` then `extra` as normal tokens with the given scores.
fn spm_vocab(extra: &[(&str, f32)]) -> Vocab {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend([TokenType::Byte; 256]);
    let mut scores = vec![0.0; tokens.len()];
    for &(t, s) in extra {
        tokens.push(t.to_string());
        types.push(TokenType::Normal);
        scores.push(s);
    }
    Vocab {
        model: ModelKind::Spm,
        pre: None,
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        merges: Vec::new(),
        special: SpecialIds::default(),
        add_bos: None,
        add_eos: None,
        add_space_prefix: None,
        name: None,
    }
}

fn ids(tok: &Tokenizer, texts: &[&str]) -> Result<Vec<u32>> {
    texts
        .iter()
        .map(|t| tok.token_id(t).with_context(|| format!("no token {t:?}")))
        .collect()
}

#[test]
fn spm_merges_best_score_first_then_leftmost() -> Result<()> {
    let tok = Tokenizer::from_vocab(spm_vocab(&[
        ("▁", -1.0),
        ("a", -2.0),
        ("b", -3.0),
        ("▁a", -4.0),
        ("ab", -5.0),
        ("▁ab", -6.0),
        ("aa", -3.5),
    ]))?;
    // ▁a outscores ab, and ▁a + b makes ▁ab.
    assert_eq!(tok.encode("ab", false, false), ids(&tok, &["▁ab"])?);
    // aa outscores ▁a; of the two equal aa pairs the left one merges.
    assert_eq!(
        tok.encode("aaa", false, false),
        ids(&tok, &["▁", "aa", "a"])?
    );
    Ok(())
}

#[test]
fn spm_byte_fallback_and_defaults() -> Result<()> {
    let tok = Tokenizer::from_vocab(spm_vocab(&[("▁", -1.0)]))?;
    assert_eq!(tok.encode("c", false, false), ids(&tok, &["▁", "<0x63>"])?);
    assert_eq!(
        tok.encode("é", true, false),
        ids(&tok, &["<s>", "▁", "<0xC3>", "<0xA9>"])?
    );
    assert_eq!(
        (tok.bos(), tok.eos(), tok.unk()),
        (Some(1), Some(2), Some(0))
    );
    assert!(tok.add_bos() && !tok.add_eos() && tok.add_space_prefix());
    assert_eq!(
        tok.decode(&tok.encode("é c", false, false), false)?,
        "é c".as_bytes()
    );
    Ok(())
}

#[test]
fn spm_missing_byte_token_is_skipped() -> Result<()> {
    let mut v = spm_vocab(&[("▁", -1.0)]);
    // Rename <0x63> ('c') so the vocabulary has no token for that byte.
    v.tokens[3 + 0x63] = "<c-gone>".into();
    let tok = Tokenizer::from_vocab(v)?;
    assert_eq!(tok.byte_token(b'c'), None);
    assert_eq!(tok.encode("c", false, false), ids(&tok, &["▁"])?);
    Ok(())
}

#[test]
fn default_ids_out_of_range_are_dropped() -> Result<()> {
    let mut v = spm_vocab(&[]);
    v.tokens.truncate(2);
    v.scores = None;
    v.token_types = None;
    v.special.eos = Some(7);
    let tok = Tokenizer::from_vocab(v)?;
    assert_eq!((tok.bos(), tok.eos()), (Some(1), None));
    Ok(())
}

#[test]
fn errors_name_the_problem() {
    let mut v = spm_vocab(&[]);
    v.tokens.clear();
    assert!(matches!(Tokenizer::from_vocab(v), Err(Error::EmptyVocab)));

    let mut v = spm_vocab(&[]);
    v.scores = Some(vec![0.0; 3]);
    let msg = Tokenizer::from_vocab(v)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("tokenizer.ggml.scores") && msg.contains("3 entries"),
        "{msg}"
    );

    let mut v = spm_vocab(&[]);
    v.model = ModelKind::Bpe;
    v.pre = Some("qwen2".into());
    let msg = Tokenizer::from_vocab(v)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("tokenizer.ggml.pre")
            && msg.contains("\"qwen2\"")
            && msg.contains("llama-bpe"),
        "{msg}"
    );
}

fn write_gguf(name: &str, entries: Vec<(String, Value)>) -> Result<GgufFile> {
    let mut w = GgufWriter::new();
    for (k, v) in entries {
        w.set(&k, v);
    }
    let path =
        std::env::temp_dir().join(format!("ferrollama-tok-{}-{name}.gguf", std::process::id()));
    w.write(&path, |_, _| Ok(Vec::new()))?;
    let file = GgufFile::open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

#[test]
fn gguf_metadata_round_trip() -> Result<()> {
    let mut v = spm_vocab(&[("▁", -1.0), ("▁a", -2.0)]);
    v.special.bos = Some(1);
    v.add_eos = Some(true);
    let file = write_gguf("meta", v.to_gguf_metadata())?;
    let back = Vocab::from_gguf(&file.header)?;
    assert_eq!(back, v);
    let tok = Tokenizer::from_gguf(&file.header)?;
    assert_eq!(
        tok.encode("a", true, false),
        ids(&tok, &["<s>", "▁a", "</s>"])?
    );
    Ok(())
}

#[test]
fn gguf_errors_name_the_key() -> Result<()> {
    let file = write_gguf(
        "nomodel",
        vec![(
            "tokenizer.ggml.tokens".into(),
            Value::Array(ferrollama_gguf::ValueType::String, vec![]),
        )],
    )?;
    let msg = Tokenizer::from_gguf(&file.header)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("tokenizer.ggml.model"), "{msg}");

    let mut entries = spm_vocab(&[]).to_gguf_metadata();
    entries.push((
        "tokenizer.ggml.bos_token_id".into(),
        Value::String("one".into()),
    ));
    let file = write_gguf("badbos", entries)?;
    let msg = Tokenizer::from_gguf(&file.header)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("tokenizer.ggml.bos_token_id"), "{msg}");

    let mut entries = spm_vocab(&[]).to_gguf_metadata();
    entries[0].1 = Value::String("t5".into());
    let file = write_gguf("t5", entries)?;
    let msg = Tokenizer::from_gguf(&file.header)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("\"t5\""), "{msg}");
    Ok(())
}
