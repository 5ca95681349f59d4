//! Writes the seed corpora of the fuzz targets from real files: the tiny test model and its
//! adapter, the default model's chat template and tokenizer, llama.cpp's tokenizer test
//! strings and example grammars, a SentencePiece model, request bodies as clients send
//! them. Seeds are kept small (a fuzzer mutates every byte of its inputs), so the model
//! seeds are the tiny model cut down to one narrow block.
//!
//! `cargo run --release -p ferrollama-fuzzing --example seeds [-- DIR]` (default
//! `crates/fuzzing/seeds`, which is committed; see its README for sources and licences).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferrollama_fuzzing::parts::join;
use ferrollama_gguf::safetensors::{write_safetensors, StDtype, StOwned};
use ferrollama_gguf::{GgmlType, GgufFile, GgufWriter, TensorToWrite, Value};
use ferrollama_tokenizer::Tokenizer;

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("seeds"));
    let repo = root.join("../..");
    let tiny = repo.join("tests/data/tiny/tiny-260k-q8_0.gguf");
    let smol = ferrollama_assets::default_model()?;
    let smol_file = GgufFile::open(&smol)?;
    let template = smol_file
        .header
        .get_str("tokenizer.chat_template")?
        .to_string();

    let put = |target: &str, name: &str, bytes: &[u8]| -> Result<()> {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes).with_context(|| format!("{target}/{name}"))
    };

    // Model files: the tiny model narrowed to one block of width 16, its real vocabulary,
    // with the default model's chat template; the same weights as a Hugging Face directory.
    let micro = micro_gguf(&tiny, &template, &std::env::temp_dir().join("micro.gguf"))?;
    put("gguf", "micro-llama.gguf", &micro)?;
    let (config, shard) = micro_hf(&micro)?;
    put(
        "safetensors",
        "micro-single",
        &join(&[&config, &shard, b"", b""]),
    )?;
    let index = br#"{"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}"#;
    put(
        "safetensors",
        "micro-index",
        &join(&[&config, b"", index, &shard]),
    )?;

    // Tokenizer files: the tiny model's vocabulary exported as tokenizer.json (SPM-style),
    // the default model's config; a SentencePiece model trained with the library.
    let tiny_tok = Tokenizer::from_gguf_path(&tiny)?;
    let tj = tiny_tok.to_tokenizer_json();
    let tc = tiny_tok.to_tokenizer_config_json(Some(&template));
    put(
        "tokenizer_json",
        "tiny-spm",
        &join(&[tj.as_bytes(), tc.as_bytes(), b"Hello world 42"]),
    )?;
    let spm = std::fs::read(repo.join("crates/tokenizer/tests/data/spm-bpe-1k.model"))?;
    put(
        "tokenizer_model",
        "spm-bpe-1k",
        &join(&[&spm, b"Hello world 42"]),
    )?;

    // Text: llama.cpp's tokenizer test strings.
    let inp = std::fs::read_to_string(
        repo.join("crates/tokenizer/tests/data/ggml-vocab-llama-spm.gguf.inp"),
    )?;
    for (i, case) in inp.split("\n__ggml_vocab_test__\n").enumerate() {
        put("tokenize", &format!("llama-spm-{i:02}"), case.as_bytes())?;
    }

    // Chat templates: the default model's, Llama 2's as Meta's tokenizer_config has it.
    let conversation =
        "system\0Be brief.\0user\0Hi <|im_end|> [INST]\0assistant\0Hello!\0user\0And?";
    put(
        "chat_template",
        "smollm2",
        format!("{template}\0{conversation}").as_bytes(),
    )?;
    put(
        "chat_template",
        "llama2",
        format!("{LLAMA2_TEMPLATE}\0{conversation}").as_bytes(),
    )?;

    // Requests as clients send them (the first byte picks the endpoint).
    for (i, (kind, body)) in REQUESTS.iter().enumerate() {
        let mut b = vec![*kind];
        b.extend_from_slice(body.as_bytes());
        put("server_request", &format!("request-{i:02}"), &b)?;
    }

    // Grammars: llama.cpp's examples, each with a text it accepts or nearly does.
    let grammars = root.join("../grammar/tests/data/llama-cpp-grammars");
    for (name, text) in GRAMMAR_TEXTS {
        let g = std::fs::read_to_string(grammars.join(format!("{name}.gbnf")))?;
        put("gbnf", name, format!("{g}\0{text}").as_bytes())?;
    }
    for (i, schema) in SCHEMAS.iter().enumerate() {
        put("json_schema", &format!("schema-{i:02}"), schema.as_bytes())?;
    }

    // The tiny model's adapter.
    let lora = repo.join("tests/data/tiny/lora-r4");
    put(
        "lora_adapter",
        "lora-r4",
        &join(&[
            &std::fs::read(lora.join("adapter_config.json"))?,
            &std::fs::read(lora.join("adapter_model.safetensors"))?,
        ]),
    )?;
    println!("seeds written to {}", out.display());
    Ok(())
}

/// Widths of the tiny model and what they become: width 64 -> 16, KV width 32 -> 8, FFN
/// 172 -> 24 (heads 8 -> 2, KV heads 4 -> 1, head width 8 stays).
fn narrow(d: u64) -> u64 {
    match d {
        64 => 16,
        32 => 8,
        172 => 24,
        other => other,
    }
}

/// The tiny model with one block, narrowed; f32 norms and f16 matrices of small values.
fn micro_gguf(tiny: &Path, template: &str, path: &Path) -> Result<Vec<u8>> {
    let file = GgufFile::open(tiny)?;
    let mut w = GgufWriter::new();
    for (key, value) in &file.header.metadata {
        w.set(key, value.clone());
    }
    for (key, v) in [
        ("llama.block_count", 1),
        ("llama.embedding_length", 16),
        ("llama.feed_forward_length", 24),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 1),
        ("llama.context_length", 64),
    ] {
        w.set(key, Value::U32(v));
    }
    w.set("tokenizer.chat_template", Value::String(template.into()));
    for t in &file.header.tensors {
        if t.name.starts_with("blk.") && !t.name.starts_with("blk.0.") {
            continue;
        }
        let ggml_type = if t.dims.len() == 1 {
            GgmlType::F32
        } else {
            GgmlType::F16
        };
        w.add_tensor(TensorToWrite {
            name: t.name.clone(),
            dims: t.dims.iter().map(|&d| narrow(d)).collect(),
            ggml_type,
        });
    }
    w.write(path, |i, t| {
        let n: u64 = t.dims.iter().product();
        let value = |j: u64| ((j * 7 + i as u64 * 13) % 17) as f32 / 17.0 - 0.5;
        Ok(match t.ggml_type {
            GgmlType::F32 => (0..n)
                .flat_map(|j| (1.0 + 0.1 * value(j)).to_le_bytes())
                .collect(),
            _ => (0..n)
                .flat_map(|j| half::f16::from_f32(0.2 * value(j)).to_le_bytes())
                .collect(),
        })
    })?;
    Ok(std::fs::read(path)?)
}

/// The micro model as a Hugging Face checkpoint: `config.json` and `model.safetensors`.
fn micro_hf(micro: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let path = std::env::temp_dir().join("micro-for-hf.gguf");
    std::fs::write(&path, micro)?;
    let file = GgufFile::open(&path)?;
    let cfg = ferrollama_model::Config::from_gguf(&file)?;
    let config =
        serde_json::to_vec_pretty(&ferrollama_model::hf::config_to_hf(&cfg, Some(1), Some(2)))?;
    let mut tensors = Vec::new();
    for t in &file.header.tensors {
        let Some(hf) = ferrollama_gguf::names::gguf_to_hf(&t.name) else {
            continue;
        };
        let data = file.tensor_data(t).to_vec();
        let dtype = if t.ggml_type == GgmlType::F32 {
            StDtype::F32
        } else {
            StDtype::F16
        };
        tensors.push(StOwned {
            name: hf,
            dtype,
            shape: t.shape(),
            data,
        });
    }
    let st = std::env::temp_dir().join("micro.safetensors");
    write_safetensors(&st, &tensors)?;
    Ok((config, std::fs::read(&st)?))
}

const LLAMA2_TEMPLATE: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

const REQUESTS: &[(u8, &str)] = &[
    (
        0,
        r#"{"model":"default","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":16,"temperature":0.7,"top_p":0.9,"stop":["\n"],"n":2,"logprobs":true,"top_logprobs":3,"stream":true,"stream_options":{"include_usage":true}}"#,
    ),
    (
        0,
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"array","items":{"type":"string"},"maxItems":3}},"required":["a"]}}}}"#,
    ),
    (
        0,
        r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"},"seed":-1,"repeat_penalty":1.1,"repeat_last_n":-1,"top_k":40,"min_p":0.05,"rag":{"k":3,"method":"hybrid"}}"#,
    ),
    (
        1,
        r#"{"prompt":"Once upon a time","max_tokens":8,"logprobs":2,"echo":true,"grammar":"root ::= [a-z]+ \".\"","presence_penalty":0.5,"frequency_penalty":0.5}"#,
    ),
    (
        1,
        r#"{"prompt":[[1,2,3],[4,5]],"n":3,"ignore_eos":true,"json_schema":{"enum":["yes","no"]}}"#,
    ),
    (
        2,
        r#"{"input":["hello","world"],"encoding_format":"base64","dimensions":8}"#,
    ),
];

const GRAMMAR_TEXTS: &[(&str, &str)] = &[
    ("arithmetic", "(1+2)*x3=4\n"),
    ("json", "{\"a\": [1, 2.5e3, \"x\\u00e9\"], \"b\": null}"),
    ("json_arr", "[\n{\"a\": true},\n{}]"),
    ("list", "- one\n- two\n"),
    ("chess", "1. e4 e5\n2. Nf3 Nc6\n"),
    ("english", "The cat sat on the mat."),
    ("japanese", "こんにちは、世界。"),
    ("c", "int main(){return 0;}"),
];

const SCHEMAS: &[&str] = &[
    r#"{"type":"object","properties":{"name":{"type":"string","minLength":1,"maxLength":8},"age":{"type":"integer"},"tags":{"type":"array","items":{"enum":["a","b"]},"minItems":1,"maxItems":3}},"required":["name"],"additionalProperties":false}"#,
    r##"{"$defs":{"node":{"type":"object","properties":{"v":{"type":"number"},"kids":{"type":"array","items":{"$ref":"#/$defs/node"}}}}},"$ref":"#/$defs/node"}"##,
    r#"{"anyOf":[{"type":"boolean"},{"const":"x"},{"type":"null"},{"type":"array","items":{"type":"integer"}}]}"#,
    r#"{"type":"object","additionalProperties":{"type":"string"}}"#,
];
