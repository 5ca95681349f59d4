//! LoRA (Hu et al. 2021): a frozen projection W plus a trained low-rank update,
//! y = x Wᵀ + s · (x Aᵀ) Bᵀ with A (r, in), B (out, r) and s = alpha / r (alpha / √r with
//! rank-stabilised scaling), as PEFT computes it. A starts as PEFT's `kaiming_uniform_(a=√5)`
//! draws, U(-1/√in, 1/√in), and B at zero, so training starts from the base model exactly.
//! Adapters are named and stored as PEFT stores them (`adapter_config.json` and
//! `adapter_model.safetensors`, `base_model.model.<module>.lora_A.weight`), with Q and K in
//! the rotate-half row order PEFT's Hugging Face models use, which is the training path's.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::error::{Error, Result};
use crate::layout::Part;

/// The projections LoRA can adapt, by PEFT's module names.
pub const TARGETS: [(Part, &str); 7] = [
    (Part::Query, "q_proj"),
    (Part::Key, "k_proj"),
    (Part::Value, "v_proj"),
    (Part::AttnOutput, "o_proj"),
    (Part::Gate, "gate_proj"),
    (Part::Up, "up_proj"),
    (Part::Down, "down_proj"),
];

/// An adapter's shape, as `adapter_config.json` states it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Part>,
    /// Scale alpha / √r instead of alpha / r (PEFT's `use_rslora`).
    pub rslora: bool,
}

impl LoraConfig {
    /// The factor of the low-rank update.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Targets from names like `q,v` or `q_proj,v_proj` (`all`: every projection).
    pub fn parse_targets(list: &str) -> Result<Vec<Part>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "all" {
                return Ok(TARGETS.iter().map(|t| t.0).collect());
            }
            let part = TARGETS
                .iter()
                .find(|(_, m)| *m == name || m.strip_suffix("_proj") == Some(name))
                .map(|t| t.0)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "LoRA target `{name}`: one of q, k, v, o, gate, up, down (or all)"
                    ))
                })?;
            if !out.contains(&part) {
                out.push(part);
            }
        }
        if out.is_empty() {
            return Err(Error::Config("no LoRA targets".into()));
        }
        Ok(out)
    }

    pub fn check(&self) -> Result<()> {
        let alpha_ok = self.alpha.is_finite() && self.alpha > 0.0;
        if self.rank == 0 || !alpha_ok || !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "LoRA rank {} must be at least 1, alpha {} positive, dropout {} in [0, 1)",
                self.rank, self.alpha, self.dropout
            )));
        }
        if self.targets.is_empty() || self.targets.iter().any(|p| module(*p).is_none()) {
            return Err(Error::Config(format!("LoRA targets {:?}", self.targets)));
        }
        Ok(())
    }

    /// `adapter_config.json` as PEFT writes it for a causal language model.
    pub fn to_peft_json(&self, base_model: &str) -> serde_json::Value {
        let mut modules: Vec<&str> = self.targets.iter().filter_map(|p| module(*p)).collect();
        modules.sort_unstable();
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": modules,
            "use_rslora": self.rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_dora": false,
        })
    }

    /// Reads `adapter_config.json`; what this implementation cannot apply exactly (biases,
    /// DoRA, per-module ranks, layers left out, modules saved whole) is an error, never
    /// silently ignored.
    pub fn from_peft_json(v: &serde_json::Value) -> Result<Self> {
        let bad = |m: String| Error::Config(format!("adapter_config.json: {m}"));
        if v["peft_type"].as_str() != Some("LORA") {
            return Err(bad(format!("peft_type {} is not LORA", v["peft_type"])));
        }
        let empty = |k: &str| match &v[k] {
            serde_json::Value::Null => true,
            serde_json::Value::Object(m) => m.is_empty(),
            serde_json::Value::Array(a) => a.is_empty(),
            serde_json::Value::Bool(b) => !b,
            serde_json::Value::String(s) => s == "none",
            _ => false,
        };
        for k in [
            "rank_pattern",
            "alpha_pattern",
            "modules_to_save",
            "layers_to_transform",
            "use_dora",
            "fan_in_fan_out",
        ] {
            if !empty(k) {
                return Err(bad(format!("`{k}` = {} is not supported", v[k])));
            }
        }
        if !matches!(v["bias"].as_str(), None | Some("none")) {
            return Err(bad(format!("bias {} is not supported", v["bias"])));
        }
        let rank = v["r"]
            .as_u64()
            .ok_or_else(|| bad("`r` is missing".into()))? as usize;
        let alpha = v["lora_alpha"]
            .as_f64()
            .ok_or_else(|| bad("`lora_alpha` is missing".into()))?;
        let targets = match &v["target_modules"] {
            serde_json::Value::Array(a) => {
                let names: Vec<&str> = a.iter().filter_map(|x| x.as_str()).collect();
                Self::parse_targets(&names.join(","))?
            }
            serde_json::Value::String(s) if s == "all-linear" => {
                TARGETS.iter().map(|t| t.0).collect()
            }
            other => return Err(bad(format!("target_modules {other} is not supported"))),
        };
        let cfg = Self {
            rank,
            alpha,
            dropout: v["lora_dropout"].as_f64().unwrap_or(0.0),
            targets,
            rslora: v["use_rslora"].as_bool().unwrap_or(false),
        };
        cfg.check()?;
        Ok(cfg)
    }
}

/// PEFT's module name of a part, for the parts LoRA adapts.
pub fn module(part: Part) -> Option<&'static str> {
    TARGETS.iter().find(|t| t.0 == part).map(|t| t.1)
}

/// The names of an adapter's matrices for the weight `weight` (a layout name ending in
/// `.weight`): (A, B) in this crate's naming, `<module path>.lora_A.weight`.
pub fn matrix_names(weight: &str) -> (String, String) {
    let stem = weight.strip_suffix(".weight").unwrap_or(weight);
    (
        format!("{stem}.lora_A.weight"),
        format!("{stem}.lora_B.weight"),
    )
}

/// PEFT's prefix on every tensor name of a causal LM's adapter.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Fresh adapter matrices for a weight of shape (out, in): A ~ U(-1/√in, 1/√in), B = 0.
pub fn init_matrices(
    rng: &mut ChaCha20Rng,
    rank: usize,
    out: usize,
    inp: usize,
) -> Result<(Tensor, Tensor)> {
    let bound = 1.0 / (inp as f64).sqrt();
    let a: Vec<f32> = (0..rank * inp)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Ok((
        Tensor::from_vec(a, (rank, inp), &Device::Cpu)?,
        Tensor::zeros((out, rank), candle_core::DType::F32, &Device::Cpu)?,
    ))
}

/// A seeded RNG for adapter initialisation.
pub fn init_rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed ^ 0x10_5a)
}

/// An adapter read from a PEFT directory: its config and its matrices by this crate's
/// names (PEFT's prefix removed, f32).
pub fn read_peft_dir(dir: &Path) -> Result<(LoraConfig, BTreeMap<String, Tensor>)> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::Io {
        file: cfg_path.display().to_string(),
        source: e,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", cfg_path.display())))?;
    let cfg = LoraConfig::from_peft_json(&json)?;
    let st = dir.join("adapter_model.safetensors");
    if !st.exists() {
        return Err(Error::Config(format!(
            "{}: no adapter_model.safetensors (a .bin adapter must be converted first)",
            dir.display()
        )));
    }
    let map = candle_core::safetensors::load(&st, &Device::Cpu).map_err(|e| {
        Error::Config(format!(
            "{}: not a readable safetensors file: {e}",
            st.display()
        ))
    })?;
    let mut out = BTreeMap::new();
    for (name, t) in map {
        let ours = name.strip_prefix(PEFT_PREFIX).unwrap_or(&name);
        // PEFT names the matrices of its default adapter `lora_A.default` in memory and
        // `lora_A` on disk; accept both.
        let ours = ours
            .replace(".lora_A.default.", ".lora_A.")
            .replace(".lora_B.default.", ".lora_B.");
        out.insert(ours, t.to_dtype(candle_core::DType::F32)?);
    }
    Ok((cfg, out))
}

/// The (A, B) pair of every adapted projection of a model with `layers` blocks, taken out
/// of `tensors` (by this crate's names) and checked against the weight shapes `shape`
/// gives (out, in): a missing or misshapen matrix, or one no target has a place for, is
/// an error rather than an adapter that silently does less.
pub fn take_matrices(
    lora: &LoraConfig,
    layers: usize,
    shape: impl Fn(usize, Part) -> (usize, usize),
    mut tensors: BTreeMap<String, Tensor>,
) -> Result<Vec<(usize, Part, Tensor, Tensor)>> {
    let mut out = Vec::new();
    for l in 0..layers {
        for &part in &lora.targets {
            let (rows, cols) = shape(l, part);
            let (an, bn) = matrix_names(&crate::layout::layer_name(l, part));
            let mut take = |n: &str, want: (usize, usize)| -> Result<Tensor> {
                let t = tensors
                    .remove(n)
                    .ok_or_else(|| Error::Config(format!("the adapter lacks `{n}`")))?;
                if t.dims() != [want.0, want.1] {
                    return Err(Error::Config(format!(
                        "adapter matrix `{n}` is {:?}, the model needs {want:?}",
                        t.dims()
                    )));
                }
                Ok(t)
            };
            let a = take(&an, (lora.rank, cols))?;
            let b = take(&bn, (rows, lora.rank))?;
            out.push((l, part, a, b));
        }
    }
    if let Some(name) = tensors.into_keys().next() {
        return Err(Error::Config(format!(
            "the adapter holds `{name}`, which its targets {:?} have no place for",
            lora.targets
        )));
    }
    Ok(out)
}
