//! Perplexity of the reference text (tests/data/smollm2/ppl-text.txt) with the default
//! model, against llama.cpp's `llama-perplexity` figures in perplexity.json, and after a
//! GGUF -> Hugging Face -> GGUF round trip.

use std::path::PathBuf;

use ferrollama_gguf::safetensors::StDtype;
use ferrollama_gguf::{GgmlType, GgufFile};
use ferrollama_model::{Config, GgufWeights, Llama};
use ferrollama_tokenizer::Tokenizer;

fn data(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "{}/../../tests/data/smollm2/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
}

struct Run {
    model: Llama,
    tokens: Vec<u32>,
    bos: Option<u32>,
}

fn prepare(path: &std::path::Path) -> Run {
    let file = GgufFile::open(path).unwrap();
    let tok = Tokenizer::from_gguf(&file.header).unwrap();
    let model = Llama::load(
        &GgufWeights::new(&file),
        Config::from_gguf(&file).unwrap(),
        512,
    )
    .unwrap();
    let text = std::fs::read_to_string(data("ppl-text.txt")).unwrap();
    let bos = if tok.add_bos() { tok.bos() } else { None };
    Run {
        model,
        tokens: tok.encode(&text, true, false),
        bos,
    }
}

fn ppl(run: &Run, n_ctx: usize) -> f64 {
    ferrollama_eval::perplexity(&run.model, &run.tokens, n_ctx, run.bos, |_, _, _| {})
        .unwrap()
        .ppl
}

#[test]
fn perplexity_matches_llama_cpp_and_survives_hf_round_trip() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("perplexity.json")).unwrap()).unwrap();
    let want = |c: &str| reference["results"]["q4_1"][c]["ppl"].as_f64().unwrap();
    let model_path = ferrollama_assets::default_model().unwrap();
    let run = prepare(&model_path);
    assert_eq!(
        run.tokens.len() as u64,
        reference["n_tokens_smollm2"].as_u64().unwrap(),
        "tokenization differs from llama.cpp's"
    );

    let mut at_128 = 0.0;
    for (n_ctx, key) in [(128, "c128"), (512, "c512")] {
        let (ours, theirs) = (ppl(&run, n_ctx), want(key));
        let rel = (ours - theirs).abs() / theirs;
        println!("ctx {n_ctx}: ferrollama PPL {ours:.4}, llama.cpp {theirs:.4}, relative difference {:.3}%", rel * 100.0);
        assert!(rel < 0.01, "ctx {n_ctx}: {ours} vs {theirs}");
        if n_ctx == 128 {
            at_128 = ours;
        }
    }

    // GGUF -> HF (f32, with tokenizer files) -> GGUF Q4_1 (tokenizer from the HF files).
    let dir = std::env::temp_dir().join(format!("ferrollama-ppl-rt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = GgufFile::open(&model_path).unwrap();
    let tok = Tokenizer::from_gguf(&src.header).unwrap();
    ferrollama_model::export::gguf_to_hf(
        &src,
        &dir.join("hf"),
        StDtype::F32,
        tok.bos(),
        tok.eos(),
        |_, _| {},
    )
    .unwrap();
    tok.write_hf_dir(&dir.join("hf"), None).unwrap();
    let hf_tok = Tokenizer::from_hf_dir(&dir.join("hf")).unwrap();
    let back = dir.join("back.gguf");
    ferrollama_model::export::hf_to_gguf(
        &dir.join("hf"),
        &back,
        GgmlType::Q4_1,
        hf_tok.vocab().to_gguf_metadata(),
        |_, _| {},
    )
    .unwrap();
    let again = prepare(&back);
    assert_eq!(
        again.tokens, run.tokens,
        "the round-tripped tokenizer tokenizes differently"
    );
    let round_trip = ppl(&again, 128);
    let rel = (round_trip - at_128).abs() / at_128;
    println!(
        "ctx 128 after GGUF -> HF -> GGUF: PPL {round_trip:.4} (relative difference {:.4}%)",
        rel * 100.0
    );
    assert!(rel < 0.001);
    let _ = std::fs::remove_dir_all(&dir);
}
