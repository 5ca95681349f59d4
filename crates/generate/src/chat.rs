//! Chat prompts: Llama 2's format exactly as Meta's reference code builds it
//! (`llama/generation.py`, `chat_completion`), or the model's own Jinja template
//! (GGUF `tokenizer.chat_template`, `tokenizer_config.json`) rendered with minijinja.

use ferrollama_tokenizer::Tokenizer;

use crate::error::{Error, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message with this role and content.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

const B_INST: &str = "[INST]";
const E_INST: &str = "[/INST]";
const B_SYS: &str = "<<SYS>>\n";
const E_SYS: &str = "\n<</SYS>>\n\n";

/// How a conversation becomes a prompt.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ChatFormat {
    /// `[INST]`, `<<SYS>>`, BOS/EOS around each turn, tokenized piece by piece.
    Llama2,
    /// A Jinja chat template, rendered to text and tokenized with special tokens parsed.
    Template(String),
}

impl ChatFormat {
    /// The model's template if it has one, otherwise Llama 2's format.
    pub fn for_model(template: Option<&str>) -> Self {
        match template {
            Some(t) if !t.trim().is_empty() => Self::Template(t.to_string()),
            _ => Self::Llama2,
        }
    }

    /// Token ids of the prompt for `messages`, ready for the assistant's reply.
    pub fn encode(&self, messages: &[Message], tok: &Tokenizer) -> Result<Vec<u32>> {
        match self {
            Self::Llama2 => llama2_tokens(messages, tok),
            Self::Template(source) => {
                let text = render_template(source, messages, tok)?;
                let bos_in_text = tok
                    .bos()
                    .and_then(|b| tok.piece(b))
                    .is_some_and(|b| !b.is_empty() && text.starts_with(b));
                Ok(tok.encode(&text, tok.add_bos() && !bos_in_text, true))
            }
        }
    }
}

/// Meta's `chat_completion`: the system prompt is folded into the first user turn; each
/// (user, assistant) pair is `BOS [INST] user [/INST] answer EOS`; the last user turn is
/// `BOS [INST] user [/INST]`.
fn llama2_tokens(messages: &[Message], tok: &Tokenizer) -> Result<Vec<u32>> {
    let mut dialog: Vec<Message> = messages.to_vec();
    if dialog.first().is_some_and(|m| m.role == "system") {
        let system = dialog.remove(0);
        let first = dialog
            .first_mut()
            .ok_or_else(|| Error::Input("a system prompt needs a user message after it".into()))?;
        first.content = format!("{B_SYS}{}{E_SYS}{}", system.content, first.content);
    }
    for (i, m) in dialog.iter().enumerate() {
        let expected = if i % 2 == 0 { "user" } else { "assistant" };
        if m.role != expected {
            return Err(Error::Input(format!(
                "Llama 2 chat needs turns user, assistant, user, ... (after an optional system prompt); turn {} is `{}`",
                i + 1,
                m.role
            )));
        }
    }
    if dialog.last().is_none_or(|m| m.role != "user") {
        return Err(Error::Input("the last message must be the user's".into()));
    }
    let bos = tok
        .bos()
        .ok_or_else(|| Error::Input("the vocabulary has no BOS token".into()))?;
    let eos = tok
        .eos()
        .ok_or_else(|| Error::Input("the vocabulary has no EOS token".into()))?;
    let mut ids = Vec::new();
    for pair in dialog.chunks(2) {
        ids.push(bos);
        match pair {
            [user, answer] => {
                let text = format!(
                    "{B_INST} {} {E_INST} {} ",
                    user.content.trim(),
                    answer.content.trim()
                );
                ids.extend(tok.encode(&text, false, false));
                ids.push(eos);
            }
            [user] => ids.extend(tok.encode(
                &format!("{B_INST} {} {E_INST}", user.content.trim()),
                false,
                false,
            )),
            _ => {}
        }
    }
    Ok(ids)
}

/// Renders a Hugging Face style chat template with `add_generation_prompt`.
pub fn render_template(source: &str, messages: &[Message], tok: &Tokenizer) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", source)
        .map_err(|e| Error::Template(e.to_string()))?;
    let piece = |id: Option<u32>| {
        id.and_then(|i| tok.piece(i))
            .unwrap_or_default()
            .to_string()
    };
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => piece(tok.bos()),
        eos_token => piece(tok.eos()),
    };
    env.get_template("chat")
        .and_then(|t| t.render(ctx))
        .map_err(|e| Error::Template(format!("{e:#}")))
}

pub use ferrollama_tokenizer::chat_template_from_config as template_from_tokenizer_config;
