//! How retrieved chunks are put before a question for the chat model: one place, so that
//! `rag ask` and the server's chat with documents give the model the same words.

use crate::Hit;

/// What the model is told to do with the sources.
pub const SYSTEM: &str = "You answer questions using only the numbered sources given. \
Cite each source you use by its number in square brackets, like [1]. If the sources do not \
hold the answer, say that you do not know.";

/// The user turn: the sources, numbered from 1, then the question.
pub fn user_turn(question: &str, hits: &[Hit]) -> String {
    let mut s = String::from("Sources:\n\n");
    for (i, h) in hits.iter().enumerate() {
        s.push_str(&format!("[{}] {}\n\n", i + 1, h.chunk.text.trim()));
    }
    s.push_str(&format!("Question: {}", question.trim()));
    s
}

/// The system prompt with the sources rule after a user's own system prompt, if any.
pub fn system_with(own: Option<&str>) -> String {
    match own.map(str::trim).filter(|s| !s.is_empty()) {
        Some(own) => format!("{own}\n\n{SYSTEM}"),
        None => SYSTEM.to_string(),
    }
}
