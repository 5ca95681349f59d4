//! Loading the tokenizer (and chat template) a run names: from a GGUF file's metadata, a
//! Hugging Face directory, or a `tokenizer.json`.

use std::path::Path;

use ferrollama_tokenizer::{Tokenizer, TokenizerFiles};

use crate::error::Result;

/// The tokenizer stored at `path`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Ok(TokenizerFiles::load(path)?.tokenizer)
}

/// The tokenizer and chat template stored at `path`.
pub fn load_tokenizer_files(path: &Path) -> Result<TokenizerFiles> {
    Ok(TokenizerFiles::load(path)?)
}
