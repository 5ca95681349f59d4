//! Loading a model and its tokenizer from the command line's arguments.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ferrollama_gguf::GgufFile;
use ferrollama_model::{Config, GgufWeights, Llama};
use ferrollama_tokenizer::Tokenizer;

use crate::args::ModelArgs;

/// Context used when the user gives none: the model's, capped to keep the cache small.
const DEFAULT_CTX_CAP: usize = 4096;

/// A model ready to run.
pub struct Loaded {
    pub path: PathBuf,
    pub file: GgufFile,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub n_ctx: usize,
}

/// The model file the arguments name, or the default model (fetched if needed).
pub fn model_path(args: &ModelArgs) -> Result<PathBuf> {
    match &args.model {
        Some(p) if p.is_dir() => bail!(
            "{}: Hugging Face model directories are not supported yet; convert to GGUF with llama.cpp's convert_hf_to_gguf.py",
            p.display()
        ),
        Some(p) => Ok(p.clone()),
        None => ferrollama_assets::default_model(),
    }
}

/// Opens the GGUF file only (for commands that need no weights).
pub fn open(args: &ModelArgs) -> Result<(PathBuf, GgufFile)> {
    let path = model_path(args)?;
    let file = GgufFile::open(&path).with_context(|| format!("loading {}", path.display()))?;
    Ok((path, file))
}

/// Opens the file and builds the tokenizer.
pub fn tokenizer(args: &ModelArgs) -> Result<(PathBuf, GgufFile, Tokenizer)> {
    let (path, file) = open(args)?;
    let tokenizer = Tokenizer::from_gguf(&file.header).with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    Ok((path, file, tokenizer))
}

/// Loads weights and tokenizer.
pub fn load(args: &ModelArgs) -> Result<Loaded> {
    let (path, file, tokenizer) = tokenizer(args)?;
    let config = Config::from_gguf(&file.header).with_context(|| format!("reading {}", path.display()))?;
    let n_ctx = args.ctx.unwrap_or(config.max_position_embeddings.min(DEFAULT_CTX_CAP));
    if n_ctx == 0 {
        bail!("the context size must be at least 1");
    }
    let model = Llama::load(&GgufWeights::new(&file), config, n_ctx).with_context(|| format!("loading {}", path.display()))?;
    Ok(Loaded { path, file, model, tokenizer, n_ctx })
}
