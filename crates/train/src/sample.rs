//! A few tokens sampled from the model being trained, to watch it learn: the training
//! forward pass run on the whole text so far for each new token (no KV cache; the models
//! trained here are small), temperature sampling from a seeded RNG of its own, so the
//! training itself is untouched.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use ferrollama_tokenizer::Tokenizer;

use crate::error::Result;
use ferrollama_model::TrainableLlama;

/// `n` tokens after BOS + `prompt` at `temperature`, as text (the prompt included).
pub fn sample_text(
    model: &TrainableLlama,
    tokenizer: &Tokenizer,
    prompt: &str,
    n: usize,
    temperature: f32,
    seed: u64,
) -> Result<String> {
    let mut ids = tokenizer.encode(prompt, true, false);
    let start = ids.len();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    for _ in 0..n {
        let window = &ids[ids.len().saturating_sub(model.max_seq())..];
        let x = Tensor::from_slice(window, (1, window.len()), &Device::Cpu)?;
        let logits = model.forward(&x)?.detach();
        let last = logits.squeeze(0)?.get(window.len() - 1)?.to_vec1::<f32>()?;
        let max = last.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let t = temperature.max(1e-3);
        let probs: Vec<f32> = last.iter().map(|&l| ((l - max) / t).exp()).collect();
        let total: f32 = probs.iter().sum();
        let mut r = rng.random::<f32>() * total;
        let mut next = probs.len() - 1;
        for (i, &p) in probs.iter().enumerate() {
            if r < p {
                next = i;
                break;
            }
            r -= p;
        }
        if tokenizer.is_eog(next as u32) {
            break;
        }
        ids.push(next as u32);
    }
    let mut text = prompt.to_string();
    text.push_str(&tokenizer.decode_lossy(&ids[start..], true)?);
    Ok(text)
}
