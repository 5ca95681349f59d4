//! Grammars for generation: a GBNF grammar or a JSON Schema, compiled against a model's
//! vocabulary into the [`Constraint`] that [`GenerateParams::grammar`](crate::GenerateParams)
//! carries.

use std::sync::Arc;

use ferrollama_grammar::{parse, schema_to_gbnf, Constraint, Vocabulary};
use ferrollama_tokenizer::Tokenizer;

use crate::error::Result;

/// Where a grammar comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrammarSource {
    /// GBNF text (llama.cpp's format).
    Gbnf(String),
    /// A JSON Schema, as JSON text (its `properties` order is the order asked for).
    JsonSchema(String),
    /// Any JSON object (OpenAI's `json_object` response format).
    JsonObject,
}

impl GrammarSource {
    /// The GBNF text of this source.
    pub fn to_gbnf(&self) -> Result<String> {
        Ok(match self {
            GrammarSource::Gbnf(g) => g.clone(),
            GrammarSource::JsonSchema(s) => schema_to_gbnf(s)?,
            GrammarSource::JsonObject => schema_to_gbnf(r#"{"type": "object"}"#)?,
        })
    }
}

/// The model's tokens as the grammar sees them: each token's text as generation shows
/// it, control tokens excluded, end-of-generation tokens marked. Build once per
/// tokenizer; it is shared by every constraint.
pub fn grammar_vocabulary(tok: &Tokenizer) -> Arc<Vocabulary> {
    let pieces = (0..tok.vocab_size() as u32)
        .map(|id| tok.token_to_piece(id, false).ok())
        .collect();
    let eog: Vec<u32> = tok.eog_ids().collect();
    Arc::new(Vocabulary::new(pieces, &eog))
}

/// A constraint at the start of `source`'s grammar.
pub fn constraint(source: &GrammarSource, vocab: &Arc<Vocabulary>) -> Result<Constraint> {
    let grammar = Arc::new(parse(&source.to_gbnf()?)?);
    Ok(Constraint::new(grammar, Arc::clone(vocab))?)
}
