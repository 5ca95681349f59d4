//! `ferrollama`: one binary to run, chat with, evaluate and convert Llama-family models.

mod args;
mod cmd;
mod load;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferrollama", version, about = "Llama-family models in Rust: generate, chat, evaluate, convert")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat interactively (system prompt, multi-turn history, /reset, Ctrl-D to quit).
    Chat(cmd::chat::Args),
    /// Continue a prompt.
    Generate(cmd::generate::Args),
    /// Print the token ids and pieces of a text.
    Tokenize(cmd::tokenize::Args),
    /// Print a model's architecture, parameter count and tensor types.
    Info(cmd::info::Args),
    /// Perplexity of a text file, scored as llama.cpp's llama-perplexity scores it.
    Perplexity(cmd::perplexity::Args),
    /// Re-encode a GGUF model's weights (f32, f16, q8_0, q4_0, q4_1, ...).
    Convert(cmd::convert::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Chat(a) => cmd::chat::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Info(a) => cmd::info::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Convert(a) => cmd::convert::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
