//! `ferrollama chat`: an interactive conversation. Lines typed are user turns; `/reset`
//! forgets the conversation; Ctrl-D (end of input) quits. When the conversation no longer
//! fits the context, the oldest turns are dropped (the system prompt stays) with a notice.

use std::io::{BufRead, Write};

use anyhow::Result;
use ferrollama_generate::{ChatFormat, GenerateParams, Generator, Message};
use ferrollama_tokenizer::Tokenizer;

use crate::args::{GrammarArgs, ModelArgs, SamplingArgs};
use crate::load::load;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Every reply follows this grammar or schema.
    #[command(flatten)]
    pub grammar: GrammarArgs,
    /// System prompt for the conversation.
    #[arg(short, long)]
    pub system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Stop a reply when this string appears (repeatable); it is not shown.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Use Llama 2's [INST] format even when the model has a chat template.
    #[arg(long)]
    pub llama2_format: bool,
}

pub fn run(a: Args) -> Result<()> {
    let m = load(&a.model)?;
    let format = if a.llama2_format {
        ChatFormat::Llama2
    } else {
        ChatFormat::for_model(m.chat_template.as_deref())
    };
    let params = GenerateParams {
        max_new_tokens: a.max_tokens,
        stop: a.stop.clone(),
        sampling: a.sampling.params(),
        grammar: a.grammar.constraint(&m.tokenizer)?,
        ..GenerateParams::default()
    };
    let mut generator = Generator::new(&m.model, &m.tokenizer, m.n_ctx);
    let system: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
    let mut history: Vec<Message> = Vec::new();
    eprintln!("ferrollama chat with {} (context {}). Type a message; /reset forgets the conversation; Ctrl-D quits.", m.path.display(), m.n_ctx);

    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim() == "/reset" {
            history.clear();
            generator.reset();
            eprintln!("(conversation forgotten)");
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        history.push(Message::new("user", line));
        let prompt = match fit_context(
            &format,
            &system,
            &mut history,
            &m.tokenizer,
            m.n_ctx,
            a.max_tokens,
        ) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e:#}");
                history.pop();
                continue;
            }
        };
        let reply = generator.generate(&prompt, &params, |piece| {
            let _ = write!(out, "{piece}");
            out.flush().is_ok()
        });
        writeln!(out)?;
        match reply {
            Ok(g) => history.push(Message::new("assistant", g.text.trim())),
            Err(e) => {
                eprintln!("error: {e:#}");
                history.pop();
            }
        }
    }
}

/// The prompt for the conversation, dropping the oldest turns until it leaves room for a
/// reply of `reserve` tokens, but never reserving more than a quarter of the context.
fn fit_context(
    format: &ChatFormat,
    system: &[Message],
    history: &mut Vec<Message>,
    tok: &Tokenizer,
    n_ctx: usize,
    reserve: usize,
) -> Result<Vec<u32>> {
    let room = n_ctx.saturating_sub(reserve.min(n_ctx / 4).max(1));
    loop {
        let messages: Vec<Message> = system.iter().chain(history.iter()).cloned().collect();
        let prompt = format.encode(&messages, tok)?;
        if prompt.len() <= room {
            return Ok(prompt);
        }
        if history.len() <= 1 {
            anyhow::bail!(
                "the message is {} tokens long; the context holds {n_ctx}",
                prompt.len()
            );
        }
        // Drop the oldest user turn and the reply to it.
        let drop = if history.len() >= 3 { 2 } else { 1 };
        history.drain(..drop);
        eprintln!("(context full: the oldest turn was dropped from the conversation)");
    }
}
