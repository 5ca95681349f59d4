//! Shared helpers for the integration tests: loading vocabularies through
//! `ferrollama_assets` and reading llama.cpp's test vectors from `tests/data`.

#![allow(dead_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrollama_tokenizer::Tokenizer;

/// The tokenizer of one of llama.cpp's vocab files, e.g. `"llama-spm"`.
pub fn vocab(name: &str) -> Result<Tokenizer> {
    let path = ferrollama_assets::vocab_file(&format!("ggml-vocab-{name}.gguf"))?;
    load(path)
}

/// The tokenizer of the default model (SmolLM2-135M-Instruct).
pub fn smollm2() -> Result<Tokenizer> {
    load(ferrollama_assets::default_model()?)
}

fn load(path: PathBuf) -> Result<Tokenizer> {
    Tokenizer::from_gguf_path(&path)
        .with_context(|| format!("loading the tokenizer of {}", path.display()))
}

pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// One test of llama.cpp's `.inp`/`.out` vectors.
pub struct Case {
    pub text: String,
    pub ids: Vec<u32>,
}

/// The cases of `ggml-vocab-{name}.gguf.{inp,out}`, split as llama.cpp's
/// `test-tokenizer-0.cpp` does (separator `"\n__ggml_vocab_test__\n"`, ids one line per case).
pub fn cases(name: &str) -> Result<Vec<Case>> {
    let inp = std::fs::read_to_string(data(&format!("ggml-vocab-{name}.gguf.inp")))?;
    let out = std::fs::read_to_string(data(&format!("ggml-vocab-{name}.gguf.out")))?;
    let sep = "\n__ggml_vocab_test__\n";
    let mut texts = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(sep) {
            Some(i) => {
                texts.push(inp[pos..pos + i].to_string());
                pos += i + sep.len();
            }
            None => {
                texts.push(inp[pos..].to_string());
                break;
            }
        }
    }
    let lines: Vec<&str> = out.lines().collect();
    anyhow::ensure!(
        texts.len() == lines.len(),
        "{name}: {} inputs but {} outputs",
        texts.len(),
        lines.len()
    );
    texts
        .into_iter()
        .zip(lines)
        .map(|(text, line)| {
            let ids = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()?;
            Ok(Case { text, ids })
        })
        .collect()
}

/// Token pieces for failure messages.
pub fn show(tok: &Tokenizer, ids: &[u32]) -> String {
    ids.iter()
        .map(|&id| format!("{id} {:?}", tok.piece(id).unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(", ")
}
