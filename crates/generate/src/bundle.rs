//! One way to open a model: from a path (a GGUF file, or a Hugging Face directory), the
//! weights ready to run, the tokenizer, the chat template and the context to run with. The
//! command line, the server, evaluation and the tests all open models here, so the rules
//! (which context, where packed weights are cached, that the tokenizer fits the model) are
//! written once.

use std::path::{Path, PathBuf};

use ferrollama_gguf::GgufFile;
use ferrollama_model::hf::{config_from_hf, HfWeights};
use ferrollama_model::huge_pages::{self, Placement};
use ferrollama_model::pack_cache::{CacheState, PackCache};
use ferrollama_model::{Config, GgufWeights, Llama};
use ferrollama_tokenizer::{Tokenizer, TokenizerFiles};

use crate::error::{Error, Result};

/// Context used when none is asked for: the model's, capped to keep the cache small.
pub const DEFAULT_CTX_CAP: usize = 4096;

/// How to open a model.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Context to run with (default: the model's, at most [`DEFAULT_CTX_CAP`]); more than
    /// the model was trained for is refused.
    pub ctx: Option<usize>,
    /// Where a GGUF file's repacked weights are cached (and read from on later opens);
    /// `None` repacks in memory every time.
    pub pack_cache_dir: Option<PathBuf>,
    /// How the cached weights are held: a private copy in huge pages (the default: faster
    /// generation), or the cache file mapped (pages shared between processes).
    pub placement: Placement,
}

/// A model ready to run.
pub struct Bundle {
    pub path: PathBuf,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// The model's chat template (GGUF `tokenizer.chat_template` or the directory's
    /// `tokenizer_config.json`), if it has one.
    pub chat_template: Option<String>,
    /// The context the model runs with.
    pub n_ctx: usize,
    /// Things the caller may want to tell the user (a damaged pack cache rebuilt, ...).
    pub warnings: Vec<String>,
}

impl Bundle {
    /// Opens the model at `path`.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Self> {
        let context = |e: ferrollama_model::Error| Error::Open {
            path: path.display().to_string(),
            source: Box::new(e.into()),
        };
        let n_ctx = |config: &Config| {
            opts.ctx
                .unwrap_or(config.max_position_embeddings.min(DEFAULT_CTX_CAP))
        };
        let mut warnings = Vec::new();
        let (model, files, n) = if path.is_dir() {
            let config = config_from_hf(path).map_err(context)?;
            let n = n_ctx(&config);
            let weights = HfWeights::open(path, config.clone()).map_err(context)?;
            let model = Llama::load(&weights, config, n).map_err(context)?;
            (model, TokenizerFiles::load(path)?, n)
        } else {
            let file = GgufFile::open(path)
                .map_err(ferrollama_model::Error::from)
                .map_err(context)?;
            let config = Config::from_gguf(&file).map_err(context)?;
            let n = n_ctx(&config);
            let model = match &opts.pack_cache_dir {
                None => Llama::load(&GgufWeights::new(&file), config, n),
                Some(dir) => {
                    let cache = PackCache::open_with(dir, path, file.identity(), opts.placement);
                    if let CacheState::Broken(why) = cache.state() {
                        warnings.push(format!(
                            "ignoring {} ({why}); repacking",
                            cache.path().display()
                        ));
                    }
                    let load = |cache: &PackCache| {
                        Llama::load(
                            &GgufWeights::with_pack_cache(&file, cache),
                            config.clone(),
                            n,
                        )
                    };
                    let model = load(&cache);
                    let written = match &model {
                        Ok(_) => cache.finish().unwrap_or_else(|e| {
                            warnings.push(format!(
                                "could not write the packed weights to {}: {e}",
                                cache.path().display()
                            ));
                            false
                        }),
                        Err(_) => false,
                    };
                    // Packed just now, the matrices sit in the allocator's 4 KiB pages: load
                    // again from the file just written, into huge pages, as every later open
                    // will. The first model goes first, and the cache with it (it holds the
                    // matrices it wrote), so the weights never count twice.
                    if written && opts.placement == Placement::HugePages && huge_pages::available()
                    {
                        drop(model);
                        drop(cache);
                        let again =
                            PackCache::open_with(dir, path, file.identity(), opts.placement);
                        match again.state() {
                            CacheState::Hit => load(&again),
                            // Gone or unreadable already (another process replaced it, or
                            // memory ran short): pack again, in 4 KiB pages.
                            state => {
                                if let CacheState::Broken(why) = state {
                                    warnings.push(format!(
                                        "could not read back {} ({why}); repacking",
                                        again.path().display()
                                    ));
                                }
                                load(&again).inspect(|_| {
                                    let _ = again.finish();
                                })
                            }
                        }
                    } else {
                        model
                    }
                }
            }
            .map_err(context)?;
            (model, TokenizerFiles::from_gguf(&file.header)?, n)
        };
        if files.tokenizer.vocab_size() > model.config.vocab_size {
            return Err(Error::Input(format!(
                "{}: the tokenizer has {} tokens but the model only {}",
                path.display(),
                files.tokenizer.vocab_size(),
                model.config.vocab_size
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            model,
            tokenizer: files.tokenizer,
            chat_template: files.chat_template,
            n_ctx: n,
            warnings,
        })
    }
}
