//! Tokenizers from strangers' files, and any text through the real vocabularies.

use std::sync::OnceLock;

use ferrollama_tokenizer::{clean_spaces, Tokenizer};

use crate::parts;

/// Text a loaded tokenizer is tried on besides the input's own.
const SAMPLE: &str = "Hello, world! 123 <s> ▁x\n\t  é😀";

/// `tokenizer.json`, `tokenizer_config.json` and a text: loaded as a Hugging Face
/// directory is, then the text encoded (with and without special parsing) and decoded.
pub fn tokenizer_json(data: &[u8]) {
    let p = parts::split(data, 3);
    let (Ok(json), config) = (std::str::from_utf8(p[0]), std::str::from_utf8(p[1]).ok()) else {
        return;
    };
    let config = config.filter(|c| !c.is_empty());
    if let Ok(tok) = Tokenizer::from_hf_json(json, config) {
        exercise(&tok, &String::from_utf8_lossy(p[2]));
    }
}

/// A SentencePiece `tokenizer.model` and a text.
pub fn tokenizer_model(data: &[u8]) {
    let p = parts::split(data, 2);
    if let Ok(tok) = Tokenizer::from_sentencepiece_bytes(p[0]) {
        exercise(&tok, &String::from_utf8_lossy(p[1]));
    }
}

/// Whatever a tokenizer holds, encoding gives ids inside it and decoding them answers.
fn exercise(tok: &Tokenizer, text: &str) {
    for t in [SAMPLE, text] {
        for (special, parse) in [(false, false), (true, true)] {
            let ids = tok.encode(t, special, parse);
            for &id in &ids {
                assert!(
                    (id as usize) < tok.vocab_size(),
                    "id {id} outside the vocabulary"
                );
            }
            let _ = tok.decode(&ids, false);
            let _ = tok.decode(&ids, true);
        }
    }
}

/// Any text through llama.cpp's SPM (llama), BPE (gpt-2, llama-bpe) vocabularies and the
/// default model's: decoding the encoding gives the text back, in the sense llama.cpp
/// allows (`crates/tokenizer/tests/roundtrip_prop.rs` states it; this is the same property
/// driven by coverage instead of a random strategy).
pub fn round_trips(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let spm = vocab("llama-spm");
    let unescaped = s.replace('▁', " ");
    let got = spm.decode(&spm.encode(&s, false, false), false).unwrap();
    assert_eq!(got, unescaped.as_bytes(), "llama-spm");
    for name in ["gpt-2", "llama-bpe"] {
        check_bpe(vocab(name), &s, name);
    }
    let smol = smollm2();
    check_bpe(smol, &s, "smollm2");
    // Chat markup parsed as special tokens still decodes to the text.
    let ids = smol.encode(&s, false, true);
    assert_eq!(
        smol.decode(&ids, false).unwrap(),
        representable(smol, &s),
        "smollm2 with special tokens parsed"
    );
}

fn check_bpe(tok: &Tokenizer, s: &str, name: &str) {
    let ids = tok.encode(s, false, false);
    let mut want = representable(tok, s);
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.extend(tok.token_to_piece(id, false).unwrap());
    }
    assert_eq!(pieces, want, "{name}: pieces");
    if tok.clean_spaces() {
        clean_spaces(&mut want);
    }
    assert_eq!(tok.decode(&ids, false).unwrap(), want, "{name}: decode");
}

/// The bytes of `s` that the vocabulary can represent (SmolLM2 lacks some byte tokens,
/// and llama.cpp drops those bytes).
fn representable(tok: &Tokenizer, s: &str) -> Vec<u8> {
    s.bytes().filter(|&b| tok.byte_token(b).is_some()).collect()
}

/// One of llama.cpp's vocab files, loaded once per process.
fn vocab(name: &'static str) -> &'static Tokenizer {
    static CELLS: [(&str, OnceLock<Tokenizer>); 3] = [
        ("llama-spm", OnceLock::new()),
        ("gpt-2", OnceLock::new()),
        ("llama-bpe", OnceLock::new()),
    ];
    let (_, cell) = CELLS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a vocabulary the harness knows");
    cell.get_or_init(|| {
        let path = ferrollama_assets::vocab_file(&format!("ggml-vocab-{name}.gguf"))
            .expect("llama.cpp's vocab files (scripts/fetch-vocab.sh)");
        Tokenizer::from_gguf_path(&path).expect("loading a llama.cpp vocab file")
    })
}

/// The default model's tokenizer.
pub(crate) fn smollm2() -> &'static Tokenizer {
    static CELL: OnceLock<Tokenizer> = OnceLock::new();
    CELL.get_or_init(|| {
        let path = ferrollama_assets::default_model().expect("the default model");
        Tokenizer::from_gguf_path(&path).expect("loading the default model's tokenizer")
    })
}
