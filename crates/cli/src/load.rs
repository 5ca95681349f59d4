//! Loading a model and its tokenizer from the command line's arguments: a GGUF file, a
//! Hugging Face directory, or the default model (fetched on first use).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ferrollama_generate::chat::template_from_tokenizer_config;
use ferrollama_gguf::GgufFile;
use ferrollama_model::hf::{config_from_hf, HfWeights};
use ferrollama_model::pack_cache::{CacheState, PackCache};
use ferrollama_model::{Config, GgufWeights, Llama};
use ferrollama_tokenizer::Tokenizer;

use crate::args::ModelArgs;

/// Context used when the user gives none: the model's, capped to keep the cache small.
const DEFAULT_CTX_CAP: usize = 4096;

/// A model ready to run.
pub struct Loaded {
    pub path: PathBuf,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub n_ctx: usize,
}

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
    let (tok, template) = if path.is_dir() {
        hf_tokenizer(&path)?
    } else {
        let file = GgufFile::open(&path).with_context(|| format!("loading {}", path.display()))?;
        gguf_tokenizer(&path, &file)?
    };
    Ok((path, tok, template))
}

fn gguf_tokenizer(path: &Path, file: &GgufFile) -> Result<(Tokenizer, Option<String>)> {
    let tok = Tokenizer::from_gguf(&file.header)
        .with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    Ok((
        tok,
        file.header
            .get_str("tokenizer.chat_template")
            .ok()
            .map(String::from),
    ))
}

fn hf_tokenizer(dir: &Path) -> Result<(Tokenizer, Option<String>)> {
    let tok = Tokenizer::from_hf_dir(dir)
        .with_context(|| format!("reading the tokenizer of {}", dir.display()))?;
    let template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|j| template_from_tokenizer_config(&j));
    Ok((tok, template))
}

/// Loads weights and tokenizer.
pub fn load(args: &ModelArgs) -> Result<Loaded> {
    let path = model_path(args)?;
    let n_ctx = |config: &Config| {
        args.ctx
            .unwrap_or(config.max_position_embeddings.min(DEFAULT_CTX_CAP))
    };
    let (model, tokenizer, chat_template, n_ctx) = if path.is_dir() {
        let config = config_from_hf(&path)?;
        let n = n_ctx(&config);
        let weights = HfWeights::open(&path, config.clone())?;
        let model = Llama::load(&weights, config, n)
            .with_context(|| format!("loading {}", path.display()))?;
        let (tok, template) = hf_tokenizer(&path)?;
        (model, tok, template, n)
    } else {
        let file = GgufFile::open(&path).with_context(|| format!("loading {}", path.display()))?;
        let config =
            Config::from_gguf(&file).with_context(|| format!("reading {}", path.display()))?;
        let n = n_ctx(&config);
        let model = if args.no_pack_cache {
            Llama::load(&GgufWeights::new(&file), config, n)
        } else {
            let cache = PackCache::open(
                &ferrollama_assets::models_dir().join("packed"),
                &path,
                file.identity(),
            );
            if let CacheState::Broken(why) = cache.state() {
                eprintln!(
                    "warning: ignoring {} ({why}); repacking",
                    cache.path().display()
                );
            }
            let model = Llama::load(&GgufWeights::with_pack_cache(&file, &cache), config, n);
            if model.is_ok() {
                if let Err(e) = cache.finish() {
                    eprintln!(
                        "warning: could not write the packed weights to {}: {e}",
                        cache.path().display()
                    );
                }
            }
            model
        }
        .with_context(|| format!("loading {}", path.display()))?;
        let (tok, template) = gguf_tokenizer(&path, &file)?;
        (model, tok, template, n)
    };
    if n_ctx == 0 {
        bail!("the context size must be at least 1");
    }
    if tokenizer.vocab_size() > model.config.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model only {}",
            path.display(),
            tokenizer.vocab_size(),
            model.config.vocab_size
        );
    }
    Ok(Loaded {
        path,
        model,
        tokenizer,
        chat_template,
        n_ctx,
    })
}
