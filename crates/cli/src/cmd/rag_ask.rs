//! `ferrollama rag ask`: the chunks found for a question, numbered, put before it in a
//! chat turn; the model answers and cites them; the sources are printed after the answer.

use std::io::Write;

use anyhow::Result;
use ferrollama_generate::{ChatFormat, GenerateParams, Generator, Message};
use ferrollama_rag::prompt::{user_turn, SYSTEM};

use super::rag::{describe_hit, AskArgs};
use crate::load::load;

pub fn run(a: AskArgs) -> Result<()> {
    let (store, embedder) = a.store.open()?;
    if store.stats()?.chunks == 0 {
        anyhow::bail!(
            "the store {} holds no chunks: `ferrollama rag index` first",
            store.describe()
        );
    }
    let mut hits = ferrollama_rag::search(store.as_ref(), &embedder, &a.question, a.method, a.k)?;
    if hits.is_empty() {
        anyhow::bail!("no chunk matches the question (method {:?})", a.method);
    }
    let m = load(&a.model)?;
    let format = ChatFormat::for_model(m.chat_template.as_deref());
    // Room for the answer, but never more than a quarter of the context.
    let room = m.n_ctx.saturating_sub(a.max_tokens.min(m.n_ctx / 4).max(1));
    let prompt = loop {
        let messages = [
            Message::new("system", SYSTEM),
            Message::new("user", &user_turn(&a.question, &hits)),
        ];
        let prompt = format.encode(&messages, &m.tokenizer)?;
        if prompt.len() <= room {
            break prompt;
        }
        if hits.len() == 1 {
            anyhow::bail!(
                "the question with one source is {} tokens; the context holds {} (with {} for the answer)",
                prompt.len(),
                m.n_ctx,
                m.n_ctx - room
            );
        }
        hits.pop();
        eprintln!("(context full: {} sources given, not {})", hits.len(), a.k);
    };
    let params = GenerateParams {
        max_new_tokens: a.max_tokens,
        sampling: a.sampling.params(),
        ..GenerateParams::default()
    };
    let mut generator = Generator::new(&m.model, &m.tokenizer, m.n_ctx);
    let mut out = std::io::stdout().lock();
    let answer = generator.generate(&prompt, &params, |piece| {
        // With --json the answer is printed whole at the end.
        a.json || (write!(out, "{piece}").is_ok() && out.flush().is_ok())
    })?;
    if a.json {
        let v = serde_json::json!({
            "question": a.question,
            "answer": answer.text.trim(),
            "sources": hits,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(out, "\n\nSources:")?;
    for (i, h) in hits.iter().enumerate() {
        writeln!(out, "{}", describe_hit(i + 1, h))?;
    }
    Ok(())
}
