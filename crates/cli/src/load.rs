//! Opening the model the command line names (a GGUF file, a Hugging Face directory, or
//! the default model, fetched on first use) through `ferrollama_generate::Bundle`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ferrollama_generate::{Bundle, OpenOptions};
use ferrollama_model::huge_pages::Placement;
use ferrollama_tokenizer::{Tokenizer, TokenizerFiles};

use crate::args::ModelArgs;

/// The model the arguments name, or the default model (fetched if needed).
pub fn model_path(args: &ModelArgs) -> Result<PathBuf> {
    match &args.model {
        Some(p) if !p.exists() => bail!("{}: no such file or directory", p.display()),
        Some(p) => Ok(p.clone()),
        None => Ok(ferrollama_assets::default_model()?),
    }
}

/// The tokenizer and chat template of a model, without its weights.
pub fn tokenizer(args: &ModelArgs) -> Result<(PathBuf, Tokenizer, Option<String>)> {
    let path = model_path(args)?;
    let files = TokenizerFiles::load(&path)
        .with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    Ok((path, files.tokenizer, files.chat_template))
}

/// Loads weights and tokenizer; warnings of the load go to stderr.
pub fn load(args: &ModelArgs) -> Result<Bundle> {
    let path = model_path(args)?;
    let opts = OpenOptions {
        ctx: args.ctx,
        pack_cache_dir: (!args.no_pack_cache)
            .then(|| ferrollama_assets::models_dir().join("packed")),
        placement: if args.map_weights {
            Placement::Mapped
        } else {
            Placement::HugePages
        },
    };
    let mut bundle = Bundle::open(&path, &opts)?;
    for (dir, scale) in args.adapters()? {
        bundle
            .model
            .attach_lora(&dir, scale)
            .with_context(|| format!("applying the adapter {}", dir.display()))?;
    }
    for w in &bundle.warnings {
        eprintln!("warning: {w}");
    }
    Ok(bundle)
}
