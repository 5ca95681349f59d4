//! Tensor names: llama.cpp's GGUF names (`blk.3.attn_q.weight`) and the Hugging Face names
//! the model code uses (`model.layers.3.self_attn.q_proj.weight`). The one place both
//! spellings live, so nobody else hard-codes either.

/// GGUF name -> HF name for per-layer tensors (the `blk.N.` / `model.layers.N.` part aside).
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// The HF name of a GGUF tensor name, or `None` for names outside the Llama layout.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if let Some(rest) = stem.strip_prefix("blk.") {
        let (layer, part) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let hf = LAYER_NAMES.iter().find(|(g, _)| *g == part)?.1;
        return Some(format!("model.layers.{layer}.{hf}.{suffix}"));
    }
    let hf = GLOBAL_NAMES.iter().find(|(g, _)| *g == stem)?.1;
    Some(format!("{hf}.{suffix}"))
}

/// The GGUF name of an HF tensor name, or `None` for names outside the Llama layout.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if let Some(rest) = stem.strip_prefix("model.layers.") {
        let (layer, part) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let g = LAYER_NAMES.iter().find(|(_, h)| *h == part)?.0;
        return Some(format!("blk.{layer}.{g}.{suffix}"));
    }
    let g = GLOBAL_NAMES.iter().find(|(_, h)| *h == stem)?.0;
    Some(format!("{g}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (g, h) in [
            (
                "blk.12.attn_q.weight",
                "model.layers.12.self_attn.q_proj.weight",
            ),
            (
                "blk.0.ffn_down.weight",
                "model.layers.0.mlp.down_proj.weight",
            ),
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output.weight", "lm_head.weight"),
            ("output_norm.weight", "model.norm.weight"),
        ] {
            assert_eq!(gguf_to_hf(g).as_deref(), Some(h));
            assert_eq!(hf_to_gguf(h).as_deref(), Some(g));
        }
        assert_eq!(gguf_to_hf("blk.x.attn_q.weight"), None);
        assert_eq!(hf_to_gguf("model.rotary_emb.inv_freq"), None);
    }
}
