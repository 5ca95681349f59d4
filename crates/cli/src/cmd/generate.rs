//! `ferrollama generate`: continue a prompt, streaming the text, or print JSON.

use std::io::Write;

use anyhow::Result;
use ferrollama_generate::{ChatFormat, GenerateParams, Generator, Message};

use crate::args::{GrammarArgs, ModelArgs, SamplingArgs};
use crate::load::load;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub grammar: GrammarArgs,
    /// The text to continue.
    #[arg(short, long)]
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Stop when this string appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object (prompt ids, generated ids, text, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// Treat the prompt as a user message and answer it as `chat` would (the model's chat
    /// template, or Llama 2's format with --llama2-format); only the reply is printed.
    #[arg(long)]
    pub chat: bool,
    /// A system message, with --chat.
    #[arg(short, long, requires = "chat")]
    pub system: Option<String>,
    /// Llama 2's `[INST]` format instead of the model's template, with --chat.
    #[arg(long, requires = "chat")]
    pub llama2_format: bool,
}

pub fn run(a: Args) -> Result<()> {
    let m = load(&a.model)?;
    let prompt = if a.chat {
        let format = if a.llama2_format {
            ChatFormat::Llama2
        } else {
            ChatFormat::for_model(m.chat_template.as_deref())
        };
        let mut messages: Vec<Message> =
            a.system.iter().map(|s| Message::new("system", s)).collect();
        messages.push(Message::new("user", &a.prompt));
        format.encode(&messages, &m.tokenizer)?
    } else {
        m.tokenizer.encode(&a.prompt, true, true)
    };
    let params = GenerateParams {
        max_new_tokens: a.max_tokens,
        stop: a.stop.clone(),
        sampling: a.sampling.params(),
        ignore_eos: a.ignore_eos,
        grammar: a.grammar.constraint(&m.tokenizer)?,
    };
    let mut generator = Generator::new(&m.model, &m.tokenizer, m.n_ctx);
    let mut out = std::io::stdout().lock();
    let generation = if a.json {
        generator.generate(&prompt, &params, |_| true)?
    } else {
        if !a.chat {
            write!(out, "{}", a.prompt)?;
        }
        let g = generator.generate(&prompt, &params, |piece| {
            let _ = write!(out, "{piece}");
            out.flush().is_ok()
        })?;
        writeln!(out)?;
        g
    };
    let n = generation.ids.len();
    if a.json {
        let json = serde_json::json!({
            "model": m.path.display().to_string(),
            "prompt": a.prompt,
            "prompt_ids": prompt,
            "ids": generation.ids,
            "text": generation.text,
            "finish_reason": generation.finish_reason,
            "sampling": params.sampling,
            "prompt_ms": generation.prompt_ms,
            "generate_ms": generation.generate_ms,
        });
        writeln!(out, "{json}")?;
    } else {
        eprintln!(
            "[{} prompt tokens in {:.0} ms ({:.1} tok/s); {n} generated in {:.0} ms ({:.1} tok/s); finish: {:?}]",
            generation.prompt_tokens_evaluated,
            generation.prompt_ms,
            generation.prompt_tokens_evaluated as f64 / (generation.prompt_ms / 1e3),
            generation.generate_ms,
            n as f64 / (generation.generate_ms / 1e3).max(1e-9),
            generation.finish_reason
        );
    }
    Ok(())
}
