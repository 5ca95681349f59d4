//! BERT from GGUF. A file in llama.cpp's layout (its converter's names, metadata and
//! phantom-space vocabulary, f16 weights) is written here from all-MiniLM-L6-v2's
//! directory, since CI has no torch for llama.cpp's own converter; `benches/bert_gguf.py`
//! runs that converter and llama.cpp itself. The GGUF reads as the same tokenizer (ids
//! equal) and nearly the same vectors (f16 weights); damaged files are errors.

use std::path::{Path, PathBuf};

use ferrollama_embed::Embedder;
use ferrollama_gguf::{GgmlType, GgufWriter, TensorToWrite, Value, ValueType};

fn model_dir() -> PathBuf {
    ferrollama_assets::default_embedding_model().expect("fetching all-MiniLM-L6-v2")
}

/// Hugging Face name -> llama.cpp name, as `convert_hf_to_gguf.py` maps BERT.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = [
        ("embeddings.word_embeddings.weight", "token_embd.weight"),
        (
            "embeddings.position_embeddings.weight",
            "position_embd.weight",
        ),
        (
            "embeddings.token_type_embeddings.weight",
            "token_types.weight",
        ),
        ("embeddings.LayerNorm.weight", "token_embd_norm.weight"),
        ("embeddings.LayerNorm.bias", "token_embd_norm.bias"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("encoder.layer.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, part) = rest.rsplit_once('.')?;
    let ours = match module {
        "attention.self.query" => "attn_q",
        "attention.self.key" => "attn_k",
        "attention.self.value" => "attn_v",
        "attention.output.dense" => "attn_output",
        "attention.output.LayerNorm" => "attn_output_norm",
        "intermediate.dense" => "ffn_up",
        "output.dense" => "ffn_down",
        "output.LayerNorm" => "layer_output_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{ours}.{part}"))
}

/// Writes `dir` as a BERT GGUF in llama.cpp's layout, 2-D weights as f16.
fn write_gguf(dir: &Path, out: &Path) {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let special: Vec<u64> = tok["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    let types: Vec<i32> = (0..tokens.len())
        .map(|i| if special.contains(&(i as u64)) { 3 } else { 1 })
        .collect();
    let phantom: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .map(|(t, &ty)| {
            Value::String(if ty == 3 {
                t.clone()
            } else if let Some(c) = t.strip_prefix("##") {
                c.to_string()
            } else {
                format!("\u{2581}{t}")
            })
        })
        .collect();
    let u = |k: &str| Value::U32(cfg[k].as_u64().unwrap() as u32);
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("bert".into()));
    w.set("bert.block_count", u("num_hidden_layers"));
    w.set("bert.context_length", u("max_position_embeddings"));
    w.set("bert.embedding_length", u("hidden_size"));
    w.set("bert.feed_forward_length", u("intermediate_size"));
    w.set("bert.attention.head_count", u("num_attention_heads"));
    w.set("bert.attention.layer_norm_epsilon", Value::F32(1e-12));
    w.set("bert.attention.causal", Value::Bool(false));
    w.set("bert.pooling_type", Value::U32(1));
    w.set("tokenizer.ggml.token_type_count", Value::U32(2));
    w.set("tokenizer.ggml.model", Value::String("bert".into()));
    w.set(
        "tokenizer.ggml.tokens",
        Value::Array(ValueType::String, phantom),
    );
    w.set(
        "tokenizer.ggml.token_type",
        Value::Array(
            ValueType::I32,
            types.iter().map(|&t| Value::I32(t)).collect(),
        ),
    );
    w.set("tokenizer.ggml.bos_token_id", Value::U32(101));
    w.set("tokenizer.ggml.eos_token_id", Value::U32(102));
    w.set("tokenizer.ggml.unknown_token_id", Value::U32(100));
    w.set("tokenizer.ggml.seperator_token_id", Value::U32(102));
    w.set("tokenizer.ggml.normalizer.lowercase", Value::Bool(true));
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut data = Vec::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for hf in names {
        let Some(g) = gguf_name(hf) else { continue };
        let t = &tensors[hf];
        let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let two_d = t.dims().len() == 2;
        let bytes: Vec<u8> = if two_d {
            values
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect()
        } else {
            values.iter().flat_map(|x| x.to_le_bytes()).collect()
        };
        w.add_tensor(TensorToWrite {
            name: g,
            dims: t.dims().iter().rev().map(|&d| d as u64).collect(),
            ggml_type: if two_d { GgmlType::F16 } else { GgmlType::F32 },
        });
        data.push(bytes);
    }
    w.write(out, |i, _| Ok(data[i].clone())).unwrap();
}

#[test]
fn a_bert_gguf_reads_as_its_directory_does_and_damage_is_an_error() {
    let dir = model_dir();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("minilm-f16.gguf");
    write_gguf(&dir, &file);
    let from_dir = Embedder::open(&dir).unwrap();
    let from_gguf = Embedder::open(&file).unwrap();
    assert_eq!(from_gguf.name(), "minilm-f16");
    assert!(from_gguf.normalize);
    let texts = [
        "A man is eating food.",
        "Héllo Wörld! [CLS] naïve café",
        "北京是中国的首都",
        "unbelievably-long-hyphenated_word_with_underscores 12345.678",
        "Which organelle turns sugar into energy for the cell?",
    ];
    for t in texts {
        assert_eq!(
            from_gguf.token_ids(t).unwrap(),
            from_dir.token_ids(t).unwrap(),
            "{t}"
        );
    }
    let a = from_dir.embed(&texts, 8).unwrap();
    let b = from_gguf.embed(&texts, 8).unwrap();
    for (x, y) in a.iter().zip(&b) {
        let c = ferrollama_embed::cosine(x, y);
        assert!(c > 0.9999, "cosine {c} with f16 weights");
    }

    // Damage: cut anywhere; another architecture.
    let bytes = std::fs::read(&file).unwrap();
    for cut in [8, 100, 5000, bytes.len() / 2, bytes.len() - 1] {
        let p = work.path().join("cut.gguf");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(Embedder::open(&p).is_err(), "cut at {cut}");
    }
    let p = work.path().join("llama.gguf");
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.write(&p, |_, _| Ok(Vec::new())).unwrap();
    let e = Embedder::open(&p)
        .err()
        .expect("a llama file opened")
        .to_string();
    assert!(e.contains("bert"), "{e}");
}
