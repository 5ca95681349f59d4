//! `ferrollama`: one binary to run, chat with, evaluate and convert Llama-family models.

mod args;
mod bandwidth;
mod cmd;
mod load;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferrollama",
    version,
    about = "Llama-family models in Rust: generate, chat, serve, evaluate, convert, train"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// One command is parsed per run: the size of the largest variant (train's flags) costs
// nothing, so it is not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Chat interactively (system prompt, multi-turn history, /reset, Ctrl-D to quit).
    Chat(cmd::chat::Args),
    /// Continue a prompt.
    Generate(cmd::generate::Args),
    /// Print the token ids and pieces of a text.
    Tokenize(cmd::tokenize::Args),
    /// Sentence embeddings from a BERT-family encoder (default all-MiniLM-L6-v2), one JSON
    /// line per text.
    Embed(cmd::embed::Args),
    /// Texts compared by their embeddings: nearest neighbours, the cosine matrix, or
    /// k-means clusters.
    Similar(cmd::similar::Args),
    /// Retrieval-augmented generation: index files into a store (SQLite), search it, and
    /// answer questions from what it finds, citing it.
    Rag(cmd::rag::Args),
    /// Print a model's architecture, parameter count and tensor types.
    Info(cmd::info::Args),
    /// Write the logits of every position of a prompt (f32, optionally with a LoRA
    /// adapter) as safetensors, for comparisons with other implementations.
    Logits(cmd::logits::Args),
    /// Perplexity of a text file, scored as llama.cpp's llama-perplexity scores it.
    Perplexity(cmd::perplexity::Args),
    /// Benchmarks (ARC, HellaSwag, MMLU, ... or lm-evaluation-harness task files), scored
    /// as lm-evaluation-harness scores them.
    Eval(cmd::eval::Args),
    /// Convert between GGUF and Hugging Face directories, and between weight types.
    Convert(cmd::convert::Args),
    /// Quantize a GGUF model (llama-quantize's job): the same as `convert IN OUT.gguf`.
    Quantize(cmd::convert::Args),
    /// Serve the model over an OpenAI-compatible HTTP API, with a chat page at /.
    Serve(cmd::serve::Args),
    /// Measure prompt processing and generation speed, as llama-bench does.
    Bench(cmd::bench::Args),
    /// Pretrain a model with the Llama 2 recipe (resumable; exports GGUF and HF at the end).
    Train(cmd::train::Args),
    /// Fine-tune a model on conversations (loss on the answers only, samples packed;
    /// resumable; exports GGUF and HF at the end).
    Sft(cmd::sft::Args),
    /// Align a model with preference pairs: DPO (or IPO), full or LoRA, against the model
    /// as it starts (resumable; exports GGUF and HF at the end).
    Dpo(cmd::dpo::Args),
    /// Reward models: train one on preference pairs, score conversations with it.
    #[command(subcommand)]
    Reward(cmd::reward::Command),
    /// The seminar's probes of linguistic knowledge: dependency analyses scored against a
    /// treebank and drawn.
    #[command(subcommand)]
    Probe(cmd::probe::Command),
    /// Rejection-sampling fine-tuning in rounds: K answers per prompt, scored by reward
    /// models, the best fine-tuned on; held-out reward and KL per round (resumable).
    Rs(Box<cmd::rs::Args>),
    /// PPO against reward models: a LoRA adapter and a value head trained on the policy's
    /// own answers, per-token KL penalty to the base; held-out reward and KL (resumable).
    Ppo(Box<cmd::ppo::Args>),
    /// Training data a model writes for itself: context distillation, Ghost Attention.
    #[command(subcommand)]
    Data(cmd::data::Command),
    /// Fold LoRA adapters into their base model (GGUF of any type), and compare the result
    /// with the unmerged model (perplexity, KL divergence).
    Merge(cmd::merge::Args),
    /// Write a training run's last checkpoint as GGUF and a Hugging Face directory.
    Export(cmd::train::ExportArgs),
    /// Tokenizer tools.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
}

#[derive(Subcommand)]
enum TokenizerCommand {
    /// Learn a SentencePiece-style BPE vocabulary (digits split, byte fallback) from text.
    Train(cmd::train::TokenizerTrainArgs),
}

fn main() {
    // Die quietly on a closed pipe (`ferrollama tokenize ... | head`), as Unix tools do,
    // instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // The forward pass runs on rayon's threads, and glibc gives each thread that allocates
    // its own heap arena, each keeping freed memory: peak RSS of `bench` on the default model
    // went from 209 to 248 MiB. Two arenas keep it at 209 MiB at no measurable speed cost.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Chat(a) => cmd::chat::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Embed(a) => cmd::embed::run(a),
        Command::Similar(a) => cmd::similar::run(a),
        Command::Rag(a) => cmd::rag::run(a),
        Command::Info(a) => cmd::info::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Quantize(a) => cmd::convert::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Sft(a) => cmd::sft::run(a),
        Command::Dpo(a) => cmd::dpo::run(a),
        Command::Reward(c) => cmd::reward::run(c),
        Command::Probe(c) => cmd::probe::run(c),
        Command::Rs(a) => cmd::rs::run(*a),
        Command::Ppo(a) => cmd::ppo::run(*a),
        Command::Data(c) => cmd::data::run(c),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Export(a) => cmd::train::export(a),
        Command::Tokenizer(TokenizerCommand::Train(a)) => cmd::train::tokenizer_train(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
