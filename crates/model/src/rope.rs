//! Rotary position embeddings (Su et al. 2021) as llama.cpp applies them to Llama: each
//! head's dimensions rotate in adjacent pairs (x[2i], x[2i+1]) by pos * theta^(-2i/d).
//! GGUF files store Q and K rows in the order this expects; Hugging Face checkpoints rotate
//! halves instead and are permuted at load.

use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::error::Result;

/// Cosine and sine tables for every position up to the context size.
#[derive(Debug, Clone)]
pub struct Rope {
    /// (max_pos, head_dim / 2)
    cos: Tensor,
    /// (max_pos, head_dim / 2)
    sin: Tensor,
    /// The same tables as plain values, for the decode path.
    cos_values: Vec<f32>,
    sin_values: Vec<f32>,
}

/// The rotation frequency of each pair of a head's dimensions: theta^(-2i/d), divided by
/// `rope_freq_factors[i]` (Llama 3.1's scaling, from GGUF's `rope_freqs.weight` or
/// config.json's `rope_scaling`) when the model has them. Every path that rotates (the
/// inference tables here, the training op in `ops::rope_heads`) starts from these.
pub fn inv_frequencies(cfg: &Config) -> Vec<f32> {
    let (d, factors) = (cfg.head_dim, cfg.rope_freq_factors.as_deref());
    (0..d / 2)
        .map(|i| {
            1.0 / cfg.rope_theta.powf(2.0 * i as f32 / d as f32)
                / factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0)
        })
        .collect()
}

/// Cosines and sines of every position's angles, (max_pos, head_dim / 2) position-major:
/// position p / `rope_scaling_factor` (linear scaling) times each frequency.
pub fn angle_tables(cfg: &Config, max_pos: usize) -> (Vec<f32>, Vec<f32>) {
    let inv_freq = inv_frequencies(cfg);
    let mut cos = Vec::with_capacity(max_pos * inv_freq.len());
    let mut sin = Vec::with_capacity(max_pos * inv_freq.len());
    for pos in 0..max_pos {
        let p = pos as f32 / cfg.rope_scaling_factor;
        for f in &inv_freq {
            let (s, c) = (p * f).sin_cos();
            cos.push(c);
            sin.push(s);
        }
    }
    (cos, sin)
}

impl Rope {
    /// Tables of `cfg`'s rotation for `max_pos` positions.
    pub fn new(cfg: &Config, max_pos: usize, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let (cos, sin) = angle_tables(cfg, max_pos);
        Ok(Self {
            cos: Tensor::from_vec(cos.clone(), (max_pos, half), device)?,
            sin: Tensor::from_vec(sin.clone(), (max_pos, half), device)?,
            cos_values: cos,
            sin_values: sin,
        })
    }

    /// Rotates `x` (b, n_head, seq_len, head_dim) whose first row is at position `index_pos`.
    pub fn apply(&self, x: &Tensor, index_pos: usize) -> Result<Tensor> {
        let seq_len = x.dim(2)?;
        let cos = self.cos.narrow(0, index_pos, seq_len)?.contiguous()?;
        let sin = self.sin.narrow(0, index_pos, seq_len)?.contiguous()?;
        Ok(candle_nn::rotary_emb::rope_i(
            &x.to_dtype(DType::F32)?.contiguous()?,
            &cos,
            &sin,
        )?)
    }

    /// Rotates one head's row (head_dim values) at position `pos` in place, with the
    /// arithmetic of [`Rope::apply`] (candle's `rope_i`): the same bits. Panics if `pos`
    /// is past the tables.
    pub fn rotate(&self, row: &mut [f32], pos: usize) {
        let half = row.len() / 2;
        let cos = &self.cos_values[pos * half..(pos + 1) * half];
        let sin = &self.sin_values[pos * half..(pos + 1) * half];
        for ((pair, &c), &s) in row.chunks_exact_mut(2).zip(cos).zip(sin) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }

    /// Positions the tables cover.
    pub fn max_pos(&self) -> usize {
        self.cos.dims()[0]
    }
}

/// Plain reference: rotate pairs of a single row at position `pos`.
pub fn rope_reference(row: &mut [f32], pos: usize, theta: f32, scale: f32) {
    let d = row.len();
    for i in 0..d / 2 {
        let angle = pos as f32 / scale * theta.powf(-2.0 * i as f32 / d as f32);
        let (s, c) = angle.sin_cos();
        let (a, b) = (row[2 * i], row[2 * i + 1]);
        row[2 * i] = a * c - b * s;
        row[2 * i + 1] = a * s + b * c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shape whose heads are `head_dim` wide, with the given scaling.
    fn config(head_dim: usize, scale: f32, factors: Option<Vec<f32>>) -> Config {
        let mut cfg = Config::preset("260k").unwrap();
        cfg.head_dim = head_dim;
        cfg.rope_scaling_factor = scale;
        cfg.rope_freq_factors = factors;
        cfg
    }

    #[test]
    fn rope_matches_reference_at_offset() {
        let dev = Device::Cpu;
        let (heads, t, d) = (3, 5, 8);
        let data: Vec<f32> = (0..heads * t * d)
            .map(|i| ((i * 37) % 17) as f32 / 7.0 - 1.0)
            .collect();
        let x = Tensor::from_vec(data.clone(), (1, heads, t, d), &dev).unwrap();
        let rope = Rope::new(&config(d, 2.0, None), 32, &dev).unwrap();
        let got: Vec<f32> = rope
            .apply(&x, 7)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for h in 0..heads {
            for p in 0..t {
                let at = (h * t + p) * d;
                let mut row = data[at..at + d].to_vec();
                rope_reference(&mut row, 7 + p, 10000.0, 2.0);
                for (a, b) in row.iter().zip(&got[at..at + d]) {
                    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn frequency_factors_divide_the_frequencies() {
        let dev = Device::Cpu;
        let plain = Rope::new(&config(4, 1.0, None), 8, &dev).unwrap();
        let scaled = Rope::new(&config(4, 1.0, Some(vec![1.0, 4.0])), 8, &dev).unwrap();
        let sin = |r: &Rope| -> Vec<Vec<f32>> { r.sin.to_vec2().unwrap() };
        // Frequency 0 is untouched; frequency 1 at position 4 equals position 1 unscaled.
        assert_eq!(sin(&plain)[5][0], sin(&scaled)[5][0]);
        assert!((sin(&scaled)[4][1] - sin(&plain)[1][1]).abs() < 1e-6);
    }
}
