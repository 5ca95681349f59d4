//! The weights of a Llama as its [`Config`] implies them: each tensor's Hugging Face name,
//! shape and part. Loading, training, export and conversion all ask this module for names
//! and shapes; apart from the GGUF <-> HF map in `ferrollama_gguf::names`, no other file
//! spells a tensor name.

use crate::config::Config;

/// What a weight is in the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Part {
    /// Token embedding (vocab, hidden); the output projection too when tied.
    Embedding,
    /// RMSNorm gain before attention.
    AttnNorm,
    Query,
    Key,
    Value,
    /// Attention output projection (adds to the residual stream).
    AttnOutput,
    /// RMSNorm gain before the feed-forward layer.
    FfnNorm,
    Gate,
    Up,
    /// Feed-forward output projection (adds to the residual stream).
    Down,
    /// RMSNorm gain after the last block.
    FinalNorm,
    /// Output projection (vocab, hidden), absent when tied to the embedding.
    Head,
}

impl Part {
    /// The parts of one decoder block, in the order the block uses them.
    pub const LAYER: [Part; 9] = [
        Part::AttnNorm,
        Part::Query,
        Part::Key,
        Part::Value,
        Part::AttnOutput,
        Part::FfnNorm,
        Part::Gate,
        Part::Up,
        Part::Down,
    ];

    /// Whether every block has one.
    pub fn per_layer(self) -> bool {
        Self::LAYER.contains(&self)
    }

    /// RMSNorm gains (vectors; never quantized, no weight decay).
    pub fn is_norm(self) -> bool {
        matches!(self, Part::AttnNorm | Part::FfnNorm | Part::FinalNorm)
    }

    /// Projections whose output adds to the residual stream (scaled down at init).
    pub fn writes_residual(self) -> bool {
        matches!(self, Part::AttnOutput | Part::Down)
    }

    /// The HF name without the layer prefix and the `.weight` suffix.
    fn stem(self) -> &'static str {
        match self {
            Part::Embedding => "model.embed_tokens",
            Part::FinalNorm => "model.norm",
            Part::Head => "lm_head",
            Part::AttnNorm => "input_layernorm",
            Part::Query => "self_attn.q_proj",
            Part::Key => "self_attn.k_proj",
            Part::Value => "self_attn.v_proj",
            Part::AttnOutput => "self_attn.o_proj",
            Part::FfnNorm => "post_attention_layernorm",
            Part::Gate => "mlp.gate_proj",
            Part::Up => "mlp.up_proj",
            Part::Down => "mlp.down_proj",
        }
    }
}

/// The HF name of a weight outside the blocks (`Embedding`, `FinalNorm`, `Head`).
pub fn global_name(part: Part) -> String {
    debug_assert!(!part.per_layer(), "{part:?} belongs to a block");
    format!("{}.weight", part.stem())
}

/// The HF name of a weight of block `layer`.
pub fn layer_name(layer: usize, part: Part) -> String {
    debug_assert!(part.per_layer(), "{part:?} is not a block's");
    format!("model.layers.{layer}.{}.weight", part.stem())
}

/// The part and block of an HF weight name, or `None` for names outside the layout.
pub fn parse(name: &str) -> Option<(Part, Option<usize>)> {
    let stem = name.strip_suffix(".weight")?;
    if let Some(rest) = stem.strip_prefix("model.layers.") {
        let (layer, stem) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let part = Part::LAYER.into_iter().find(|p| p.stem() == stem)?;
        return Some((part, Some(layer)));
    }
    [Part::Embedding, Part::FinalNorm, Part::Head]
        .into_iter()
        .find(|p| p.stem() == stem)
        .map(|p| (p, None))
}

/// Shape of a part as stored (rows = outputs, columns = inputs; vectors for norms).
pub fn shape(cfg: &Config, part: Part) -> Vec<usize> {
    let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    match part {
        Part::Embedding | Part::Head => vec![v, h],
        Part::AttnNorm | Part::FfnNorm | Part::FinalNorm => vec![h],
        Part::Query => vec![q, h],
        Part::Key | Part::Value => vec![kv, h],
        Part::AttnOutput => vec![h, q],
        Part::Gate | Part::Up => vec![f, h],
        Part::Down => vec![h, f],
    }
}

/// The rotary heads whose rows a part holds (queries: attention heads, keys: KV heads),
/// or `None` for parts RoPE does not touch.
pub fn rotary_heads(cfg: &Config, part: Part) -> Option<usize> {
    match part {
        Part::Query => Some(cfg.num_attention_heads),
        Part::Key => Some(cfg.num_key_value_heads),
        _ => None,
    }
}

/// One weight of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub part: Part,
    /// The block, for per-layer parts.
    pub layer: Option<usize>,
}

/// Every weight `cfg` calls for, in llama.cpp's file order: the embedding, each block's
/// weights in the order the block uses them, the final norm, then the head (if untied).
pub fn tensors(cfg: &Config) -> Vec<TensorSpec> {
    let global = |part| TensorSpec {
        name: global_name(part),
        shape: shape(cfg, part),
        part,
        layer: None,
    };
    let mut out = vec![global(Part::Embedding)];
    for l in 0..cfg.num_hidden_layers {
        out.extend(Part::LAYER.into_iter().map(|part| TensorSpec {
            name: layer_name(l, part),
            shape: shape(cfg, part),
            part,
            layer: Some(l),
        }));
    }
    out.push(global(Part::FinalNorm));
    if !cfg.tie_word_embeddings {
        out.push(global(Part::Head));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_part_and_layer() {
        let mut cfg = Config::preset("260k").unwrap();
        cfg.tie_word_embeddings = false;
        let specs = tensors(&cfg);
        assert_eq!(specs.len(), 3 + 9 * cfg.num_hidden_layers);
        for s in &specs {
            assert_eq!(parse(&s.name), Some((s.part, s.layer)), "{}", s.name);
            assert!(ferrollama_gguf::names::hf_to_gguf(&s.name).is_some());
        }
        let count: usize = specs
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        assert_eq!(count as u64, cfg.num_parameters());
        assert_eq!(parse("model.rotary_emb.inv_freq"), None);
        assert_eq!(parse("model.layers.x.mlp.up_proj.weight"), None);
    }

    #[test]
    fn a_tied_head_is_not_a_tensor_of_its_own() {
        let cfg = Config::preset("260k").unwrap();
        assert!(cfg.tie_word_embeddings);
        assert!(tensors(&cfg).iter().all(|s| s.part != Part::Head));
        let count: usize = tensors(&cfg)
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        assert_eq!(count as u64, cfg.num_parameters());
    }
}
