//! A model's tokenizer and chat template from wherever the model keeps them: GGUF metadata
//! (`tokenizer.ggml.*`, `tokenizer.chat_template`), a Hugging Face directory
//! (`tokenizer.json` or `tokenizer.model`, `tokenizer_config.json`), or a lone
//! `tokenizer.json` with its `tokenizer_config.json` beside it.

use std::path::Path;

use ferrollama_gguf::{Gguf, GgufFile};

use crate::error::{Error, Result};
use crate::hf_export::chat_template_from_config;
use crate::Tokenizer;

/// A tokenizer and the chat template that goes with it (none for base models).
pub struct TokenizerFiles {
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
}

impl TokenizerFiles {
    /// Those of the GGUF file, Hugging Face directory or `tokenizer.json` at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| Error::Io {
                file: p.display().to_string(),
                source,
            })
        };
        if path.is_dir() {
            let config = read(&path.join("tokenizer_config.json")).ok();
            return Ok(Self {
                tokenizer: Tokenizer::from_hf_dir(path)?,
                chat_template: config.as_deref().and_then(chat_template_from_config),
            });
        }
        if path.extension().is_some_and(|e| e == "json") {
            let config = path
                .parent()
                .and_then(|d| read(&d.join("tokenizer_config.json")).ok());
            return Ok(Self {
                tokenizer: Tokenizer::from_hf_json(&read(path)?, config.as_deref())?,
                chat_template: config.as_deref().and_then(chat_template_from_config),
            });
        }
        let file = GgufFile::open(path)?;
        Self::from_gguf(&file.header)
    }

    /// Those of a GGUF file's metadata.
    pub fn from_gguf(header: &Gguf) -> Result<Self> {
        Ok(Self {
            tokenizer: Tokenizer::from_gguf(header)?,
            chat_template: header
                .get_str("tokenizer.chat_template")
                .ok()
                .map(String::from),
        })
    }
}
