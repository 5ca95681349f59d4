//! Hyper-parameters of a Llama model, from GGUF metadata or a named preset.

use ferrollama_gguf::{GgmlType, GgufFile, Value};

use crate::error::{Error, Result};

/// Llama 3.1's RoPE scaling as config.json states it (transformers' `rope_scaling` of type
/// `llama3`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Llama3Rope {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// The shape of a Llama-architecture decoder.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    pub vocab_size: usize,
    /// Width of the residual stream (`n_embd`).
    pub hidden_size: usize,
    /// Width of the SwiGLU feed-forward layer.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Fewer than `num_attention_heads` means grouped-query attention; 1 is MQA.
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    /// Linear RoPE scaling: positions are divided by this factor (1.0 = none).
    pub rope_scaling_factor: f32,
    /// Per-frequency divisors (head_dim / 2 of them), Llama 3.1's RoPE scaling: GGUF's
    /// `rope_freqs.weight`, or computed from `rope_scaling` of type `llama3` in config.json.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_freq_factors: Option<Vec<f32>>,
    /// The parameters `rope_freq_factors` were computed from, when the checkpoint stated
    /// them (config.json's `rope_scaling` of type `llama3`); a Hugging Face export needs
    /// them, since config.json cannot state the factors themselves. GGUF files keep only
    /// the factors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_llama3: Option<Llama3Rope>,
    /// Context the model was trained for.
    pub max_position_embeddings: usize,
    /// The output projection reuses the token embedding.
    pub tie_word_embeddings: bool,
}

impl Config {
    /// Reads a `llama`-architecture configuration from GGUF metadata (and the
    /// `rope_freqs.weight` tensor if present), checking it is consistent (heads divide the
    /// width, KV heads divide the heads).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let g = &file.header;
        let arch = g.get_str("general.architecture")?;
        let unsupported = |msg: String| Error::Unsupported {
            file: g.file.clone(),
            msg,
        };
        if arch != "llama" {
            return Err(unsupported(format!(
                "architecture `{arch}` is not supported (only `llama`)"
            )));
        }
        let key = |k: &str| format!("llama.{k}");
        let usize_key = |k: &str| -> Result<usize> {
            let v = g.get_u64(&key(k))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v < 1 << 24)
                .ok_or_else(|| unsupported(format!("`llama.{k}` = {v} is out of range")))
        };
        let hidden_size = usize_key("embedding_length")?;
        let num_attention_heads = usize_key("attention.head_count")?;
        let num_key_value_heads = match g.get(&key("attention.head_count_kv")) {
            Some(_) => usize_key("attention.head_count_kv")?,
            None => num_attention_heads,
        };
        let head_dim = match g.get(&key("attention.key_length")) {
            Some(_) => usize_key("attention.key_length")?,
            None => hidden_size / num_attention_heads,
        };
        let vocab_size = match g.get(&key("vocab_size")) {
            Some(_) => usize_key("vocab_size")?,
            None => g
                .tensor_info("token_embd.weight")?
                .dims
                .get(1)
                .copied()
                .unwrap_or(0) as usize,
        };
        // An absent key takes llama.cpp's default; a present key of the wrong type is an error.
        let f32_or = |k: &str, default: f32| -> Result<f32> {
            match g.get(&key(k)) {
                None => Ok(default),
                Some(_) => Ok(g.get_f32(&key(k))?),
            }
        };
        let rope_scaling_factor = match g
            .get(&key("rope.scaling.type"))
            .map(|_| g.get_str(&key("rope.scaling.type")))
            .transpose()?
        {
            Some("linear") => g.get_f32(&key("rope.scaling.factor"))?,
            Some("none") | None => 1.0,
            Some(other) => {
                return Err(unsupported(format!(
                    "RoPE scaling `{other}` is not supported (linear is)"
                )))
            }
        };
        if g.get(&key("rope.dimension_count")).is_some()
            && usize_key("rope.dimension_count")? != head_dim
        {
            return Err(unsupported(format!(
                "RoPE over {} of {head_dim} head dimensions (partial rotary) is not supported",
                usize_key("rope.dimension_count")?
            )));
        }
        let cfg = Self {
            vocab_size,
            hidden_size,
            intermediate_size: usize_key("feed_forward_length")?,
            num_hidden_layers: usize_key("block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f32_or("attention.layer_norm_rms_epsilon", 1e-5)? as f64,
            rope_theta: f32_or("rope.freq_base", 10000.0)?,
            rope_scaling_factor,
            max_position_embeddings: usize_key("context_length")?,
            tie_word_embeddings: !g.has_tensor("output.weight"),
            rope_freq_factors: None,
            rope_llama3: None,
        };
        let mut cfg = cfg;
        if g.has_tensor("rope_freqs.weight") {
            let (info, bytes) = file.tensor("rope_freqs.weight")?;
            if info.ggml_type != GgmlType::F32 || info.elements() as usize != cfg.head_dim / 2 {
                return Err(unsupported(format!(
                    "rope_freqs.weight should be {} f32 values, found {} of type {}",
                    cfg.head_dim / 2,
                    info.elements(),
                    info.ggml_type
                )));
            }
            cfg.rope_freq_factors = Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            );
        }
        cfg.check().map_err(unsupported)?;
        Ok(cfg)
    }

    /// The `llama.*` GGUF metadata describing this configuration (the inverse of
    /// [`Config::from_gguf`]; frequency factors go in the `rope_freqs.weight` tensor).
    pub fn to_gguf_metadata(&self) -> Vec<(String, Value)> {
        let u = |v: usize| Value::U32(v as u32);
        let mut meta = vec![
            ("llama.vocab_size", u(self.vocab_size)),
            ("llama.context_length", u(self.max_position_embeddings)),
            ("llama.embedding_length", u(self.hidden_size)),
            ("llama.feed_forward_length", u(self.intermediate_size)),
            ("llama.block_count", u(self.num_hidden_layers)),
            ("llama.attention.head_count", u(self.num_attention_heads)),
            ("llama.attention.head_count_kv", u(self.num_key_value_heads)),
            ("llama.attention.key_length", u(self.head_dim)),
            ("llama.attention.value_length", u(self.head_dim)),
            ("llama.rope.dimension_count", u(self.head_dim)),
            ("llama.rope.freq_base", Value::F32(self.rope_theta)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                Value::F32(self.rms_norm_eps as f32),
            ),
        ];
        if self.rope_scaling_factor != 1.0 {
            meta.push(("llama.rope.scaling.type", Value::String("linear".into())));
            meta.push((
                "llama.rope.scaling.factor",
                Value::F32(self.rope_scaling_factor),
            ));
        }
        meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Checks the relations between dimensions that the forward pass relies on.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocabulary size", self.vocab_size),
            ("hidden size", self.hidden_size),
            ("feed-forward size", self.intermediate_size),
            ("layer count", self.num_hidden_layers),
            ("attention head count", self.num_attention_heads),
            ("KV head count", self.num_key_value_heads),
            ("head dimension", self.head_dim),
            ("context length", self.max_position_embeddings),
        ] {
            if v == 0 || v >= 1 << 24 {
                return Err(format!("{name} {v} is out of range"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "{} attention heads are not a multiple of {} KV heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head dimension {} must be even for RoPE",
                self.head_dim
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!(
                "RoPE base {} must be a positive number",
                self.rope_theta
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!(
                "RMSNorm epsilon {} must be a positive number",
                self.rms_norm_eps
            ));
        }
        if self.rope_scaling_factor <= 0.0 || !self.rope_scaling_factor.is_finite() {
            return Err(format!(
                "RoPE scaling factor {} must be positive",
                self.rope_scaling_factor
            ));
        }
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.head_dim / 2 || f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(format!(
                    "RoPE frequency factors must be {} positive numbers",
                    self.head_dim / 2
                ));
            }
        }
        Ok(())
    }

    /// Query heads that share one KV head.
    pub fn n_rep(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Parameter count of the weights this shape implies.
    pub fn num_parameters(&self) -> u64 {
        let (h, f, l) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.num_hidden_layers as u64,
        );
        let q = h * (self.num_attention_heads * self.head_dim) as u64;
        let kv = 2 * h * (self.num_key_value_heads * self.head_dim) as u64;
        let per_layer = 2 * q + kv + 3 * h * f + 2 * h;
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + l * per_layer + h
    }

    /// The Llama 2 shapes from the paper (Touvron et al. 2023, Table 1 and Appendix A.2.1),
    /// and small shapes for training on a CPU as llama2.c's TinyStories models have them
    /// (`260k`, `15m`, `42m`, `110m`; their feed-forward width is llama2.c's rule,
    /// 2/3 of 4 x hidden rounded up to a multiple of 4 for 260k and 32 for the others).
    /// The small presets' vocabulary size is llama2.c's; a training run replaces it with
    /// its tokenizer's.
    pub fn preset(name: &str) -> Option<Self> {
        let (hidden_size, intermediate_size, layers, heads, kv_heads) = match name {
            "llama2-7b" => (4096, 11008, 32, 32, 32),
            "llama2-13b" => (5120, 13824, 40, 40, 40),
            "llama2-34b" => (8192, 22016, 48, 64, 8),
            "llama2-70b" => (8192, 28672, 80, 64, 8),
            "260k" => (64, 172, 5, 8, 4),
            "15m" => (288, 768, 6, 6, 6),
            "42m" => (512, 1376, 8, 8, 8),
            "110m" => (768, 2048, 12, 12, 12),
            _ => return None,
        };
        let small = !name.starts_with("llama2-");
        let (vocab_size, context) = match name {
            "260k" => (512, 512),
            "15m" => (32000, 256),
            _ if small => (32000, 1024),
            _ => (32000, 4096),
        };
        Some(Self {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim: hidden_size / heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling_factor: 1.0,
            rope_freq_factors: None,
            rope_llama3: None,
            max_position_embeddings: context,
            // llama2.c ties the small models' head to the embedding; Llama 2 does not.
            tie_word_embeddings: small,
        })
    }

    /// Names accepted by [`Config::preset`].
    pub const PRESETS: [&'static str; 8] = [
        "llama2-7b",
        "llama2-13b",
        "llama2-34b",
        "llama2-70b",
        "260k",
        "15m",
        "42m",
        "110m",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_heads_are_an_error_not_a_division_by_zero() {
        let mut cfg = Config::preset("llama2-7b").unwrap();
        cfg.num_key_value_heads = 0;
        assert_eq!(cfg.check().unwrap_err(), "KV head count 0 is out of range");
    }

    #[test]
    fn llama2_presets_have_published_parameter_counts() {
        // Published sizes: 6.74B, 13.0B, 33.7B (approx.), 69.0B.
        let billions = |n: &str| Config::preset(n).unwrap().num_parameters() as f64 / 1e9;
        assert!((billions("llama2-7b") - 6.74).abs() < 0.01);
        assert!((billions("llama2-13b") - 13.02).abs() < 0.01);
        assert!((billions("llama2-70b") - 68.98).abs() < 0.01);
        // llama2.c's stories models: 260K, 15M, 42M and 110M parameters.
        let millions = |n: &str| Config::preset(n).unwrap().num_parameters() as f64 / 1e6;
        assert!(
            (millions("260k") - 0.26).abs() < 0.01,
            "{}",
            millions("260k")
        );
        assert!((millions("15m") - 15.2).abs() < 0.1, "{}", millions("15m"));
        assert!((millions("42m") - 41.7).abs() < 0.3, "{}", millions("42m"));
        assert!(
            (millions("110m") - 110.0).abs() < 1.5,
            "{}",
            millions("110m")
        );
        for n in Config::PRESETS {
            Config::preset(n).unwrap().check().unwrap();
        }
    }
}
