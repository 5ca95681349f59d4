//! `ferrollama convert`: between GGUF and Hugging Face directories, and between weight
//! types. GGUF -> GGUF re-encodes the weights; GGUF -> HF dequantizes to f32 or f16 and
//! writes `model.safetensors`, `config.json`, `tokenizer.json` and `tokenizer_config.json`
//! (with the chat template); HF -> GGUF quantizes to the chosen type and carries the
//! tokenizer and chat template into the metadata.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ferrollama_gguf::safetensors::StDtype;
use ferrollama_gguf::{GgmlType, GgufFile, Value};
use ferrollama_tokenizer::{Tokenizer, TokenizerFiles};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A GGUF file or a Hugging Face model directory.
    pub input: PathBuf,
    /// A `.gguf` file, or a directory for a Hugging Face checkpoint.
    pub output: PathBuf,
    /// Weight type: f32, f16, q8_0, q4_0, q4_1, q4_K, q6_K for GGUF output; f32 or f16 for
    /// a Hugging Face directory.
    #[arg(long = "type", default_value = "f16")]
    pub ty: String,
}

pub fn run(a: Args) -> Result<()> {
    let target = GgmlType::from_name(&a.ty).ok_or_else(|| anyhow!("unknown type `{}`", a.ty))?;
    let to_gguf = a.output.extension().is_some_and(|e| e == "gguf");
    let progress = |done: usize, total: usize| eprint!("\r[{done}/{total}] tensors");
    match (a.input.is_dir(), to_gguf) {
        (false, true) => gguf_to_gguf(&a.input, &a.output, target, progress)?,
        (false, false) => gguf_to_hf(&a.input, &a.output, target, progress)?,
        (true, true) => hf_to_gguf(&a.input, &a.output, target, progress)?,
        (true, false) => bail!(
            "{} is a Hugging Face directory already; name a .gguf output",
            a.input.display()
        ),
    }
    eprintln!("\nwrote {}", a.output.display());
    Ok(())
}

fn open(path: &Path) -> Result<GgufFile> {
    GgufFile::open(path).with_context(|| format!("loading {}", path.display()))
}

fn gguf_to_gguf(
    input: &Path,
    output: &Path,
    target: GgmlType,
    progress: impl FnMut(usize, usize),
) -> Result<()> {
    let src = open(input)?;
    let requantizing = src
        .header
        .tensors
        .iter()
        .any(|t| !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16));
    if requantizing && !matches!(target, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        eprintln!(
            "warning: {} is already quantized; re-quantizing to {target} loses more quality than quantizing the original weights",
            input.display()
        );
    }
    ferrollama_model::convert::requantize(&src, output, target, progress)
        .with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

fn gguf_to_hf(
    input: &Path,
    dir: &Path,
    target: GgmlType,
    progress: impl FnMut(usize, usize),
) -> Result<()> {
    let dtype = match target {
        GgmlType::F32 => StDtype::F32,
        GgmlType::F16 => StDtype::F16,
        GgmlType::BF16 => StDtype::BF16,
        other => bail!("a Hugging Face directory holds f32, f16 or bf16 weights, not {other}"),
    };
    let src = open(input)?;
    let tok = Tokenizer::from_gguf(&src.header)
        .with_context(|| format!("reading the tokenizer of {}", input.display()))?;
    ferrollama_model::export::gguf_to_hf(&src, dir, dtype, tok.bos(), tok.eos(), progress)
        .with_context(|| format!("writing {}", dir.display()))?;
    tok.write_hf_dir(dir, src.header.get_str("tokenizer.chat_template").ok())?;
    Ok(())
}

fn hf_to_gguf(
    dir: &Path,
    output: &Path,
    target: GgmlType,
    progress: impl FnMut(usize, usize),
) -> Result<()> {
    let files = TokenizerFiles::load(dir)
        .with_context(|| format!("reading the tokenizer of {}", dir.display()))?;
    let mut meta = files.tokenizer.vocab().to_gguf_metadata();
    if let Some(template) = files.chat_template {
        meta.push(("tokenizer.chat_template".into(), Value::String(template)));
    }
    ferrollama_model::export::hf_to_gguf(dir, output, target, meta, progress)
        .with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}
