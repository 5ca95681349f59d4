//! Hugging Face Llama checkpoints: `config.json` (LlamaForCausalLM) and safetensors weights.
//! HF rotates each head's halves (`rotate_half`) while llama.cpp, and this crate, rotate
//! adjacent pairs, so query and key rows are permuted at load exactly as llama.cpp's
//! `convert_hf_to_gguf.py` permutes them, and back on export.

use std::borrow::Cow;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use ferrollama_gguf::safetensors::{SafetensorsDir, StDtype};

use crate::config::{Config, Llama3Rope};
use crate::error::{Error, Result};
use crate::weights::{qtensor_from_bytes, WeightSource};

/// `config.json` of a Llama checkpoint, as transformers writes it; absent optional keys
/// take transformers' `LlamaConfig` defaults.
#[derive(Debug, serde::Deserialize)]
struct LlamaConfig {
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    rope_scaling: Option<RopeScaling>,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
}

/// `rope_scaling` of config.json (`type` in older files, `rope_type` in newer ones).
#[derive(Debug, serde::Deserialize)]
struct RopeScaling {
    #[serde(alias = "type")]
    rope_type: String,
    factor: f64,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_rope_theta() -> f64 {
    10000.0
}

/// Reads `config.json` of a Llama checkpoint.
pub fn config_from_hf(dir: &Path) -> Result<Config> {
    let path = dir.join("config.json");
    let file = path.display().to_string();
    let bad = |msg: String| Error::Unsupported {
        file: file.clone(),
        msg,
    };
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        file: file.clone(),
        source,
    })?;
    let j: LlamaConfig =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a Llama config.json: {e}")))?;
    if let Some(arch) = j.architectures.first().filter(|a| *a != "LlamaForCausalLM") {
        return Err(bad(format!(
            "architecture `{arch}` is not supported (LlamaForCausalLM is)"
        )));
    }
    for (k, v) in [
        ("vocab_size", j.vocab_size),
        ("hidden_size", j.hidden_size),
        ("intermediate_size", j.intermediate_size),
        ("num_hidden_layers", j.num_hidden_layers),
        ("num_attention_heads", j.num_attention_heads),
        ("max_position_embeddings", j.max_position_embeddings),
    ] {
        if v == 0 || v >= 1 << 24 {
            return Err(bad(format!("`{k}` = {v} is out of range")));
        }
    }
    let head_dim = j.head_dim.unwrap_or(j.hidden_size / j.num_attention_heads);
    let rope_theta = j.rope_theta as f32;
    let (mut rope_scaling_factor, mut rope_freq_factors, mut rope_llama3) = (1.0, None, None);
    if let Some(s) = &j.rope_scaling {
        let need = |v: Option<f64>, k: &str| {
            v.ok_or_else(|| bad(format!("rope_scaling of type llama3 has no `{k}`")))
        };
        match s.rope_type.as_str() {
            "linear" => rope_scaling_factor = s.factor as f32,
            "llama3" => {
                let p = Llama3Rope {
                    factor: s.factor,
                    low_freq_factor: need(s.low_freq_factor, "low_freq_factor")?,
                    high_freq_factor: need(s.high_freq_factor, "high_freq_factor")?,
                    original_max_position_embeddings: need(
                        s.original_max_position_embeddings,
                        "original_max_position_embeddings",
                    )?,
                };
                rope_freq_factors = Some(llama3_freq_factors(head_dim, rope_theta, &p));
                rope_llama3 = Some(p);
            }
            other => {
                return Err(bad(format!(
                    "rope_scaling type `{other}` is not supported (linear and llama3 are)"
                )))
            }
        }
    }
    let cfg = Config {
        vocab_size: j.vocab_size,
        hidden_size: j.hidden_size,
        intermediate_size: j.intermediate_size,
        num_hidden_layers: j.num_hidden_layers,
        num_attention_heads: j.num_attention_heads,
        num_key_value_heads: j.num_key_value_heads.unwrap_or(j.num_attention_heads),
        head_dim,
        rms_norm_eps: j.rms_norm_eps,
        rope_theta,
        rope_scaling_factor,
        rope_freq_factors,
        rope_llama3,
        max_position_embeddings: j.max_position_embeddings,
        tie_word_embeddings: j.tie_word_embeddings,
    };
    cfg.check().map_err(bad)?;
    Ok(cfg)
}

/// Llama 3.1's per-frequency divisors (transformers' `_compute_llama3_parameters`): long
/// wavelengths are slowed by `factor`, short ones kept, and those between blended.
pub fn llama3_freq_factors(head_dim: usize, theta: f32, p: &Llama3Rope) -> Vec<f32> {
    let (factor, low, high, original_ctx) = (
        p.factor,
        p.low_freq_factor,
        p.high_freq_factor,
        p.original_max_position_embeddings,
    );
    let (low_wavelen, high_wavelen) = (original_ctx / low, original_ctx / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f32
            } else {
                let smooth = (original_ctx / wavelen - low) / (high - low);
                let new_freq = (1.0 - smooth) * freq / factor + smooth * freq;
                (freq / new_freq) as f32
            }
        })
        .collect()
}

/// The `config.json` of a Llama checkpoint with this configuration.
pub fn config_to_hf(cfg: &Config, bos: Option<u32>, eos: Option<u32>) -> serde_json::Value {
    let rope_scaling = match (&cfg.rope_llama3, cfg.rope_scaling_factor) {
        (Some(p), _) => serde_json::json!({
            "rope_type": "llama3",
            "factor": p.factor,
            "low_freq_factor": p.low_freq_factor,
            "high_freq_factor": p.high_freq_factor,
            "original_max_position_embeddings": p.original_max_position_embeddings,
        }),
        (None, f) if f != 1.0 => serde_json::json!({"rope_type": "linear", "factor": f}),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    })
}

/// Which way to permute rotary rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// HF (halves) -> GGUF (adjacent pairs), on load.
    HfToGguf,
    /// GGUF -> HF, on export.
    GgufToHf,
}

/// The number of rotary heads whose rows a tensor holds (queries: attention heads, keys:
/// KV heads), or `None` for tensors that are not rotated.
pub fn rotary_heads(cfg: &Config, hf_name: &str) -> Option<usize> {
    crate::layout::rotary_heads(cfg, crate::layout::parse(hf_name)?.0)
}

/// Reorders the rows of a (n_head * head_dim, cols) matrix stored row-major with
/// `row_bytes` bytes per row. HF row (h, j, i) -- half j, index i -- is GGUF row (h, 2i + j).
pub fn permute_rope_rows(
    data: &[u8],
    n_head: usize,
    row_bytes: usize,
    dir: RopeLayout,
) -> Result<Vec<u8>> {
    let rows = data.len() / row_bytes.max(1);
    if n_head == 0
        || !rows.is_multiple_of(n_head)
        || !(rows / n_head).is_multiple_of(2)
        || rows * row_bytes != data.len()
    {
        return Err(Error::TensorData {
            name: "rotary rows".into(),
            msg: format!("cannot permute {rows} rows into {n_head} rotary heads"),
        });
    }
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let hf = h * head_dim + j * half + i;
                let gg = h * head_dim + 2 * i + j;
                let (src, dst) = match dir {
                    RopeLayout::HfToGguf => (hf, gg),
                    RopeLayout::GgufToHf => (gg, hf),
                };
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

/// Weights from a Hugging Face checkpoint directory.
pub struct HfWeights {
    pub st: SafetensorsDir,
    config: Config,
    file: String,
}

impl HfWeights {
    /// Opens the safetensors of `dir`; `config` gives the head counts for the permutation.
    pub fn open(dir: &Path, config: Config) -> Result<Self> {
        Ok(Self {
            st: SafetensorsDir::open(dir)?,
            config,
            file: dir.display().to_string(),
        })
    }
}

impl WeightSource for HfWeights {
    fn get(&self, hf_name: &str) -> Result<QTensor> {
        let t = self.st.tensor(hf_name)?;
        let dtype = match t.dtype {
            StDtype::F32 => GgmlDType::F32,
            StDtype::F16 => GgmlDType::F16,
            StDtype::BF16 => GgmlDType::BF16,
        };
        let data = match (rotary_heads(&self.config, hf_name), t.shape.as_slice()) {
            (Some(n), [_, cols]) => Cow::Owned(permute_rope_rows(
                t.data,
                n,
                cols * t.dtype.size(),
                RopeLayout::HfToGguf,
            )?),
            _ => Cow::Borrowed(t.data),
        };
        qtensor_from_bytes(&data, dtype, t.shape.clone(), hf_name)
    }

    fn contains(&self, hf_name: &str) -> bool {
        self.st.contains(hf_name)
    }

    fn file(&self) -> &str {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_factors_keep_short_and_slow_long_wavelengths() {
        // Llama 3.1 8B: theta 500000, factor 8, low 1, high 4, original context 8192.
        let p = Llama3Rope {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let f = llama3_freq_factors(128, 500000.0, &p);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
    }

    #[test]
    fn rope_permutation_round_trips_and_interleaves() {
        // 2 heads of dim 4, one byte per row.
        let hf: Vec<u8> = (0..8).collect();
        let gg = permute_rope_rows(&hf, 2, 1, RopeLayout::HfToGguf).unwrap();
        assert_eq!(gg, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(
            permute_rope_rows(&gg, 2, 1, RopeLayout::GgufToHf).unwrap(),
            hf
        );
        assert!(permute_rope_rows(&hf, 3, 1, RopeLayout::HfToGguf).is_err());
    }
}
