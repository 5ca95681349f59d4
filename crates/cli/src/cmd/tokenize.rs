//! `ferrollama tokenize`: token ids and pieces of a text, as llama-tokenize prints them.

use anyhow::Result;

use crate::args::ModelArgs;
use crate::load::tokenizer;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print the ids as a JSON list of ints.
    #[arg(long)]
    pub json: bool,
    /// Treat special-token text such as `<|im_start|>` as plain text.
    #[arg(long)]
    pub no_parse_special: bool,
    /// Do not add BOS/EOS even when the vocabulary asks for them.
    #[arg(long)]
    pub no_add_special: bool,
    /// The text to tokenize.
    pub text: String,
}

pub fn run(a: Args) -> Result<()> {
    a.model.no_adapters("tokenize")?;
    let (_, tok, _) = tokenizer(&a.model)?;
    let ids = tok.encode(&a.text, !a.no_add_special, !a.no_parse_special);
    if a.json {
        println!("{}", serde_json::to_string(&ids)?);
        return Ok(());
    }
    for id in ids {
        let piece = tok.token_to_piece(id, true)?;
        println!("{id:6} -> '{}'", String::from_utf8_lossy(&piece));
    }
    Ok(())
}
