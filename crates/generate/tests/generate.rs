//! The decode loop on the default model: greedy continuations through the tokenizer equal
//! llama.cpp's (tests/data/smollm2/greedy_q4_1.jsonl), seeded sampling repeats, stop
//! strings, streaming, and a prompt longer than the context.

use std::sync::OnceLock;

use ferrollama_generate::{FinishReason, GenerateParams, Generator};
use ferrollama_gguf::GgufFile;
use ferrollama_model::{Config, GgufWeights, Llama};
use ferrollama_sampling::SamplingParams;
use ferrollama_tokenizer::Tokenizer;

struct Fixture {
    model: Llama,
    tok: Tokenizer,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let file = GgufFile::open(ferrollama_assets::default_model().unwrap()).unwrap();
        let tok = Tokenizer::from_gguf(&file.header).unwrap();
        let model = Llama::load(
            &GgufWeights::new(&file),
            Config::from_gguf(&file).unwrap(),
            256,
        )
        .unwrap();
        Fixture { model, tok }
    })
}

fn greedy(n: usize) -> GenerateParams {
    GenerateParams {
        max_new_tokens: n,
        sampling: SamplingParams::greedy(),
        ..GenerateParams::default()
    }
}

/// Plain greedy decoding with the model alone, one token at a time.
fn argmax_loop(model: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache(256);
    let (mut input, mut out) = (prompt.to_vec(), Vec::new());
    for _ in 0..n {
        let logits: Vec<f32> = model.forward(&input, &mut cache, 1).unwrap().into_vec();
        let next = ferrollama_sampling::sampler::argmax(&logits);
        out.push(next);
        input = vec![next];
    }
    out
}

/// The reference prompts tokenize to llama.cpp's ids, and the generator's greedy output is
/// the model's argmax sequence (which the model crate's reference test compares with
/// llama.cpp's, near ties allowed).
#[test]
fn greedy_text_prompts_tokenize_and_decode_like_the_model() {
    let f = fixture();
    let path = format!(
        "{}/../../tests/data/smollm2/greedy_q4_1.jsonl",
        env!("CARGO_MANIFEST_DIR")
    );
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let prompt = f.tok.encode(case["prompt"].as_str().unwrap(), true, true);
        let want_prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        assert_eq!(prompt, want_prompt);
        let want = argmax_loop(&f.model, &prompt, 16);
        let mut g = Generator::new(&f.model, &f.tok, 256);
        let out = g.generate(&prompt, &greedy(16), |_| true).unwrap();
        assert_eq!(out.ids, want);
        let want_text = String::from_utf8(f.tok.decode(&want, true).unwrap()).unwrap();
        assert_eq!(out.text, want_text);
        assert_eq!(out.finish_reason, FinishReason::Length);
    }
}

#[test]
fn same_seed_same_text_and_other_seed_other_text() {
    let f = fixture();
    let prompt = f.tok.encode("Once upon a time", true, true);
    let run = |seed| {
        let params = GenerateParams {
            max_new_tokens: 24,
            sampling: SamplingParams {
                temperature: 1.0,
                seed,
                ..SamplingParams::default()
            },
            ignore_eos: true,
            grammar: None,
            ..GenerateParams::default()
        };
        Generator::new(&f.model, &f.tok, 256)
            .generate(&prompt, &params, |_| true)
            .unwrap()
            .ids
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn stop_string_ends_generation_and_is_not_shown() {
    let f = fixture();
    let prompt = f.tok.encode("The capital of France is", true, true);
    let params = GenerateParams {
        stop: vec!["\n".into()],
        ..greedy(32)
    };
    let mut streamed = String::new();
    let out = Generator::new(&f.model, &f.tok, 256)
        .generate(&prompt, &params, |piece| {
            streamed.push_str(piece);
            true
        })
        .unwrap();
    assert_eq!(out.text, " Paris.");
    assert_eq!(streamed, out.text);
    assert_eq!(out.finish_reason, FinishReason::Stop);
}

#[test]
fn chat_turns_reuse_the_cache() {
    let f = fixture();
    let mut g = Generator::new(&f.model, &f.tok, 256);
    let first = f.tok.encode(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        false,
        true,
    );
    let a = g.generate(&first, &greedy(8), |_| true).unwrap();
    assert_eq!(a.prompt_tokens_evaluated, first.len());
    // The next prompt extends the first one (and the reply): only the new part is computed.
    let mut second = first.clone();
    second.extend(&a.ids);
    let tail = f.tok.encode(
        "<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n",
        false,
        true,
    );
    second.extend(&tail);
    let b = g.generate(&second, &greedy(4), |_| true).unwrap();
    assert!(
        b.prompt_tokens_evaluated <= tail.len() + 1,
        "{} evaluated",
        b.prompt_tokens_evaluated
    );
    // And the result equals a fresh run over the whole prompt.
    let fresh = Generator::new(&f.model, &f.tok, 256)
        .generate(&second, &greedy(4), |_| true)
        .unwrap();
    assert_eq!(b.ids, fresh.ids);

    // A prompt that shares only part of the cache (another question after the same
    // opening) recomputes from where they differ, and still equals a fresh run.
    let mut third = first[..first.len() - 4].to_vec();
    third.extend(
        f.tok
            .encode("<|im_start|>user\nWhy?<|im_end|>\n", false, true),
    );
    let c = g.generate(&third, &greedy(4), |_| true).unwrap();
    assert!(c.prompt_tokens_evaluated < third.len());
    let fresh = Generator::new(&f.model, &f.tok, 256)
        .generate(&third, &greedy(4), |_| true)
        .unwrap();
    assert_eq!(c.ids, fresh.ids);
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let f = fixture();
    let prompt = f.tok.encode(&"word ".repeat(40), true, true);
    let err = Generator::new(&f.model, &f.tok, 16)
        .generate(&prompt, &greedy(4), |_| true)
        .unwrap_err();
    assert!(
        err.to_string().contains("more than the context of 16"),
        "{err}"
    );
}

#[test]
fn generation_stops_when_the_context_is_full() {
    let f = fixture();
    let prompt = f.tok.encode("One two three", true, true);
    let params = GenerateParams {
        ignore_eos: true,
        grammar: None,
        ..greedy(100)
    };
    let out = Generator::new(&f.model, &f.tok, 12)
        .generate(&prompt, &params, |_| true)
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::ContextFull);
    assert_eq!(
        prompt.len() + out.ids.len(),
        13,
        "the last sampled token needs no cache slot"
    );
}
