//! `ferrollama convert`: re-encode a GGUF model's weights in another type.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use ferrollama_gguf::{GgmlType, GgufFile};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model to read.
    pub input: PathBuf,
    /// The GGUF file to write.
    pub output: PathBuf,
    /// Type of the matrices: f32, f16, q8_0, q4_0, q4_1, q4_K, q6_K.
    #[arg(long = "type", default_value = "f16")]
    pub ty: String,
}

pub fn run(a: Args) -> Result<()> {
    let target = GgmlType::from_name(&a.ty).ok_or_else(|| anyhow!("unknown type `{}`", a.ty))?;
    let src = GgufFile::open(&a.input).with_context(|| format!("loading {}", a.input.display()))?;
    let lossy = src.header.tensors.iter().any(|t| {
        !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) && t.ggml_type != target
    });
    if lossy && !matches!(target, GgmlType::F32 | GgmlType::F16) {
        eprintln!("warning: {} is already quantized; re-quantizing it to {target} loses more quality than quantizing the original weights", a.input.display());
    }
    ferrollama_model::convert::requantize(&src, &a.output, target, |done, total| eprint!("\r[{done}/{total}] tensors"))
        .with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!("\nwrote {}", a.output.display());
    Ok(())
}
