//! Supervised fine-tuning data: conversations in the common shapes, read from JSON Lines
//! (or one JSON array) and turned into messages; rendered with the model's chat format into
//! tokens with the assistant's marked (`ChatFormat::encode_for_training`), and shown with the
//! scored text marked, so a user sees what is learned.
//!
//! Shapes: `{"messages": [{"role", "content"}, ...]}` (roles system, user, assistant);
//! `{"prompt", "completion"}`; `{"instruction", "input", "output"}` (Alpaca's; the input,
//! when not empty, follows the instruction after a blank line). Packing and the loop are in
//! [`crate::sft_batches`] and [`crate::finetune`].

use std::path::Path;

use ferrollama_generate::chat::TrainingSample;
use ferrollama_generate::{ChatFormat, Message};
use ferrollama_tokenizer::Tokenizer;
use serde_json::Value;

use crate::error::{Error, Result};

/// One conversation to learn from: its messages, and which assistant messages are not
/// learned (`"weight": 0` on a message, as OpenAI's fine-tuning format marks them: the
/// earlier turns of a Ghost Attention sample, an answer given as context).
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub messages: Vec<Message>,
    /// Indices into `messages` of assistant messages whose tokens are not scored.
    pub unlearned: Vec<usize>,
}

impl Conversation {
    /// A conversation all of whose assistant messages are learned.
    pub fn learning_all(messages: Vec<Message>) -> Self {
        Self {
            messages,
            unlearned: Vec::new(),
        }
    }

    /// The conversation as a record `sft` reads (`messages`, unlearned answers marked
    /// `"weight": 0`).
    pub fn to_record(&self) -> Value {
        let mut messages: Vec<Value> = self
            .messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        for &k in &self.unlearned {
            messages[k]["weight"] = serde_json::json!(0);
        }
        serde_json::json!({ "messages": messages })
    }

    /// Tokens and scored mask with `format`: the assistant messages' spans, less the
    /// unlearned ones.
    pub fn encode(&self, format: &ChatFormat, tok: &Tokenizer) -> Result<TrainingSample> {
        let mut s = format.encode_for_training(&self.messages, tok)?;
        if self.unlearned.is_empty() {
            return Ok(s);
        }
        // The scored runs are the assistant messages' spans, in order (user and system
        // text and the template's headers between them are never scored).
        let mut runs = Vec::new();
        let mut i = 0;
        while i < s.scored.len() {
            if s.scored[i] {
                let j = (i..s.scored.len())
                    .find(|&k| !s.scored[k])
                    .unwrap_or(s.scored.len());
                runs.push(i..j);
                i = j;
            } else {
                i += 1;
            }
        }
        let assistant: Vec<usize> = (0..self.messages.len())
            .filter(|&k| self.messages[k].role == "assistant")
            .collect();
        if runs.len() != assistant.len() {
            return Err(Error::Config(format!(
                "the chat format scores {} spans for {} assistant messages, so `weight` cannot be applied",
                runs.len(),
                assistant.len()
            )));
        }
        for (run, k) in runs.into_iter().zip(&assistant) {
            if self.unlearned.contains(k) {
                s.scored[run].fill(false);
            }
        }
        Ok(s)
    }
}

/// The messages of one record, whichever shape it has (weights are read and checked, then
/// left out: see [`conversation_from_record`]).
pub fn messages_from_record(v: &Value) -> std::result::Result<Vec<Message>, String> {
    conversation_from_record(v).map(|c| c.messages)
}

/// The conversation of one record, whichever shape it has.
pub fn conversation_from_record(v: &Value) -> std::result::Result<Conversation, String> {
    let text = |k: &str| -> std::result::Result<Option<&str>, String> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("`{k}` must be a string")),
        }
    };
    if let Some(list) = v.get("messages") {
        let (messages, unlearned) = parse_weighted(list, "messages", true)?;
        let learned =
            (0..messages.len()).any(|k| messages[k].role == "assistant" && !unlearned.contains(&k));
        if !learned {
            return Err("no assistant message with a weight other than 0: nothing to learn".into());
        }
        return Ok(Conversation {
            messages,
            unlearned,
        });
    }
    if let (Some(p), Some(c)) = (text("prompt")?, text("completion")?) {
        return Ok(Conversation::learning_all(vec![
            Message::new("user", p),
            Message::new("assistant", c),
        ]));
    }
    if let (Some(i), Some(o)) = (text("instruction")?, text("output")?) {
        let user = match text("input")? {
            Some(input) if !input.trim().is_empty() => format!("{i}\n\n{input}"),
            _ => i.to_string(),
        };
        return Ok(Conversation::learning_all(vec![
            Message::new("user", &user),
            Message::new("assistant", o),
        ]));
    }
    Err("a record needs `messages`, `prompt` + `completion`, or `instruction` + `output`".into())
}

/// The prompt of one record, to be answered: `messages` up to its last user message (a
/// final assistant message, the reference answer, is dropped), `prompt`, or `instruction`
/// (+ `input`). Earlier assistant turns stay as context.
pub fn prompt_from_record(v: &Value) -> std::result::Result<Vec<Message>, String> {
    if let Some(list) = v.get("messages") {
        let (mut messages, _) = parse_weighted(list, "messages", true)?;
        while messages.last().is_some_and(|m| m.role == "assistant") {
            messages.pop();
        }
        if messages.last().is_none_or(|m| m.role != "user") {
            return Err("`messages` must end with a user message (the prompt)".into());
        }
        return Ok(messages);
    }
    let mut v = v.clone();
    if let Value::Object(o) = &mut v {
        o.entry("completion")
            .or_insert(Value::String(String::new()));
        o.entry("output").or_insert(Value::String(String::new()));
    }
    let mut c = conversation_from_record(&v)
        .map_err(|_| "a prompt record needs `messages`, `prompt`, or `instruction`".to_string())?;
    c.messages.pop();
    Ok(c.messages)
}

/// A list of `{"role", "content"}` messages (roles system, user, assistant; text content),
/// the value of field `field`.
pub fn parse_messages(list: &Value, field: &str) -> std::result::Result<Vec<Message>, String> {
    parse_weighted(list, field, false).map(|(m, _)| m)
}

/// Messages and the indices of those weighted 0 (`weight` allowed, as 0 or 1, on
/// assistant messages when `weights`).
fn parse_weighted(
    list: &Value,
    field: &str,
    weights: bool,
) -> std::result::Result<(Vec<Message>, Vec<usize>), String> {
    let list = list
        .as_array()
        .ok_or_else(|| format!("`{field}` must be a list of messages"))?;
    let mut out = Vec::with_capacity(list.len());
    let mut unlearned = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("`{field}`: message {} has no `role`", i + 1))?;
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(format!(
                "`{field}`: message {} has the role {role:?} (system, user or assistant)",
                i + 1
            ));
        }
        let content = m
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("`{field}`: message {} has no text `content`", i + 1))?;
        match m.get("weight") {
            None => {}
            Some(w) if weights && role == "assistant" => match w.as_f64() {
                Some(0.0) => unlearned.push(i),
                Some(1.0) => {}
                _ => return Err(format!("`{field}`: message {}: `weight` must be 0 or 1", i + 1)),
            },
            Some(_) => {
                return Err(format!(
                    "`{field}`: message {}: `weight` is read only on assistant messages of a conversation to learn",
                    i + 1
                ))
            }
        }
        out.push(Message::new(role, content));
    }
    Ok((out, unlearned))
}

/// Every conversation of a data file: JSON Lines, or one JSON array of records. Errors name
/// the file and line.
pub fn read_conversations(path: &Path) -> Result<Vec<Conversation>> {
    let err = |msg: String| Error::Config(format!("{}: {msg}", path.display()));
    read_records(path)?
        .into_iter()
        .map(|(n, v)| conversation_from_record(&v).map_err(|m| err(format!("record {n}: {m}"))))
        .collect()
}

/// The records of a JSON Lines file (or one JSON array), each with its line (or index)
/// number from 1; blank lines skipped.
pub fn read_records(path: &Path) -> Result<Vec<(usize, Value)>> {
    let err = |msg: String| Error::Config(format!("{}: {msg}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| err(format!("not valid UTF-8 ({e})")))?;
    let trimmed = text.trim_start();
    let records: Vec<(usize, Value)> = if trimmed.starts_with('[') {
        let all: Vec<Value> =
            serde_json::from_str(trimmed).map_err(|e| err(format!("not a JSON array: {e}")))?;
        all.into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, v))
            .collect()
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v = serde_json::from_str(line).map_err(|e| err(format!("line {}: {e}", i + 1)))?;
            out.push((i + 1, v));
        }
        out
    };
    if records.is_empty() {
        return Err(err("holds no records".into()));
    }
    Ok(records)
}

/// The conversation's text with the scored (learned) parts between `[[` and `]]`.
pub fn show_mask(tok: &Tokenizer, s: &TrainingSample) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < s.tokens.len() {
        let on = s.scored[i];
        let j = (i..s.tokens.len())
            .find(|&k| s.scored[k] != on)
            .unwrap_or(s.tokens.len());
        let text = tok.decode_lossy(&s.tokens[i..j], false).unwrap_or_default();
        if on {
            out.push_str("[[");
            out.push_str(&text);
            out.push_str("]]");
        } else {
            out.push_str(&text);
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_shape_becomes_messages() {
        let m = messages_from_record(&json!({"prompt": "2+2?", "completion": "4"})).unwrap();
        assert_eq!(
            m,
            [Message::new("user", "2+2?"), Message::new("assistant", "4")]
        );
        let m = messages_from_record(
            &json!({"instruction": "Add.", "input": "2 and 2", "output": "4"}),
        )
        .unwrap();
        assert_eq!(m[0].content, "Add.\n\n2 and 2");
        let m =
            messages_from_record(&json!({"instruction": "Say hi.", "input": "", "output": "hi"}))
                .unwrap();
        assert_eq!(m[0].content, "Say hi.");
        let m = messages_from_record(&json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})).unwrap();
        assert_eq!(m.len(), 2);
        assert!(
            messages_from_record(&json!({"messages": [{"role": "user", "content": "a"}]}))
                .unwrap_err()
                .contains("nothing to learn")
        );
        assert!(
            messages_from_record(&json!({"messages": [{"role": "tool", "content": "a"}]})).is_err()
        );
        assert!(messages_from_record(&json!({"text": "x"})).is_err());
        assert!(messages_from_record(&json!({"prompt": 3, "completion": "x"})).is_err());
    }

    #[test]
    fn the_mask_shows_what_is_learned() {
        let tok = Tokenizer::from_gguf_path(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/data/tiny/tiny-260k-q8_0.gguf"
        ))
        .unwrap();
        let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let f = ferrollama_generate::ChatFormat::Template(chatml.into());
        let m = messages_from_record(&json!({"prompt": "Hi?", "completion": "Hello."})).unwrap();
        let s = f.encode_for_training(&m, &tok).unwrap();
        let shown = show_mask(&tok, &s);
        assert!(
            shown.ends_with("<|im_start|>assistant\n[[Hello.<|im_end|>\n]]"),
            "{shown}"
        );
        assert_eq!(shown.matches("[[").count(), 1);
    }

    #[test]
    fn weight_zero_leaves_a_turn_unlearned() {
        let tok = Tokenizer::from_gguf_path(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/data/tiny/tiny-260k-q8_0.gguf"
        ))
        .unwrap();
        let rec = json!({"messages": [
            {"role": "user", "content": "One?"},
            {"role": "assistant", "content": "First.", "weight": 0},
            {"role": "user", "content": "Two?"},
            {"role": "assistant", "content": "Second.", "weight": 1}]});
        let c = conversation_from_record(&rec).unwrap();
        assert_eq!(c.unlearned, [1]);
        let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        for f in [ChatFormat::Llama2, ChatFormat::Template(chatml.into())] {
            let all = Conversation::learning_all(c.messages.clone())
                .encode(&f, &tok)
                .unwrap();
            let some = c.encode(&f, &tok).unwrap();
            assert_eq!(all.tokens, some.tokens);
            let shown = show_mask(&tok, &some);
            assert_eq!(shown.matches("[[").count(), 1, "{shown}");
            assert!(
                shown.contains("[[Second.") || shown.contains("[[ Second."),
                "{shown}"
            );
            assert!(
                !shown.contains("[[First") && !shown.contains("[[ First"),
                "{shown}"
            );
        }
        let none = json!({"messages": [{"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "weight": 0}]});
        assert!(conversation_from_record(&none)
            .unwrap_err()
            .contains("nothing to learn"));
        let bad = json!({"messages": [{"role": "user", "content": "a", "weight": 0},
            {"role": "assistant", "content": "b"}]});
        assert!(conversation_from_record(&bad)
            .unwrap_err()
            .contains("assistant"));
        let half = json!({"messages": [{"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "weight": 0.5}]});
        assert!(conversation_from_record(&half)
            .unwrap_err()
            .contains("0 or 1"));
    }

    #[test]
    fn prompts_drop_the_reference_answer() {
        let p = prompt_from_record(&json!({"prompt": "2+2?", "completion": "4"})).unwrap();
        assert_eq!(p, [Message::new("user", "2+2?")]);
        let p = prompt_from_record(&json!({"prompt": "2+2?"})).unwrap();
        assert_eq!(p, [Message::new("user", "2+2?")]);
        let p = prompt_from_record(&json!({"instruction": "Add.", "input": "1 and 2"})).unwrap();
        assert_eq!(p[0].content, "Add.\n\n1 and 2");
        let rec = json!({"messages": [{"role": "system", "content": "s"},
            {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]});
        let p = prompt_from_record(&rec).unwrap();
        assert_eq!(p.len(), 2);
        assert!(
            prompt_from_record(&json!({"messages": [{"role": "system", "content": "s"}]})).is_err()
        );
        assert!(prompt_from_record(&json!({"text": "x"})).is_err());
    }

    #[test]
    fn files_report_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"prompt\": \"a\", \"completion\": \"b\"}\n\n{\"prompt\": \"a\"}\n",
        )
        .unwrap();
        let e = read_conversations(&p).unwrap_err().to_string();
        assert!(e.contains("record 3"), "{e}");
        std::fs::write(&p, "[{\"prompt\": \"a\", \"completion\": \"b\"}]").unwrap();
        assert_eq!(read_conversations(&p).unwrap().len(), 1);
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(read_conversations(&p)
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
    }
}
