//! The training model and the inference model are one model: weights exported from
//! training (Hugging Face directory and GGUF) give the inference path the same logits.

use candle_core::{Device, Tensor};
use ferrollama_gguf::{GgmlType, GgufFile};
use ferrollama_model::config::Llama3Rope;
use ferrollama_model::hf::{llama3_freq_factors, HfWeights};
use ferrollama_model::TrainableLlama;
use ferrollama_model::{Config, GgufWeights, Llama, WeightSource};
use ferrollama_train::export::{export, ExportInfo};

mod common;

fn inference_logits(w: &dyn WeightSource, cfg: Config, tokens: &[u32]) -> Vec<f32> {
    let model = Llama::load(w, cfg, 64).unwrap();
    let mut cache = model.new_cache(64);
    model
        .forward(tokens, &mut cache, tokens.len())
        .unwrap()
        .into_vec()
}

#[test]
fn exported_weights_compute_the_training_logits() {
    let tok = common::tokenizer();
    let mut cfg = Config::preset("260k").unwrap();
    cfg.vocab_size = tok.vocab_size();
    let init = TrainableLlama::init(cfg.clone(), 3, 64).unwrap();
    // Weights five times the initial scale, so attention (and a RoPE layout mistake)
    // moves the logits by far more than the tolerance.
    let scaled = init
        .params()
        .map(|(n, v)| {
            let t = v.as_tensor();
            (
                n.to_string(),
                if t.rank() == 2 {
                    (t * 5.0).unwrap()
                } else {
                    t.clone()
                },
            )
        })
        .collect();
    let model = TrainableLlama::from_tensors(cfg.clone(), scaled, 64).unwrap();
    let mut tokens: Vec<u32> = tok.encode(&common::documents(1)[0], true, false);
    tokens.truncate(48);
    let x = Tensor::from_slice(&tokens, (1, tokens.len()), &Device::Cpu).unwrap();
    let train: Vec<f32> = model
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();

    let dir = common::tmp("parity");
    let info = ExportInfo {
        tokenizer: &tok,
        chat_template: Some("{{ messages[0]['content'] }}"),
        name: "parity-model",
    };
    let (hf, gguf) = export(&model, &info, &dir, GgmlType::F32).unwrap();
    let via_hf = inference_logits(
        &HfWeights::open(&hf, cfg.clone()).unwrap(),
        cfg.clone(),
        &tokens,
    );
    let file = GgufFile::open(&gguf).unwrap();
    let via_gguf = inference_logits(
        &GgufWeights::new(&file),
        Config::from_gguf(&file).unwrap(),
        &tokens,
    );
    let max_diff = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let scale = train.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    let (d_hf, d_gguf) = (max_diff(&train, &via_hf), max_diff(&train, &via_gguf));
    eprintln!("max |logit| {scale:.4}, maxdiff hf {d_hf:.2e}, gguf {d_gguf:.2e}");
    // The inference path rounds attention probabilities to f16, as llama.cpp does, so the
    // two agree to about 1e-4 of the logits' range rather than to f32 precision.
    let tol = 1e-3 * scale.max(1.0);
    assert!(
        d_hf < tol && d_gguf < tol,
        "hf {d_hf}, gguf {d_gguf}, tolerance {tol}"
    );
    // Both exports open as trainable models again with the very weights exported: the
    // HF directory (rotate-half rows, permuted to pairs by the loader and back) and the
    // GGUF file (pair rows, permuted back).
    for path in [&hf, &gguf] {
        let back = TrainableLlama::open(path, 64).unwrap();
        for ((n1, v1), (n2, v2)) in model.params().zip(back.params()) {
            assert_eq!(n1, n2);
            let (a, b): (Vec<f32>, Vec<f32>) = (
                v1.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
                v2.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert!(a == b, "{n1} differs after reopening {}", path.display());
        }
    }
    // The exported files carry the name, the chat template and the tokenizer.
    assert_eq!(file.header.get_str("general.name").unwrap(), "parity-model");
    assert_eq!(
        file.header.get_str("tokenizer.chat_template").unwrap(),
        "{{ messages[0]['content'] }}"
    );
    let hf_files = ferrollama_tokenizer::TokenizerFiles::load(&hf).unwrap();
    assert_eq!(
        hf_files.chat_template.as_deref(),
        Some("{{ messages[0]['content'] }}")
    );
    let back = ferrollama_tokenizer::Tokenizer::from_gguf(&file.header).unwrap();
    assert_eq!(
        back.encode("the fox", true, false),
        tok.encode("the fox", true, false)
    );
}

#[test]
fn llama3_scaling_survives_export_and_reopening() {
    let tok = common::tokenizer();
    let mut cfg = Config::preset("260k").unwrap();
    cfg.vocab_size = tok.vocab_size();
    cfg.tie_word_embeddings = false;
    let p = Llama3Rope {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 128.0,
    };
    cfg.rope_freq_factors = Some(llama3_freq_factors(cfg.head_dim, cfg.rope_theta, &p));
    cfg.rope_llama3 = Some(p);
    assert!(cfg
        .rope_freq_factors
        .as_ref()
        .unwrap()
        .iter()
        .any(|&f| f > 1.0 && f < 8.0));
    let model = TrainableLlama::init(cfg.clone(), 5, 64).unwrap();
    let info = ExportInfo {
        tokenizer: &tok,
        chat_template: None,
        name: "llama3",
    };
    let dir = common::tmp("llama3-ok");
    let (hf, gguf) = export(&model, &info, &dir, GgmlType::F32).unwrap();
    // Both files state the same scaling: the HF config its parameters, the GGUF the factors.
    let from_hf = ferrollama_model::hf::config_from_hf(&hf).unwrap();
    assert_eq!(from_hf.rope_llama3, Some(p));
    assert_eq!(from_hf.rope_freq_factors, cfg.rope_freq_factors);
    let file = GgufFile::open(&gguf).unwrap();
    assert_eq!(
        Config::from_gguf(&file).unwrap().rope_freq_factors,
        cfg.rope_freq_factors
    );
}

#[test]
fn models_with_llama3_frequency_factors_are_refused_not_exported_wrong() {
    let tok = common::tokenizer();
    let mut cfg = Config::preset("260k").unwrap();
    cfg.vocab_size = tok.vocab_size();
    // Factors as a GGUF file holds them: without the parameters they came from.
    cfg.rope_freq_factors = Some(vec![1.0; cfg.head_dim / 2]);
    let model = TrainableLlama::init(cfg, 3, 64).unwrap();
    let info = ExportInfo {
        tokenizer: &tok,
        chat_template: None,
        name: "llama3",
    };
    let dir = common::tmp("llama3-export");
    let err = export(&model, &info, &dir, GgmlType::F32).unwrap_err();
    assert!(err.to_string().contains("frequency factors"), "{err}");
    assert!(!dir.join("model.gguf").exists());
}
