//! Sampling settings, with llama.cpp's defaults (`common/common.h`).

/// How to pick the next token. Penalties apply first, then top-k, top-p, min-p, and
/// temperature last, the order of llama.cpp's default sampler chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Divides the logits before the draw; 0.0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1.0 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one; 0.0 keeps all.
    pub min_p: f32,
    /// Hugging Face repetition penalty: a seen token's logit is divided by it when positive
    /// and multiplied by it when negative; 1.0 is off.
    pub repeat_penalty: f32,
    /// How many of the latest tokens the penalties look at; 0 means none, -1 all.
    pub repeat_last_n: i64,
    /// OpenAI presence penalty: subtracted once from every seen token's logit.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty: subtracted once per occurrence.
    pub frequency_penalty: f32,
    /// Seed of the random draw.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0x5EED,
        }
    }
}

impl SamplingParams {
    /// Always the most likely token, no penalties.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Self::default()
        }
    }

    /// Whether every setting is within its meaningful range; the error names the first
    /// that is not.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let bad = |setting, expected, value: &dyn std::fmt::Display| {
            Err(InvalidSetting {
                setting,
                expected,
                value: value.to_string(),
            })
        };
        for (name, v) in [("temperature", self.temperature), ("min_p", self.min_p)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, "a finite number >= 0", &v);
            }
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "in (0, 1]", &self.top_p);
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty", "> 0", &self.repeat_penalty);
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !v.is_finite() {
                return bad(name, "a finite number", &v);
            }
        }
        if self.repeat_last_n < -1 {
            return bad("repeat_last_n", "-1, 0 or positive", &self.repeat_last_n);
        }
        Ok(())
    }
}

/// A sampling setting outside its meaningful range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting} must be {expected}, got {value}")]
pub struct InvalidSetting {
    /// The setting's name, as the API and the command line spell it.
    pub setting: &'static str,
    /// What it must be.
    pub expected: &'static str,
    /// What it was.
    pub value: String,
}
