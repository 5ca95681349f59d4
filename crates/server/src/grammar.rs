//! Constrained output for requests: OpenAI's `response_format` (`json_object`,
//! `json_schema`) and llama.cpp's `grammar` (GBNF text) and `json_schema` fields.
//!
//! The schema is read from the body with its members in their written order (the order
//! the grammar asks properties in), so the body is parsed a second time for it.

use std::sync::{Arc, OnceLock};

use ferrollama_generate::{constraint, grammar_vocabulary, GrammarSource};
use ferrollama_grammar::{Constraint, Json, Vocabulary};
use ferrollama_tokenizer::Tokenizer;

use crate::error::ApiError;

/// The grammar a request body asks for, if any. At most one way of asking is accepted.
pub fn requested(body: &[u8]) -> Result<Option<GrammarSource>, ApiError> {
    let mentions = |key: &[u8]| body.windows(key.len()).any(|w| w == key);
    // A key written with `\u` escapes is still that key: parse those bodies too.
    if !(mentions(b"response_format")
        || mentions(b"grammar")
        || mentions(b"json_schema")
        || mentions(b"\\u"))
    {
        return Ok(None);
    }
    let Ok(doc) = serde_json::from_slice::<Json>(body) else {
        // The typed parse has already accepted the body; nothing more to find here.
        return Ok(None);
    };
    let mut found: Vec<(&str, GrammarSource)> = Vec::new();
    if let Some(f) = doc.get("response_format") {
        let kind = match f.get("type") {
            Some(Json::String(k)) => k.as_str(),
            _ => {
                return Err(ApiError::invalid_param(
                    "response_format",
                    "response_format needs a string `type`",
                ))
            }
        };
        match kind {
            "text" => {}
            "json_object" => found.push((
                "response_format",
                match f.get("schema") {
                    // llama.cpp's extension: a schema beside `json_object`.
                    Some(s) => GrammarSource::JsonSchema(s.compact()),
                    None => GrammarSource::JsonObject,
                },
            )),
            "json_schema" => {
                let schema = f
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            "response_format",
                            "response_format of type json_schema needs json_schema.schema",
                        )
                    })?;
                found.push((
                    "response_format",
                    GrammarSource::JsonSchema(schema.compact()),
                ));
            }
            other => {
                return Err(ApiError::invalid_param(
                    "response_format",
                    format!(
                    "response_format '{other}' is not supported (text, json_object, json_schema)"
                ),
                ))
            }
        }
    }
    match doc.get("json_schema") {
        None | Some(Json::Null) => {}
        Some(s) => found.push(("json_schema", GrammarSource::JsonSchema(s.compact()))),
    }
    match doc.get("grammar") {
        None | Some(Json::Null) => {}
        Some(Json::String(g)) if g.is_empty() => {}
        Some(Json::String(g)) => found.push(("grammar", GrammarSource::Gbnf(g.clone()))),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "grammar",
                "grammar must be GBNF text",
            ))
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, s)| s)),
        _ => Err(ApiError::invalid_param(
            found[1].0,
            format!(
                "give one of response_format, json_schema and grammar, not {}",
                found.iter().map(|f| f.0).collect::<Vec<_>>().join(" and ")
            ),
        )),
    }
}

/// The model's vocabulary as grammars see it, built on first use.
pub struct GrammarVocabulary(OnceLock<Arc<Vocabulary>>);

impl GrammarVocabulary {
    pub fn new() -> Self {
        GrammarVocabulary(OnceLock::new())
    }

    /// A constraint for `source`; a grammar or schema that cannot be used is a 400 on the
    /// field it came from.
    pub fn constraint(
        &self,
        tok: &Tokenizer,
        source: &GrammarSource,
    ) -> Result<Constraint, ApiError> {
        let vocab = self.0.get_or_init(|| grammar_vocabulary(tok));
        let param = match source {
            GrammarSource::Gbnf(_) => "grammar",
            _ => "response_format",
        };
        constraint(source, vocab).map_err(|e| ApiError::invalid_param(param, e.to_string()))
    }
}

impl Default for GrammarVocabulary {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &str) -> Result<Option<GrammarSource>, ApiError> {
        requested(body.as_bytes())
    }

    #[test]
    fn each_way_of_asking_is_read_with_member_order_kept() {
        assert_eq!(req(r#"{"messages": []}"#).unwrap(), None);
        assert_eq!(
            req(r#"{"\u0067rammar": "root ::= \"a\""}"#).unwrap(),
            Some(GrammarSource::Gbnf("root ::= \"a\"".into()))
        );
        assert_eq!(
            req(r#"{"response_format": {"type": "text"}}"#).unwrap(),
            None
        );
        assert_eq!(
            req(r#"{"response_format": {"type": "json_object"}}"#).unwrap(),
            Some(GrammarSource::JsonObject)
        );
        assert_eq!(
            req(r#"{"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true,
                 "schema": {"type": "object", "properties": {"z": {}, "a": {}}}}}}"#)
            .unwrap(),
            Some(GrammarSource::JsonSchema(
                r#"{"type":"object","properties":{"z":{},"a":{}}}"#.into()
            ))
        );
        assert_eq!(
            req(r#"{"grammar": "root ::= \"a\""}"#).unwrap(),
            Some(GrammarSource::Gbnf("root ::= \"a\"".into()))
        );
        assert_eq!(
            req(r#"{"json_schema": {"type": "integer"}}"#).unwrap(),
            Some(GrammarSource::JsonSchema(r#"{"type":"integer"}"#.into()))
        );
    }

    #[test]
    fn conflicting_or_malformed_requests_are_400() {
        let e = req(r#"{"grammar": "root ::= \"a\"", "json_schema": {}}"#).unwrap_err();
        assert!(e.message.contains("give one of"), "{}", e.message);
        let e = req(r#"{"response_format": {"type": "json_schema"}}"#).unwrap_err();
        assert!(e.message.contains("json_schema.schema"), "{}", e.message);
        let e = req(r#"{"response_format": {"type": "yaml"}}"#).unwrap_err();
        assert!(e.message.contains("not supported"), "{}", e.message);
        assert!(req(r#"{"grammar": 3}"#).is_err());
    }
}
