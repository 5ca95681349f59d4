//! Loading the tokenizer a run names: from a GGUF file's metadata, a Hugging Face
//! directory, or a `tokenizer.json`.

use std::path::Path;

use ferrollama_gguf::GgufFile;
use ferrollama_tokenizer::Tokenizer;

use crate::error::{io, Result};

/// The tokenizer stored at `path`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        return Ok(Tokenizer::from_hf_dir(path)?);
    }
    if path.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        let config = path
            .parent()
            .map(|d| d.join("tokenizer_config.json"))
            .and_then(|c| std::fs::read_to_string(c).ok());
        return Ok(Tokenizer::from_hf_json(&text, config.as_deref())?);
    }
    let file = GgufFile::open(path).map_err(ferrollama_model::Error::from)?;
    Ok(Tokenizer::from_gguf(&file.header)?)
}
