//! The bodies of the fuzz targets: each takes arbitrary bytes, turns them into the input one
//! parser of untrusted data sees (a model file, a tokenizer, a chat template, a request, a
//! grammar, an adapter) and drives that parser and what follows it the way the program
//! does. A target may only return: errors are the expected answer to hostile input, while a
//! panic, an abort, a leak, a timeout or an allocation past the fuzzer's limit is a finding.
//!
//! The cargo-fuzz binaries under `fuzz/` are one line each around [`run`]; the tests of this
//! crate replay the seed corpora and every past finding (`regressions/`) through the same
//! functions on the stable toolchain, so a fixed finding stays fixed in CI.
//!
//! Multi-file inputs (a checkpoint directory, an adapter) are [`parts::Parts`]: length-
//! prefixed byte strings, written to a scratch directory that lives as long as the process.

pub mod parts;
pub mod scratch;

mod grammar;
mod lora;
mod model_files;
mod server;
mod template;
mod tokenizer;

/// A fuzz target: its name (the cargo-fuzz binary's) and its body.
pub struct Target {
    pub name: &'static str,
    pub what: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order the fuzzing script runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "gguf",
        what: "a GGUF model file: header, metadata, tensor infos and data, then the model, its tokenizer and chat template loaded from it and run",
        run: model_files::gguf,
    },
    Target {
        name: "safetensors",
        what: "a Hugging Face checkpoint directory: config.json, model.safetensors or shards with their index, loaded and run",
        run: model_files::safetensors,
    },
    Target {
        name: "tokenizer_json",
        what: "tokenizer.json (+ tokenizer_config.json) loaded, then text encoded and decoded",
        run: tokenizer::tokenizer_json,
    },
    Target {
        name: "tokenizer_model",
        what: "a SentencePiece tokenizer.model (protobuf) loaded, then text encoded and decoded",
        run: tokenizer::tokenizer_model,
    },
    Target {
        name: "tokenize",
        what: "encode/decode round trips of any text through each tokenizer kind (llama.cpp's SPM and BPE vocabularies, the default model's)",
        run: tokenizer::round_trips,
    },
    Target {
        name: "chat_template",
        what: "a Jinja chat template and hostile messages, rendered as chat and training do",
        run: template::chat_template,
    },
    Target {
        name: "server_request",
        what: "request bodies of every endpoint parsed and turned into generation settings, messages rendered, grammars compiled",
        run: server::request,
    },
    Target {
        name: "gbnf",
        what: "a GBNF grammar parsed, then bytes fed through its matcher and token masks",
        run: grammar::gbnf,
    },
    Target {
        name: "json_schema",
        what: "a JSON Schema turned into GBNF, parsed and followed",
        run: grammar::json_schema,
    },
    Target {
        name: "lora_adapter",
        what: "a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) attached to a small model and run",
        run: lora::adapter,
    },
];

/// The target with this name.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Runs the target `name` on `data`; an unknown name panics (a harness mistake, not input).
pub fn run(name: &str, data: &[u8]) {
    match target(name) {
        Some(t) => (t.run)(data),
        None => panic!("no fuzz target named `{name}`"),
    }
}

/// Makes the calling thread the only thread of rayon's global pool, so the model's parallel
/// loops run inline on it. The fuzz harnesses (one thread per process) call it first: from
/// outside a pool every parallel loop hands its work to a pool thread and waits for it, and
/// those wake-ups cost a third of each small forward pass. Not for multi-threaded callers
/// (tests): work sent from other threads would wait until this thread enters rayon.
pub fn run_parallel_loops_inline() {
    // An error means the global pool already exists; the harness then runs as it is.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build_global();
}
