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
    let dialog = llama2_dialog(messages)?;
    if dialog.last().is_none_or(|m| m.role != "user") {
        return Err(Error::Input("the last message must be the user's".into()));
    }
    let (bos, eos) = bos_eos(tok)?;
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

/// The BOS and EOS ids Llama 2's format puts around each pair.
fn bos_eos(tok: &Tokenizer) -> Result<(u32, u32)> {
    let bos = tok
        .bos()
        .ok_or_else(|| Error::Input("the vocabulary has no BOS token".into()))?;
    let eos = tok
        .eos()
        .ok_or_else(|| Error::Input("the vocabulary has no EOS token".into()))?;
    Ok((bos, eos))
}

/// Llama 2's turns: the system prompt folded into the first user turn, then user and
/// assistant alternating.
fn llama2_dialog(messages: &[Message]) -> Result<Vec<Message>> {
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
    Ok(dialog)
}

/// Renders a Hugging Face style chat template with `add_generation_prompt`.
pub fn render_template(source: &str, messages: &[Message], tok: &Tokenizer) -> Result<String> {
    render_template_with(source, messages, tok, true)
}

/// Renders a chat template, with or without the generation prompt (the assistant's header).
pub fn render_template_with(
    source: &str,
    messages: &[Message],
    tok: &Tokenizer,
    add_generation_prompt: bool,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION);
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
        add_generation_prompt => add_generation_prompt,
        bos_token => piece(tok.bos()),
        eos_token => piece(tok.eos()),
    };
    let template = env.get_template("chat").map_err(template_error)?;
    let mut out = CappedOutput {
        bytes: Vec::new(),
        cap: TEMPLATE_OUTPUT_BASE
            + TEMPLATE_OUTPUT_PER_INPUT_BYTE
                * messages
                    .iter()
                    .map(|m| m.content.len() + m.role.len())
                    .sum::<usize>(),
    };
    // The captured state borrows the environment: keep only whether rendering succeeded.
    let rendered = template.render_captured_to(ctx, &mut out).map(drop);
    match rendered {
        Ok(()) => String::from_utf8(out.bytes)
            .map_err(|_| Error::Template("the template wrote invalid UTF-8".into())),
        Err(_) if out.bytes.len() >= out.cap => Err(Error::Template(format!(
            "the template's output passed {} bytes (the limit for these messages)",
            out.cap
        ))),
        Err(e) => Err(template_error(e)),
    }
}

/// A template's error as text: the message and where (minijinja's plain display). Not its
/// alternate display, which draws the source with a caret line: for some syntax errors
/// the span ends before it starts on the same line, and drawing it underflows (a panic
/// with overflow checks, a gigantic allocation without; found by the chat_template fuzz
/// target, `crates/fuzzing/regressions/chat_template/`).
fn template_error(e: minijinja::Error) -> Error {
    Error::Template(e.to_string())
}

/// Chat templates are programs from model files, and the messages they format come from
/// whoever calls the server, so rendering is bounded: at most this many template
/// instructions (minijinja's fuel; SmolLM2's template spends about 40 per message, so a
/// real conversation never comes near) ...
const TEMPLATE_FUEL: u64 = 2_000_000;
/// ... nesting of macro calls and blocks at most this deep ...
const TEMPLATE_RECURSION: usize = 64;
/// ... and output at most 64 KiB plus 8 bytes for each byte of the messages (a template
/// adds headers around the text; one that repeats the text in a loop is refused).
const TEMPLATE_OUTPUT_BASE: usize = 64 << 10;
const TEMPLATE_OUTPUT_PER_INPUT_BYTE: usize = 8;

/// A writer that refuses to grow past `cap` bytes (ending the render with an error).
struct CappedOutput {
    bytes: Vec<u8>,
    cap: usize,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.cap {
            self.bytes.resize(self.cap, 0);
            return Err(std::io::Error::other("template output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub use ferrollama_tokenizer::chat_template_from_config as template_from_tokenizer_config;

/// A conversation as training data: its tokens, and which of them are the assistant's
/// (the tokens a supervised fine-tuning loss scores: each reply with its end-of-turn token,
/// so the model learns to stop; never the prompts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingSample {
    pub tokens: Vec<u32>,
    pub scored: Vec<bool>,
}

impl ChatFormat {
    /// The tokens of a whole conversation (ending with an assistant reply, or not) and the
    /// mask of the assistant's. With a template, each reply's span is what rendering the
    /// conversation up to it adds to the prompt the template renders for it (so the reply
    /// and the template's end-of-turn text are scored, the assistant header is not); the
    /// spans are tokenized on their own. Llama 2: `BOS [INST] user [/INST]` unscored, then
    /// ` answer ` and EOS scored, as Meta's format puts each pair.
    pub fn encode_for_training(
        &self,
        messages: &[Message],
        tok: &Tokenizer,
    ) -> Result<TrainingSample> {
        if !messages.iter().any(|m| m.role == "assistant") {
            return Err(Error::Input(
                "a training conversation needs an assistant message".into(),
            ));
        }
        match self {
            Self::Llama2 => llama2_training(messages, tok),
            Self::Template(source) => template_training(source, messages, tok),
        }
    }
}

fn template_training(
    source: &str,
    messages: &[Message],
    tok: &Tokenizer,
) -> Result<TrainingSample> {
    let full = render_template_with(source, messages, tok, false)?;
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prompt = render_template_with(source, &messages[..i], tok, true)?;
        let through = render_template_with(source, &messages[..=i], tok, false)?;
        if !through.starts_with(&prompt)
            || !full.starts_with(&through)
            || prompt.len() == through.len()
        {
            return Err(Error::Template(format!(
                "the chat template does not render conversations as growing prefixes (at message {}), \
                 so the assistant's tokens cannot be told apart",
                i + 1
            )));
        }
        spans.push((prompt.len(), through.len()));
    }
    let bos_in_text = tok
        .bos()
        .and_then(|b| tok.piece(b))
        .is_some_and(|b| !b.is_empty() && full.starts_with(b));
    // The text tokenized whole (as inference would see it), then each token placed in the
    // text by its bytes: a token is scored when it starts inside a reply's span.
    let mut tokens = Vec::new();
    if tok.add_bos() && !bos_in_text {
        tokens.extend(tok.bos());
    }
    let lead = tokens.len();
    tokens.extend(tok.encode(&full, false, true));
    let mut starts = Vec::with_capacity(tokens.len());
    // An SPM space prefix puts one byte before the text.
    let mut at: isize = if tok.add_space_prefix() && !full.starts_with(' ') {
        -1
    } else {
        0
    };
    for &id in &tokens[lead..] {
        starts.push(at);
        at += tok
            .token_to_piece(id, true)
            .map_err(|e| Error::Input(e.to_string()))?
            .len() as isize;
    }
    if at != full.len() as isize {
        return Err(Error::Template(format!(
            "the tokens of the rendered conversation spell {at} bytes, the text has {}; the \
             assistant's tokens cannot be placed",
            full.len()
        )));
    }
    let in_reply = |byte: isize| {
        spans
            .iter()
            .any(|&(s, e)| byte >= s as isize && byte < e as isize)
    };
    let mut scored = vec![false; lead];
    scored.extend(starts.iter().map(|&b| in_reply(b.max(0))));
    Ok(TrainingSample { tokens, scored })
}

fn llama2_training(messages: &[Message], tok: &Tokenizer) -> Result<TrainingSample> {
    let dialog = llama2_dialog(messages)?;
    let (bos, eos) = bos_eos(tok)?;
    let mut out = TrainingSample {
        tokens: Vec::new(),
        scored: Vec::new(),
    };
    for pair in dialog.chunks(2) {
        let prompt = format!("{B_INST} {} {E_INST}", pair[0].content.trim());
        let prompt_ids = tok.encode(&prompt, false, false);
        out.tokens.push(bos);
        out.scored.push(false);
        let Some(answer) = pair.get(1) else {
            out.scored
                .extend(std::iter::repeat_n(false, prompt_ids.len()));
            out.tokens.extend(prompt_ids);
            continue;
        };
        // The pair tokenized whole, as for inference; the answer is what follows the
        // prompt's tokens.
        let whole = tok.encode(
            &format!("{prompt} {} ", answer.content.trim()),
            false,
            false,
        );
        let cut = if whole.starts_with(&prompt_ids) {
            prompt_ids.len()
        } else {
            return Err(Error::Input(
                "the prompt's tokens are not a prefix of the pair's, so the answer cannot be told apart".into(),
            ));
        };
        out.scored.extend(std::iter::repeat_n(false, cut));
        out.scored
            .extend(std::iter::repeat_n(true, whole.len() - cut + 1));
        out.tokens.extend(whole);
        out.tokens.push(eos);
    }
    Ok(out)
}
