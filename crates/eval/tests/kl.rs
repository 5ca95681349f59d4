//! The KL-divergence report on the tiny committed model (nothing fetched): a model against
//! itself is at zero divergence with every top token agreeing; against a copy whose weights
//! are perturbed it is not, and its perplexity ratio moves with it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Tensor;
use ferrollama_eval::kl_divergence;
use ferrollama_generate::{Bundle, OpenOptions};
use ferrollama_model::{Llama, TrainableLlama};

fn tiny_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/tiny/tiny-260k-q8_0.gguf"
    ))
}

fn text_tokens(b: &Bundle) -> Vec<u32> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/smollm2/ppl-text.txt"
    ))
    .unwrap();
    b.tokenizer.encode(&text, true, false)
}

#[test]
fn a_model_against_itself_and_against_a_perturbed_copy() {
    let b = Bundle::open(&tiny_path(), &OpenOptions::default()).unwrap();
    let tokens = text_tokens(&b);
    let bos = b.tokenizer.bos();
    let same = kl_divergence(&b.model, &b.model, &tokens, 64, bos, |_, _| {}).unwrap();
    assert!(same.n_scored > 1000, "{}", same.n_scored);
    assert!(same.kld.mean.abs() < 1e-12, "{}", same.kld.mean);
    assert_eq!(same.same_top.mean, 1.0);
    assert!((same.ppl_ratio - 1.0).abs() < 1e-12);

    // The same weights in f32, every matrix scaled by 1.05.
    let t = TrainableLlama::open(&tiny_path(), 512).unwrap();
    let scaled: BTreeMap<String, Tensor> = t
        .params()
        .map(|(n, v)| {
            let x = v.as_tensor();
            let x = if x.rank() == 2 {
                (x * 1.05).unwrap()
            } else {
                x.clone()
            };
            (n.to_string(), x)
        })
        .collect();
    let t = TrainableLlama::from_tensors(t.config.clone(), scaled, 512).unwrap();
    let perturbed = Llama::load(&t, t.config.clone(), 512).unwrap();
    let r = kl_divergence(&b.model, &perturbed, &tokens, 64, bos, |_, _| {}).unwrap();
    assert!(r.kld.mean > 1e-4 && r.kld.mean < 1.0, "{}", r.kld.mean);
    assert!(r.kld.stderr > 0.0 && r.kld_max >= r.kld_p99 && r.kld_p99 >= r.kld_median);
    assert!(
        r.same_top.mean < 1.0 && r.same_top.mean > 0.5,
        "{}",
        r.same_top.mean
    );
    assert_ne!(r.ppl_ratio, 1.0);
    assert!((r.ppl_base.mean - same.ppl.mean).abs() < 1e-9);
}
