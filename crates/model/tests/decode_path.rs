//! The decode path (`ferrollama_model::decode`) gives the candle path's bits: prompts (one
//! micro-batch and several), single tokens, batches of sequences with several tokens
//! each, clones of one cache scored side by side, and both attention precisions (default
//! model, Q4_1; and the default model converted to bf16).

use ferrollama_gguf::{GgmlType, GgufFile};
use ferrollama_model::attention::Precision;
use ferrollama_model::llama::{Cache, SeqBatch};
use ferrollama_model::{Config, GgufWeights, Llama};

fn model() -> Llama {
    load(&ferrollama_assets::default_model().unwrap())
}

fn load(path: &std::path::Path) -> Llama {
    let file = GgufFile::open(path).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    Llama::load(&GgufWeights::new(&file), cfg, 1024).unwrap()
}

/// The default model converted to bf16 once into the models directory (its own kernels:
/// pairs for `vdpbf16ps`, activations rounded to bf16).
fn bf16_model() -> Llama {
    let out = ferrollama_assets::models_dir().join("SmolLM2-135M-Instruct.bf16-from-q4_1.gguf");
    let src = ferrollama_assets::default_model().unwrap();
    ferrollama_model::convert::requantize_once(&src, &out, GgmlType::BF16).unwrap();
    load(&out)
}

/// A prompt, then single tokens: the logits of every pass, on one path or the other.
fn decode(m: &Llama, decode_path: bool) -> Vec<Vec<f32>> {
    m.set_decode_path(decode_path);
    let mut cache = m.new_cache(1024);
    let mut out = vec![m
        .forward(&[1, 504, 3575, 282, 4649, 314, 28, 29], &mut cache, 8)
        .unwrap()
        .into_vec()];
    for t in [28u32, 400, 7, 9906, 11, 910, 3, 2, 48000, 17] {
        out.push(m.forward(&[t], &mut cache, 1).unwrap().into_vec());
    }
    // A prompt of more rows than one step takes (two micro-batches), every row's logits.
    let long: Vec<u32> = (100..700).collect();
    out.push(m.forward(&long, &mut cache, 600).unwrap().into_vec());
    out.push(m.forward(&[5], &mut cache, 1).unwrap().into_vec());
    out
}

#[test]
fn single_sequence_steps_give_the_candle_paths_bits() {
    let mut m = model();
    for precision in [Precision::LlamaCpp, Precision::F32] {
        m.set_attention_precision(precision);
        let fast = decode(&m, true);
        let candle = decode(&m, false);
        assert_eq!(fast.len(), candle.len());
        for (i, (a, b)) in fast.iter().zip(&candle).enumerate() {
            assert!(a == b, "{precision:?}: pass {i} differs");
        }
    }
}

/// The plumbing of bf16 activations (prepared per thread, in shares, eight-row tiles)
/// against the candle path's whole products; the arithmetic itself is tested against a
/// reference in `ferrollama_kernels::packed_bf16` and `tests/linear_bf16.rs`.
#[test]
fn bf16_weights_give_the_candle_paths_bits() {
    let m = bf16_model();
    let fast = decode(&m, true);
    let candle = decode(&m, false);
    for (i, (a, b)) in fast.iter().zip(&candle).enumerate() {
        assert!(a == b, "pass {i} differs");
    }
    let batched = batches(&m, true, false);
    assert_eq!(batched, batches(&m, false, false), "batched steps differ");
}

/// Three sequences of different lengths, then steps of 1-3 tokens each.
fn batches(m: &Llama, decode_path: bool, shared: bool) -> Vec<Vec<f32>> {
    m.set_decode_path(decode_path);
    let mut first = m.new_cache(64);
    m.forward(&[1, 2, 3, 4, 5], &mut first, 1).unwrap();
    let mut caches: Vec<Cache> = if shared {
        // Clones of one cache, as the harness scores continuations of one context.
        vec![first.clone(), first.clone(), first]
    } else {
        let mut others: Vec<Cache> = [[9u32, 8].as_slice(), &[300, 301, 302, 303]]
            .iter()
            .map(|p| {
                let mut c = m.new_cache(64);
                m.forward(p, &mut c, 1).unwrap();
                c
            })
            .collect();
        others.insert(0, first);
        others
    };
    let steps: [[&[u32]; 3]; 2] = [
        [&[10, 11, 12], &[20], &[30, 31]],
        [&[13], &[21, 22, 23, 24], &[32]],
    ];
    let mut out = Vec::new();
    for step in steps {
        let seqs: Vec<SeqBatch> = step
            .iter()
            .map(|t| SeqBatch {
                tokens: t,
                outputs: t.len(),
                adapter: None,
            })
            .collect();
        let mut refs: Vec<&mut Cache> = caches.iter_mut().collect();
        out.push(m.forward_batch(&seqs, &mut refs).unwrap().into_vec());
        if shared {
            break; // clones diverge after one step: only the first is scored
        }
    }
    out
}

#[test]
fn batches_give_the_candle_paths_bits() {
    let m = model();
    for shared in [false, true] {
        let fast = batches(&m, true, shared);
        let candle = batches(&m, false, shared);
        assert!(!fast.is_empty());
        for (i, (a, b)) in fast.iter().zip(&candle).enumerate() {
            assert!(a == b, "shared {shared}: step {i} differs");
        }
    }
}

#[test]
fn step_checks_its_input() {
    let m = model();
    let mut state = ferrollama_model::decode::RunState::new(&m, 4).unwrap();
    let mut cache = m.new_cache(8);
    let five = [1u32, 2, 3, 4, 5];
    let too_many = SeqBatch {
        tokens: &five,
        outputs: 1,
        adapter: None,
    };
    assert!(m.step(&mut state, &[too_many], &mut [&mut cache]).is_err());
    let bad = SeqBatch {
        tokens: &[u32::MAX],
        outputs: 1,
        adapter: None,
    };
    assert!(m.step(&mut state, &[bad], &mut [&mut cache]).is_err());
    let nine = [1u32; 3];
    let mut full = m.new_cache(2);
    let over = SeqBatch {
        tokens: &nine,
        outputs: 1,
        adapter: None,
    };
    assert!(m.step(&mut state, &[over], &mut [&mut full]).is_err());
    assert_eq!(cache.seq_len(), 0);
    let ok = SeqBatch {
        tokens: &five[..4],
        outputs: 2,
        adapter: None,
    };
    let logits = m.step(&mut state, &[ok], &mut [&mut cache]).unwrap();
    assert_eq!(logits.len(), 2 * m.config.vocab_size);
    assert!(logits.iter().all(|v| v.is_finite()));
}
