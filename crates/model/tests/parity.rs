//! The training path and the inference path are one model: the same weights give the same
//! logits through `TrainableLlama::forward` and through `Llama` (loaded from the trainable
//! model, attention in f32). Covered: a tied and an untied head, grouped-query attention,
//! Llama 3.1-style RoPE frequency factors, linear RoPE scaling, and the default model's
//! own weights dequantized to f32.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use ferrollama_model::attention::Precision;
use ferrollama_model::config::Llama3Rope;
use ferrollama_model::hf::llama3_freq_factors;
use ferrollama_model::{Config, Llama, TrainableLlama};

fn training_logits(model: &TrainableLlama, tokens: &[u32]) -> Vec<f32> {
    let x = Tensor::from_slice(tokens, (1, tokens.len()), &Device::Cpu).unwrap();
    model
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn inference_logits(model: &TrainableLlama, tokens: &[u32]) -> Vec<f32> {
    let ctx = model.max_seq();
    let mut llama = Llama::load(model, model.config.clone(), ctx).unwrap();
    llama.set_attention_precision(Precision::F32);
    let mut cache = llama.new_cache(ctx);
    llama
        .forward(tokens, &mut cache, tokens.len())
        .unwrap()
        .into_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A small GQA shape: 4 query heads over 2 KV heads of width 16.
fn small() -> Config {
    let mut c = Config::preset("260k").unwrap();
    c.vocab_size = 96;
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.max_position_embeddings = 256;
    c
}

/// Random weights five times the initial scale, so that attention (and any RoPE mistake)
/// moves the logits by far more than the tolerance.
fn scaled_model(cfg: &Config, seq: usize) -> TrainableLlama {
    let init = TrainableLlama::init(cfg.clone(), 7, seq).unwrap();
    let weights: BTreeMap<String, Tensor> = init
        .params()
        .map(|(n, v)| {
            let t = v.as_tensor();
            let t = if t.rank() == 2 {
                (t * 5.0).unwrap()
            } else {
                t.clone()
            };
            (n.to_string(), t)
        })
        .collect();
    TrainableLlama::from_tensors(cfg.clone(), weights, seq).unwrap()
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % vocab) as u32).collect()
}

fn assert_parity(cfg: &Config, what: &str) -> Vec<f32> {
    let model = scaled_model(cfg, 128);
    let ids = tokens(100, cfg.vocab_size);
    let (train, infer) = (
        training_logits(&model, &ids),
        inference_logits(&model, &ids),
    );
    let d = max_diff(&train, &infer);
    let scale = train.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    eprintln!("{what}: max |logit| {scale:.3}, max diff {d:.2e}");
    assert!(d < 1e-4, "{what}: training and inference differ by {d}");
    train
}

#[test]
fn tied_and_untied_heads_give_the_same_logits_on_both_paths() {
    let mut cfg = small();
    assert_parity(&cfg, "tied head");
    cfg.tie_word_embeddings = false;
    assert_parity(&cfg, "untied head");
}

#[test]
fn rope_frequency_factors_and_scaling_are_honoured_by_both_paths() {
    let mut cfg = small();
    cfg.tie_word_embeddings = false;
    cfg.rope_theta = 500000.0;
    // Llama 3.1's parameters, on a short original context so that every band is used.
    let p = Llama3Rope {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64.0,
    };
    cfg.rope_freq_factors = Some(llama3_freq_factors(16, 500000.0, &p));
    let with = assert_parity(&cfg, "llama3 frequency factors");
    cfg.rope_scaling_factor = 2.0;
    let scaled = assert_parity(&cfg, "factors and linear scaling");
    // The factors and the scaling change the logits by far more than the tolerance, so a
    // path that ignored them would fail above.
    cfg.rope_freq_factors = None;
    cfg.rope_scaling_factor = 1.0;
    let without = training_logits(&scaled_model(&cfg, 128), &tokens(100, cfg.vocab_size));
    assert!(max_diff(&with, &without) > 1e-2);
    assert!(max_diff(&with, &scaled) > 1e-2);
}

#[test]
fn the_default_model_dequantized_gives_the_same_logits_on_both_paths() {
    let path = ferrollama_assets::default_model().unwrap();
    let model = TrainableLlama::open(&path, 64).unwrap();
    assert_eq!(model.config.vocab_size, 49152);
    // The first 64 tokens of the perplexity text (fortune quotations).
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/smollm2/ppl-text.txt"
    ))
    .unwrap();
    let tok = ferrollama_tokenizer::TokenizerFiles::load(&path)
        .unwrap()
        .tokenizer;
    let ids: Vec<u32> = tok
        .encode(&text, true, false)
        .into_iter()
        .take(64)
        .collect();
    assert_eq!(ids.len(), 64);
    let (train, infer) = (
        training_logits(&model, &ids),
        inference_logits(&model, &ids),
    );
    let d = max_diff(&train, &infer);
    let scale = train.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    eprintln!("default model: max |logit| {scale:.3}, max diff {d:.2e}");
    assert!(d < 1e-4, "training and inference differ by {d}");
}
