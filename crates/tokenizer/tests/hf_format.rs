//! Hand-written `tokenizer.json` files in the shapes Hugging Face writes (Llama 3, SmolLM,
//! Llama 2 with a normalizer or with Metaspace, merges as strings or pairs): what each maps
//! to, and the errors for what cannot be mapped.

use anyhow::{Context, Result};
use ferrollama_tokenizer::{ModelKind, Splitter, Tokenizer};
use serde_json::{json, Value};

/// The byte-level alphabet characters of `h`, `e`, `l`, `o`, space, plus merges.
fn byte_level_model(merges: Value) -> Value {
    json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
        "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "he": 5, "ll": 6, "hell": 7, "hello": 8, "Ġh": 9},
        "merges": merges,
    })
}

fn llama3_json(merges: Value) -> String {
    json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 10, "content": "<|begin_of_text|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 11, "content": "<|eot_id|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [], "special_tokens": {}}
        ]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": byte_level_model(merges),
    })
    .to_string()
}

#[test]
fn llama3_shape_with_pair_merges() -> Result<()> {
    let tok = Tokenizer::from_hf_json(
        &llama3_json(json!([
            ["h", "e"],
            ["l", "l"],
            ["he", "ll"],
            ["hell", "o"],
            ["Ġ", "h"]
        ])),
        None,
    )?;
    assert_eq!(tok.model(), ModelKind::Bpe);
    assert_eq!(tok.splitter(), Some(Splitter::Llama3));
    assert!(tok.add_bos(), "BOS comes from the TemplateProcessing");
    assert_eq!(tok.bos(), Some(10));
    assert_eq!(tok.eot(), Some(11));
    assert!(tok.is_eog(11) && tok.is_control(11));
    // "hello" is a token, so ignore_merges emits it whole; in " he", h+e (rank 0) beats
    // Ġ+h (rank 4), and there is no merge of Ġ with he.
    assert_eq!(tok.encode("hello he", true, false), [10, 8, 4, 5]);
    assert_eq!(tok.encode("hhe", false, false), [0, 5]);
    assert_eq!(tok.decode(&[10, 8, 4, 5], true)?, b"hello he");
    Ok(())
}

#[test]
fn config_overrides_template_and_names_specials() -> Result<()> {
    let config = json!({"add_bos_token": false, "bos_token": {"content": "<|begin_of_text|>"}, "eos_token": "<|eot_id|>"}).to_string();
    let tok = Tokenizer::from_hf_json(
        &llama3_json(json!(["h e", "l l", "he ll", "hell o"])),
        Some(&config),
    )?;
    assert!(!tok.add_bos());
    assert_eq!((tok.bos(), tok.eos()), (Some(10), Some(11)));
    Ok(())
}

#[test]
fn smollm_shape_is_digits_then_byte_level() -> Result<()> {
    let mut tj: Value = serde_json::from_str(&llama3_json(json!([])))?;
    tj["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
    ]});
    let config = json!({"clean_up_tokenization_spaces": false}).to_string();
    let tok = Tokenizer::from_hf_json(&tj.to_string(), Some(&config))?;
    assert_eq!(tok.splitter(), Some(Splitter::DigitsGpt2));
    assert_eq!(tok.vocab().pre.as_deref(), Some("smollm"));
    assert!(!tok.clean_spaces());
    Ok(())
}

/// A Llama-2-style tokenizer.json: `▁` words, byte fallback, merges by rank.
fn llama2_json(spaces: Value, pre_tokenizer: Value) -> String {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    for b in 0..=255u32 {
        vocab.insert(format!("<0x{b:02X}>"), json!(3 + b));
    }
    for (i, t) in ["▁", "a", "b", "▁a", "ab", "▁ab"].iter().enumerate() {
        vocab.insert(t.to_string(), json!(259 + i));
    }
    json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true},
            {"id": 2, "content": "</s>", "special": true}, {"id": 265, "content": "<extra>", "special": false}
        ],
        "normalizer": spaces,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [], "special_tokens": {}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true,
                  "vocab": vocab, "merges": ["▁ a", "a b", "▁a b", "▁ ab"]},
    })
    .to_string()
}

#[test]
fn llama2_shape_becomes_spm() -> Result<()> {
    let normalizer = json!({"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
    let tok = Tokenizer::from_hf_json(&llama2_json(normalizer, Value::Null), None)?;
    assert_eq!(tok.model(), ModelKind::Spm);
    assert!(tok.add_space_prefix() && tok.add_bos());
    assert_eq!((tok.bos(), tok.unk()), (Some(1), Some(0)));
    let id = |t: &str| tok.token_id(t).context(t.to_string());
    // "▁ a" (rank 0) before "a b" (rank 1), then "▁a b".
    assert_eq!(tok.encode("ab", true, false), [1, id("▁ab")?]);
    assert_eq!(tok.encode("c", false, false), [id("▁")?, id("<0x63>")?]);
    assert!(tok.is_user_defined(id("<extra>")?));
    assert_eq!(
        tok.encode("a<extra>", false, false),
        [id("▁a")?, id("<extra>")?]
    );
    assert_eq!(
        tok.decode(&tok.encode("ab c", false, false), false)?,
        b"ab c"
    );
    Ok(())
}

#[test]
fn metaspace_shape_becomes_spm() -> Result<()> {
    let meta =
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false});
    let tok = Tokenizer::from_hf_json(&llama2_json(Value::Null, meta), None)?;
    assert_eq!(tok.model(), ModelKind::Spm);
    assert!(tok.add_space_prefix());
    let never =
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": false});
    assert!(!Tokenizer::from_hf_json(&llama2_json(Value::Null, never), None)?.add_space_prefix());
    Ok(())
}

#[test]
fn unmappable_files_are_errors() -> Result<()> {
    let msg = |r: ferrollama_tokenizer::Result<Tokenizer>| {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    };
    let mut tj: Value = serde_json::from_str(&llama3_json(json!([])))?;
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = json!("\\w+");
    let m = msg(Tokenizer::from_hf_json(&tj.to_string(), None));
    assert!(
        m.contains("tokenizer.json") && m.contains("pre_tokenizer") && m.contains("\\\\w+"),
        "{m}"
    );
    tj["model"]["type"] = json!("Unigram");
    let m = msg(Tokenizer::from_hf_json(&tj.to_string(), None));
    assert!(m.contains("\"Unigram\""), "{m}");
    let m = msg(Tokenizer::from_hf_json("{not json", None));
    assert!(m.contains("tokenizer.json: invalid JSON"), "{m}");
    Ok(())
}
