//! Writes the tokenizer of a GGUF file (SentencePiece `llama` vocabularies only) as a
//! SentencePiece `tokenizer.model`, e.g. to check it with the `sentencepiece` library
//! (`scripts/make_spm_fixture.py --check-export`).
//!
//! usage: cargo run --release -p ferrollama-tokenizer --example gguf_to_spm -- IN.gguf OUT.model

use anyhow::{bail, Context, Result};
use ferrollama_tokenizer::Tokenizer;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: gguf_to_spm IN.gguf OUT.model")
    };
    let tok = Tokenizer::from_gguf_path(input).with_context(|| format!("loading {input}"))?;
    let bytes = tok
        .to_sentencepiece_model()
        .with_context(|| format!("converting {input}"))?;
    std::fs::write(output, &bytes).with_context(|| format!("writing {output}"))?;
    eprintln!(
        "wrote {output}: {} pieces, {} bytes",
        tok.vocab_size(),
        bytes.len()
    );
    Ok(())
}
