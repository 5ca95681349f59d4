//! `ferrollama info`: architecture, parameter count, tensor types and sizes of a model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrollama_gguf::GgufFile;
use ferrollama_model::Config;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A GGUF file (the default model if omitted).
    pub model: Option<PathBuf>,
    /// Also list every tensor.
    #[arg(long)]
    pub tensors: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let path = match a.model {
        Some(p) => p,
        None => ferrollama_assets::default_model()?,
    };
    let file = GgufFile::open(&path).with_context(|| format!("loading {}", path.display()))?;
    let h = &file.header;
    let config = Config::from_gguf(&file).with_context(|| format!("reading {}", path.display()))?;
    let mut by_type: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    let mut params = 0u64;
    for t in &h.tensors {
        let e = by_type.entry(t.ggml_type.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.elements();
        e.2 += t.size;
        params += t.elements();
    }
    let bytes: u64 = h.tensors.iter().map(|t| t.size).sum();
    if a.json {
        let types: BTreeMap<_, _> = by_type
            .iter()
            .map(|(k, (n, el, b))| {
                (
                    k.clone(),
                    serde_json::json!({"tensors": n, "elements": el, "bytes": b}),
                )
            })
            .collect();
        let json = serde_json::json!({
            "file": path.display().to_string(),
            "gguf_version": h.version,
            "name": h.get_str("general.name").ok(),
            "config": config,
            "parameters": params,
            "tensor_bytes": bytes,
            "tensor_types": types,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!("file:          {} (GGUF v{})", path.display(), h.version);
    if let Ok(name) = h.get_str("general.name") {
        println!("name:          {name}");
    }
    println!(
        "architecture:  llama, {} layers, hidden {}, FFN {}",
        config.num_hidden_layers, config.hidden_size, config.intermediate_size
    );
    println!(
        "attention:     {} query heads, {} KV heads ({}), head dim {}",
        config.num_attention_heads,
        config.num_key_value_heads,
        match config.n_rep() {
            1 => "MHA".to_string(),
            r if config.num_key_value_heads == 1 => format!("MQA, {r} per KV head"),
            r => format!("GQA, {r} per KV head"),
        },
        config.head_dim
    );
    println!(
        "rope:          base {}, linear scale {}",
        config.rope_theta, config.rope_scaling_factor
    );
    println!("norm eps:      {}", config.rms_norm_eps);
    println!("context:       {}", config.max_position_embeddings);
    println!(
        "vocabulary:    {} ({})",
        config.vocab_size,
        h.get_str("tokenizer.ggml.model").unwrap_or("?")
    );
    println!(
        "tied output:   {}",
        if config.tie_word_embeddings {
            "yes"
        } else {
            "no"
        }
    );
    println!("parameters:    {params} ({:.1} M)", params as f64 / 1e6);
    println!(
        "tensor bytes:  {bytes} ({:.1} MiB)",
        bytes as f64 / (1 << 20) as f64
    );
    for (ty, (n, el, b)) in &by_type {
        println!(
            "  {ty:>6}: {n:4} tensors, {el:>11} elements, {:>8.1} MiB",
            *b as f64 / (1 << 20) as f64
        );
    }
    if a.tensors {
        for t in &h.tensors {
            println!("{:40} {:6} {:?}", t.name, t.ggml_type.name(), t.shape());
        }
    }
    Ok(())
}
