//! Preference pairs for DPO and reward models: one prompt, a chosen and a rejected answer,
//! read from JSON Lines (or one JSON array) in the shapes preference data sets use:
//!
//! - `{"prompt": "...", "chosen": "...", "rejected": "..."}` (an optional `system` string);
//! - `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}` (TRL's
//!   conversational shape: each side continues the prompt; a side may also be a string,
//!   one assistant message);
//! - `{"chosen": [messages], "rejected": [messages]}` (whole conversations, as Anthropic's
//!   HH-RLHF; they should share everything before the last assistant message).
//!
//! An optional `margin` (a number), or `chosen_rating` and `rejected_rating` (their
//! difference), says how much better the chosen answer is: the Llama 2 reward model's
//! ranking loss subtracts it (Touvron et al. 2023, 3.2.2); DPO does not use it.

use std::path::Path;

use ferrollama_generate::Message;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::sft::{parse_messages, read_records};

/// One preference pair, each side a whole conversation ending with its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub chosen: Vec<Message>,
    pub rejected: Vec<Message>,
    /// How much better the chosen answer is (0 when the record does not say).
    pub margin: f64,
}

/// A side's messages: a string is one assistant message, a list is messages.
fn side(v: &Value, field: &str) -> std::result::Result<Vec<Message>, String> {
    match v {
        Value::String(s) => Ok(vec![Message::new("assistant", s)]),
        Value::Array(_) => parse_messages(v, field),
        Value::Null => Err(format!("`{field}` is missing")),
        _ => Err(format!("`{field}` must be a string or a list of messages")),
    }
}

/// The pair one record holds, whichever shape it has.
pub fn pair_from_record(v: &Value) -> std::result::Result<Pair, String> {
    let mut prompt = Vec::new();
    if let Some(s) = v.get("system").filter(|s| !s.is_null()) {
        let s = s.as_str().ok_or("`system` must be a string")?;
        prompt.push(Message::new("system", s));
    }
    match v.get("prompt") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) => prompt.push(Message::new("user", p)),
        Some(list @ Value::Array(_)) => prompt.extend(parse_messages(list, "prompt")?),
        Some(_) => return Err("`prompt` must be a string or a list of messages".into()),
    }
    let null = Value::Null;
    let whole = |field: &str| -> std::result::Result<Vec<Message>, String> {
        let mut out = prompt.clone();
        out.extend(side(v.get(field).unwrap_or(&null), field)?);
        match out.last() {
            Some(m) if m.role == "assistant" => Ok(out),
            _ => Err(format!("`{field}` must end with an assistant message")),
        }
    };
    let (chosen, rejected) = (whole("chosen")?, whole("rejected")?);
    if chosen == rejected {
        return Err("`chosen` and `rejected` are the same: nothing to prefer".into());
    }
    let number = |k: &str| -> std::result::Result<Option<f64>, String> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| format!("`{k}` must be a number")),
        }
    };
    let margin = match (
        number("margin")?,
        number("chosen_rating")?,
        number("rejected_rating")?,
    ) {
        (Some(m), _, _) => m,
        (None, Some(c), Some(r)) => c - r,
        _ => 0.0,
    };
    Ok(Pair {
        chosen,
        rejected,
        margin,
    })
}

/// Every pair of a data file; errors name the file and record.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>> {
    read_records(path)?
        .into_iter()
        .map(|(n, v)| {
            pair_from_record(&v)
                .map_err(|m| Error::Config(format!("{}: record {n}: {m}", path.display())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn roles(m: &[Message]) -> Vec<(&str, &str)> {
        m.iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect()
    }

    #[test]
    fn every_shape_gives_two_whole_conversations() {
        let p = pair_from_record(&json!({"prompt": "2+2?", "chosen": "4", "rejected": "5",
                                          "system": "Be brief."}))
        .unwrap();
        assert_eq!(
            roles(&p.chosen),
            [
                ("system", "Be brief."),
                ("user", "2+2?"),
                ("assistant", "4")
            ]
        );
        assert_eq!(roles(&p.rejected)[2], ("assistant", "5"));
        assert_eq!(p.margin, 0.0);
        let p = pair_from_record(&json!({
            "prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "assistant", "content": "go away"}],
            "chosen_rating": 7, "rejected_rating": 3}))
        .unwrap();
        assert_eq!(roles(&p.chosen), [("user", "hi"), ("assistant", "hello")]);
        assert_eq!(p.margin, 4.0);
        let p = pair_from_record(&json!({
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
            "margin": 1.5}))
        .unwrap();
        assert_eq!(roles(&p.rejected), [("user", "q"), ("assistant", "b")]);
        assert_eq!(p.margin, 1.5);
    }

    #[test]
    fn broken_records_say_what_is_wrong() {
        let err = |v: Value| pair_from_record(&v).unwrap_err();
        assert!(err(json!({"prompt": "q", "chosen": "a"})).contains("rejected"));
        assert!(err(json!({"prompt": "q", "chosen": "a", "rejected": "a"})).contains("same"));
        assert!(err(json!({"prompt": "q", "chosen": 3, "rejected": "a"})).contains("chosen"));
        assert!(
            err(json!({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "x"}))
                .contains("margin")
        );
        let ends_with_user = json!({"chosen": [{"role": "user", "content": "q"}],
                                    "rejected": [{"role": "user", "content": "r"}]});
        assert!(err(ends_with_user).contains("assistant"));
    }
}
