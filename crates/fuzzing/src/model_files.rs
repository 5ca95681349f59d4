//! Model files from strangers: a GGUF file, and a Hugging Face checkpoint directory.

use ferrollama_generate::chat::render_template;
use ferrollama_generate::{Bundle, Message, OpenOptions};
use ferrollama_gguf::reader::tensor_size;
use ferrollama_gguf::safetensors::SafetensorsDir;
use ferrollama_gguf::Gguf;
use ferrollama_model::hf::{config_from_hf, HfWeights};
use ferrollama_model::Llama;

use crate::{parts, scratch};

/// A GGUF file: the header must keep its promises (every tensor inside the file, sized by
/// its type and dims); every metadata getter answers; then the file is opened as `run` and
/// `serve` open it (config, tokenizer, weights, template) and, if that succeeds, a few
/// tokens run through the model and the template renders.
pub fn gguf(data: &[u8]) {
    let Ok(header) = Gguf::parse(data, "fuzz.gguf") else {
        return;
    };
    for t in &header.tensors {
        let end = header
            .data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.size));
        assert!(
            end.is_some_and(|e| e <= data.len() as u64),
            "tensor `{}` reaches past the file",
            t.name
        );
        assert_eq!(
            tensor_size(&t.dims, t.ggml_type),
            Some(t.size),
            "{}",
            t.name
        );
    }
    for (key, _) in &header.metadata {
        let _ = header.get_u64(key);
        let _ = header.get_f32(key);
        let _ = header.get_str(key);
        let _ = header.get_bool(key);
        let _ = header.get_str_array(key);
        let _ = header.get_f32_array(key);
        let _ = header.get_i64_array(key);
    }
    let path = scratch::write(&[("model.gguf", data)]).join("model.gguf");
    let opts = OpenOptions {
        ctx: Some(16),
        pack_cache_dir: None,
        ..OpenOptions::default()
    };
    if let Ok(bundle) = Bundle::open(&path, &opts) {
        exercise(&bundle.model, bundle.n_ctx);
        let tok = &bundle.tokenizer;
        let ids = tok.encode("Hello, world! 123", true, false);
        let _ = tok.decode(&ids, false);
        if let Some(t) = &bundle.chat_template {
            let _ = render_template(t, &[Message::new("user", "hi")], tok);
        }
    }
}

/// A checkpoint directory: `config.json`, `model.safetensors`, an index and a second shard
/// (each part may be absent). Every tensor's bytes must match its shape and type; the
/// config and weights are then loaded as `convert` and `run` load them.
pub fn safetensors(data: &[u8]) {
    let p = parts::split(data, 4);
    let dir = scratch::write(&[
        ("config.json", p[0]),
        ("model.safetensors", p[1]),
        ("model.safetensors.index.json", p[2]),
        ("model-00002-of-00002.safetensors", p[3]),
    ]);
    if let Ok(st) = SafetensorsDir::open(&dir) {
        let names: Vec<String> = st.names().map(String::from).collect();
        for name in names {
            if let Ok(t) = st.tensor(&name) {
                let want = t
                    .shape
                    .iter()
                    .try_fold(t.dtype.size(), |n, &d| n.checked_mul(d));
                assert_eq!(want, Some(t.data.len()), "tensor `{name}`");
            }
        }
    }
    let Ok(cfg) = config_from_hf(&dir) else {
        return;
    };
    let Ok(weights) = HfWeights::open(&dir, cfg.clone()) else {
        return;
    };
    if let Ok(model) = Llama::load(&weights, cfg, 16) {
        exercise(&model, 16);
    }
}

/// A model that loaded runs: two tokens in, logits out (the ids inside its vocabulary).
fn exercise(model: &Llama, n_ctx: usize) {
    let vocab = model.config.vocab_size as u32;
    let ids = [1 % vocab, 2 % vocab];
    let mut cache = model.new_cache(n_ctx.min(16));
    if let Ok(logits) = model.forward(&ids, &mut cache, 1) {
        assert_eq!(logits.width(), vocab as usize);
    }
}
