//! LoRA on the training path: a fresh adapter leaves the model unchanged, only the
//! adapters train, their gradients match finite differences, the merged weights compute
//! what the adapted model computes, and PEFT's config and names round-trip.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use ferrollama_model::layout::Part;
use ferrollama_model::lora::{self, LoraConfig};
use ferrollama_model::{Config, Packing, TrainableLlama, WeightSource};

fn tiny() -> Config {
    let mut c = Config::preset("260k").unwrap();
    c.vocab_size = 40;
    c.hidden_size = 16;
    c.intermediate_size = 24;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 4;
    c
}

fn lora_config(targets: &[Part]) -> LoraConfig {
    LoraConfig {
        rank: 3,
        alpha: 6.0,
        dropout: 0.0,
        targets: targets.to_vec(),
        rslora: false,
    }
}

fn ids() -> Tensor {
    let v: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 40).collect();
    Tensor::from_vec(v, (2, 6), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// An adapted model whose B matrices are random (a fresh B is zero).
fn adapted(targets: &[Part]) -> TrainableLlama {
    let mut m = TrainableLlama::init(tiny(), 3, 16).unwrap();
    m.attach_lora(lora_config(targets), 9, None).unwrap();
    for (i, (name, var)) in m.params().enumerate() {
        if name.ends_with("lora_B.weight") {
            let n = var.elem_count();
            let v: Vec<f32> = (0..n)
                .map(|j| (((j * 31 + i * 17) % 97) as f32 / 97.0 - 0.5) * 0.4)
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    m
}

#[test]
fn a_fresh_adapter_changes_nothing_and_only_adapters_train() {
    let base = TrainableLlama::init(tiny(), 3, 16).unwrap();
    let before = values(&base.forward(&ids()).unwrap());
    let mut m = TrainableLlama::init(tiny(), 3, 16).unwrap();
    m.attach_lora(lora_config(&[Part::Query, Part::Value]), 9, None)
        .unwrap();
    assert_eq!(values(&m.forward(&ids()).unwrap()), before);
    let names: Vec<&str> = m.params().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 2 * 2 * 2);
    assert!(names.iter().all(|n| n.contains(".lora_")), "{names:?}");
    assert_eq!(m.num_parameters(), 2 * (3 * 16 + 16 * 3 + 3 * 16 + 8 * 3));
    // The gradient reaches B (A's is zero while B is) and no base weight.
    let targets: Vec<u32> = (0..12).map(|i| (i * 5 + 1) % 40).collect();
    let loss = m.loss(&ids(), &targets).unwrap();
    let g = loss.backward().unwrap();
    let b = m
        .params()
        .find(|(n, _)| n.ends_with("q_proj.lora_B.weight"))
        .unwrap()
        .1;
    assert!(values(g.get(b.as_tensor()).unwrap())
        .iter()
        .any(|&x| x != 0.0));
    assert!(m.attach_lora(lora_config(&[Part::Key]), 1, None).is_err());
}

/// d loss / d (A, B) against central differences along a fixed direction.
#[test]
fn adapter_gradients_match_finite_differences() {
    let m = adapted(&[
        Part::Query,
        Part::Key,
        Part::Value,
        Part::AttnOutput,
        Part::Gate,
        Part::Up,
        Part::Down,
    ]);
    let targets: Vec<u32> = (0..12).map(|i| (i * 5 + 1) % 40).collect();
    let packing = Packing::new(vec![vec![0, 4], vec![0]], 6).unwrap();
    let scored: Vec<u32> = (0..12).collect();
    let loss = |m: &TrainableLlama| -> f64 {
        m.loss_on(&ids(), &packing, &scored, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let grads = m
        .loss_on(&ids(), &packing, &scored, &targets)
        .unwrap()
        .backward()
        .unwrap();
    let mut worst = 0.0f64;
    for (k, (name, var)) in m.params().enumerate() {
        let g = values(grads.get(var.as_tensor()).unwrap());
        let orig = var.as_tensor().copy().unwrap();
        let n = orig.elem_count();
        let d: Vec<f32> = (0..n)
            .map(|i| (((i * 2654435761 + k * 97) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let norm = d.iter().map(|x| x * x).sum::<f32>().sqrt();
        let d: Vec<f32> = d.iter().map(|x| x / norm).collect();
        let analytic: f64 = g.iter().zip(&d).map(|(a, b)| (*a * *b) as f64).sum();
        let eps = 1e-2f32;
        let shifted = |sign: f32| {
            let v: Vec<f32> = values(&orig)
                .iter()
                .zip(&d)
                .map(|(x, y)| x + sign * eps * y)
                .collect();
            var.set(&Tensor::from_vec(v, orig.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let l = loss(&m);
            var.set(&orig).unwrap();
            l
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps as f64);
        let err = (analytic - numeric).abs() / numeric.abs().max(1e-3);
        worst = worst.max(err);
        assert!(err < 2e-2, "{name}: analytic {analytic}, numeric {numeric}");
    }
    assert!(worst > 0.0);
}

/// The merged weights (W + s B A), loaded as a plain model, compute the adapted logits;
/// the inference path reads the merged weights too.
#[test]
fn merged_weights_compute_the_adapted_model() {
    let m = adapted(&[Part::Query, Part::Value, Part::Down]);
    let adapted_logits = values(&m.forward(&ids()).unwrap());
    let merged: BTreeMap<String, Tensor> = m
        .weight_names()
        .map(|n| (n.to_string(), m.effective_weight(n).unwrap()))
        .collect();
    let plain = TrainableLlama::from_tensors(tiny(), merged, 16).unwrap();
    let merged_logits = values(&plain.forward(&ids()).unwrap());
    let worst = adapted_logits
        .iter()
        .zip(&merged_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{worst}");
    let base = TrainableLlama::init(tiny(), 3, 16).unwrap();
    assert_ne!(values(&base.forward(&ids()).unwrap()), adapted_logits);
    // The WeightSource view (what `Llama::load(&model)` and export read) is merged.
    let q = "model.layers.0.self_attn.v_proj.weight";
    let via_source = m.get(q).unwrap().dequantize(&Device::Cpu).unwrap();
    assert_eq!(values(&via_source), values(&m.effective_weight(q).unwrap()));
}

#[test]
fn peft_config_round_trips_and_unsupported_settings_are_refused() {
    let cfg = lora_config(&[Part::Query, Part::Value, Part::Gate]);
    let json = cfg.to_peft_json("base");
    assert_eq!(
        json["target_modules"],
        serde_json::json!(["gate_proj", "q_proj", "v_proj"])
    );
    let back = LoraConfig::from_peft_json(&json).unwrap();
    assert_eq!(back.rank, 3);
    assert_eq!(back.scale(), 2.0);
    for (k, v) in [
        ("use_dora", serde_json::json!(true)),
        ("bias", serde_json::json!("all")),
        ("rank_pattern", serde_json::json!({"q_proj": 4})),
        ("layers_to_transform", serde_json::json!([0])),
        ("peft_type", serde_json::json!("IA3")),
    ] {
        let mut j = json.clone();
        j[k] = v;
        assert!(LoraConfig::from_peft_json(&j).is_err(), "{k}");
    }
    assert_eq!(LoraConfig::parse_targets("q,v_proj,all").unwrap().len(), 7);
    assert!(LoraConfig::parse_targets("q,embed").is_err());
    assert_eq!(
        lora::matrix_names("model.layers.1.mlp.up_proj.weight").0,
        "model.layers.1.mlp.up_proj.lora_A.weight"
    );
}

#[test]
fn saved_adapters_load_back_and_wrong_ones_are_refused() {
    let m = adapted(&[Part::Query, Part::Value]);
    let saved: BTreeMap<String, Tensor> = m
        .params()
        .map(|(n, v)| (n.to_string(), v.as_tensor().copy().unwrap()))
        .collect();
    let mut again = TrainableLlama::init(tiny(), 3, 16).unwrap();
    again
        .attach_lora(
            lora_config(&[Part::Query, Part::Value]),
            0,
            Some(saved.clone()),
        )
        .unwrap();
    assert_eq!(
        values(&again.forward(&ids()).unwrap()),
        values(&m.forward(&ids()).unwrap())
    );
    // Targets that do not match the saved matrices: missing and left-over names.
    let mut other = TrainableLlama::init(tiny(), 3, 16).unwrap();
    assert!(other
        .attach_lora(
            lora_config(&[Part::Query, Part::Key]),
            0,
            Some(saved.clone())
        )
        .is_err());
    let mut fewer = TrainableLlama::init(tiny(), 3, 16).unwrap();
    assert!(fewer
        .attach_lora(lora_config(&[Part::Query]), 0, Some(saved))
        .is_err());
}

fn tiny_gguf() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/tiny/tiny-260k-q8_0.gguf")
}

/// QLoRA's base: the GGUF projections kept quantized compute what the same weights
/// dequantized to f32 compute, forward and backward (the adapters' gradients), Q and K
/// rows reordered as training needs them.
#[test]
fn a_quantized_base_computes_what_its_dequantized_weights_compute() {
    let cfg = lora_config(&[Part::Query, Part::Key, Part::Value, Part::Down]);
    let mut quant = TrainableLlama::open_quantized(&tiny_gguf(), 32).unwrap();
    assert_eq!(quant.num_parameters(), 0);
    let mut dense = TrainableLlama::open(&tiny_gguf(), 32).unwrap();
    quant.attach_lora(cfg.clone(), 4, None).unwrap();
    dense.attach_lora(cfg, 4, None).unwrap();
    // Non-zero B, the same in both.
    for ((_, q), (_, d)) in quant.params().zip(dense.params()) {
        let n = q.elem_count();
        let v: Vec<f32> = (0..n)
            .map(|j| ((j * 37 % 101) as f32 / 101.0 - 0.5) * 0.1)
            .collect();
        let t = Tensor::from_vec(v, q.shape(), &Device::Cpu).unwrap();
        q.set(&t).unwrap();
        d.set(&t).unwrap();
    }
    let x = Tensor::new(&[[1u32, 7, 30, 200, 511, 64, 9, 2]], &Device::Cpu).unwrap();
    let (lq, ld) = (quant.forward(&x).unwrap(), dense.forward(&x).unwrap());
    let worst = values(&lq)
        .iter()
        .zip(values(&ld))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "logits differ by {worst}");
    let targets: Vec<u32> = vec![7, 30, 200, 511, 64, 9, 2, 5];
    let gq = quant.loss(&x, &targets).unwrap().backward().unwrap();
    let gd = dense.loss(&x, &targets).unwrap().backward().unwrap();
    for ((name, q), (_, d)) in quant.params().zip(dense.params()) {
        let (a, b) = (values(gq.get(q).unwrap()), values(gd.get(d).unwrap()));
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff / scale < 1e-3, "{name}: {diff} of {scale}");
    }
    // The merged weights of both agree too (Q rows in the same order).
    let q = "model.layers.0.self_attn.q_proj.weight";
    let (a, b) = (
        values(&quant.effective_weight(q).unwrap()),
        values(&dense.effective_weight(q).unwrap()),
    );
    assert_eq!(a, b);
}

/// Writes `model`'s adapter as PEFT does, for the inference path to read.
fn write_peft(model: &TrainableLlama, dir: &std::path::Path) {
    let cfg = model.lora_config().unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        cfg.to_peft_json("tiny").to_string(),
    )
    .unwrap();
    let tensors: std::collections::HashMap<String, Tensor> = model
        .params()
        .map(|(n, v)| (format!("{}{n}", lora::PEFT_PREFIX), v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
}

/// The inference path (quantization-free here: f32 weights, attention in f32) runs an
/// adapter unmerged as the training path does, Q and K rows reordered into its pair
/// order; two adapters at half scale add up to one at full scale.
#[test]
fn the_inference_path_runs_adapters_unmerged() {
    use ferrollama_model::attention::Precision;
    use ferrollama_model::Llama;
    let all = [
        Part::Query,
        Part::Key,
        Part::Value,
        Part::AttnOutput,
        Part::Gate,
        Part::Up,
        Part::Down,
    ];
    let m = adapted(&all);
    let dir = tempfile::tempdir().unwrap();
    write_peft(&m, dir.path());
    let tokens: Vec<u32> = (0..10).map(|i| (i * 7 + 3) % 40).collect();
    let x = Tensor::from_slice(&tokens, (1, 10), &Device::Cpu).unwrap();
    let want = values(&m.forward(&x).unwrap());
    let base = TrainableLlama::init(tiny(), 3, 16).unwrap();
    let run = |adapters: &[f64]| -> Vec<f32> {
        let mut llama = Llama::load(&base, base.config.clone(), 16).unwrap();
        llama.set_attention_precision(Precision::F32);
        for &s in adapters {
            llama.attach_lora(dir.path(), s).unwrap();
        }
        let mut cache = llama.new_cache(16);
        llama
            .forward(&tokens, &mut cache, tokens.len())
            .unwrap()
            .into_vec()
    };
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let once = run(&[1.0]);
    assert!(
        diff(&once, &want) < 1e-4,
        "unmerged inference differs by {}",
        diff(&once, &want)
    );
    assert!(diff(&run(&[0.5, 0.5]), &once) < 1e-5);
    assert!(diff(&run(&[]), &want) > 1e-3, "the adapter changed nothing");
    // A damaged adapter is an error, not a silent no-op.
    std::fs::write(
        dir.path().join("adapter_model.safetensors"),
        b"not safetensors",
    )
    .unwrap();
    let mut llama = Llama::load(&base, base.config.clone(), 16).unwrap();
    assert!(llama.attach_lora(dir.path(), 1.0).is_err());
}

/// QLoRA on a base given in f32: the projections are kept in NF4 (double-quantized
/// scales), computing exactly what their dequantized values compute, and close to the
/// f32 base (NF4's rounding only).
#[test]
fn an_f32_base_is_kept_in_nf4() {
    let mut cfg = tiny();
    cfg.hidden_size = 64;
    cfg.head_dim = 16;
    cfg.intermediate_size = 128;
    let base = TrainableLlama::init(cfg.clone(), 3, 16).unwrap();
    let nf4 = TrainableLlama::from_source_quantized(&base, cfg.clone(), 16).unwrap();
    let x = ids();
    let (lb, lq) = (
        values(&base.forward(&x).unwrap()),
        values(&nf4.forward(&x).unwrap()),
    );
    let dequantized: BTreeMap<String, Tensor> = nf4
        .weight_names()
        .map(|n| (n.to_string(), nf4.effective_weight(n).unwrap()))
        .collect();
    let plain = TrainableLlama::from_tensors(cfg, dequantized, 16).unwrap();
    let ld = values(&plain.forward(&x).unwrap());
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(
        diff(&lq, &ld) < 1e-5,
        "nf4 against its dequantized weights: {}",
        diff(&lq, &ld)
    );
    let scale = lb.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(
        diff(&lq, &lb) > 0.0 && diff(&lq, &lb) < 0.1 * scale,
        "{} of {scale}",
        diff(&lq, &lb)
    );
    // The Q rows come back in the training order: the dequantized query is near the base's.
    let q = "model.layers.0.self_attn.q_proj.weight";
    let (a, b) = (
        values(&nf4.effective_weight(q).unwrap()),
        values(&base.effective_weight(q).unwrap()),
    );
    let wmax = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(diff(&a, &b) < 0.2 * wmax, "{} of {wmax}", diff(&a, &b));
}

/// The adapter trained on the tiny model (`tests/data/tiny/lora-r4`).
fn tiny_adapter() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny/lora-r4")
}

fn tiny_llama() -> ferrollama_model::Llama {
    let file = ferrollama_gguf::GgufFile::open(tiny_gguf()).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    ferrollama_model::Llama::load(&ferrollama_model::GgufWeights::new(&file), cfg, 64).unwrap()
}

/// Adapters selected per sequence: in one batched pass mixing sequences with the adapter,
/// without it and with another, each gets the logits it gets alone from a model with
/// that adapter applied to everything (or none); an id never loaded is an error.
#[test]
fn each_sequence_of_a_batch_runs_with_the_adapter_it_selects() {
    use ferrollama_model::llama::SeqBatch;
    let prompts: [&[u32]; 4] = [&[1, 7, 30, 200, 9], &[1, 7, 30, 200, 9], &[5, 6], &[1, 44]];
    let chosen = [Some(0), None, Some(1), Some(0)];
    // Alone: adapter 0 is lora-r4 at scale 1, adapter 1 the same at scale 0.5.
    let alone = |scale: Option<f64>, p: &[u32]| -> Vec<f32> {
        let mut m = tiny_llama();
        if let Some(s) = scale {
            m.attach_lora(&tiny_adapter(), s).unwrap();
        }
        let mut c = m.new_cache(32);
        m.forward(p, &mut c, p.len()).unwrap().into_vec()
    };
    let scales = [Some(1.0), None, Some(0.5), Some(1.0)];
    let want: Vec<Vec<f32>> = prompts
        .iter()
        .zip(scales)
        .map(|(p, s)| alone(s, p))
        .collect();
    let mut m = tiny_llama();
    assert_eq!(m.load_adapter(&tiny_adapter(), 1.0).unwrap(), 0);
    assert_eq!(m.load_adapter(&tiny_adapter(), 0.5).unwrap(), 1);
    assert_eq!(m.adapter_count(), 2);
    let mut caches: Vec<_> = (0..4).map(|_| m.new_cache(32)).collect();
    let seqs: Vec<SeqBatch> = prompts
        .iter()
        .zip(chosen)
        .map(|(p, adapter)| SeqBatch {
            tokens: p,
            outputs: p.len(),
            adapter,
        })
        .collect();
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let got = m.forward_batch(&seqs, &mut refs).unwrap().into_vec();
    let mut offset = 0;
    for (w, p) in want.iter().zip(prompts) {
        let g = &got[offset..offset + w.len()];
        offset += w.len();
        let worst = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "prompt {p:?}: logits differ by {worst}");
    }
    // The same prompt with and without the adapter: the adapter did something.
    let moved = want[0]
        .iter()
        .zip(&want[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 0.1, "the adapter moved the logits by only {moved}");
    let bad = SeqBatch {
        tokens: &[1, 2],
        outputs: 1,
        adapter: Some(2),
    };
    let mut c = m.new_cache(8);
    assert!(m.forward_batch(&[bad], &mut [&mut c]).is_err());
}
