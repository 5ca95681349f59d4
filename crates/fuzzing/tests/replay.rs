//! Every seed and every past finding of the fuzzers, replayed through the targets' bodies on
//! the stable toolchain: a finding fixed once stays fixed. And the seeds must reach past
//! the parsers (a model seed that no longer loads would leave its target fuzzing only the
//! first error path, silently).

use std::path::{Path, PathBuf};

use ferrollama_fuzzing::{parts, TARGETS};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `seeds/<target>` or `regressions/<target>`, sorted.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_past_finding_runs_clean() {
    let mut seeds = 0;
    for t in TARGETS {
        let own = inputs("seeds", t.name);
        assert!(!own.is_empty(), "target `{}` has no seeds", t.name);
        seeds += own.len();
        for path in own.iter().chain(&inputs("regressions", t.name)) {
            let data = std::fs::read(path).unwrap();
            eprintln!("{}: {}", t.name, path.display());
            (t.run)(&data);
        }
    }
    assert!(seeds >= TARGETS.len());
}

/// Every directory under `regressions/` belongs to a target (a typo would skip its files).
#[test]
fn regressions_are_filed_under_real_targets() {
    if let Ok(entries) = std::fs::read_dir(root().join("regressions")) {
        for e in entries.flatten().filter(|e| e.path().is_dir()) {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                ferrollama_fuzzing::target(&name).is_some(),
                "regressions/{name} is no target"
            );
        }
    }
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(root().join("seeds").join(target).join(name)).unwrap()
}

#[test]
fn the_model_seeds_load_and_run() {
    use ferrollama_generate::{Bundle, OpenOptions};
    let dir = tempdir("gguf");
    let path = dir.join("micro.gguf");
    std::fs::write(&path, seed("gguf", "micro-llama.gguf")).unwrap();
    let opts = OpenOptions {
        ctx: Some(16),
        pack_cache_dir: None,
        ..OpenOptions::default()
    };
    let bundle = Bundle::open(&path, &opts).unwrap();
    assert!(bundle.chat_template.is_some());
    let mut cache = bundle.model.new_cache(16);
    bundle.model.forward(&[1, 2], &mut cache, 1).unwrap();

    let p = seed("safetensors", "micro-single");
    let p = parts::split(&p, 4);
    let dir = tempdir("hf");
    std::fs::write(dir.join("config.json"), p[0]).unwrap();
    std::fs::write(dir.join("model.safetensors"), p[1]).unwrap();
    let cfg = ferrollama_model::hf::config_from_hf(&dir).unwrap();
    let w = ferrollama_model::hf::HfWeights::open(&dir, cfg.clone()).unwrap();
    ferrollama_model::Llama::load(&w, cfg, 16).unwrap();
}

#[test]
fn the_tokenizer_and_adapter_seeds_load() {
    let p = seed("tokenizer_json", "tiny-spm");
    let p = parts::split(&p, 3);
    let json = std::str::from_utf8(p[0]).unwrap();
    let config = std::str::from_utf8(p[1]).unwrap();
    ferrollama_tokenizer::Tokenizer::from_hf_json(json, Some(config)).unwrap();
    let p = seed("tokenizer_model", "spm-bpe-1k");
    ferrollama_tokenizer::Tokenizer::from_sentencepiece_bytes(parts::split(&p, 2)[0]).unwrap();

    let p = seed("lora_adapter", "lora-r4");
    let p = parts::split(&p, 2);
    let dir = tempdir("lora");
    std::fs::write(dir.join("adapter_config.json"), p[0]).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), p[1]).unwrap();
    let tiny = root().join("../../tests/data/tiny/tiny-260k-q8_0.gguf");
    let file = ferrollama_gguf::GgufFile::open(tiny).unwrap();
    let cfg = ferrollama_model::Config::from_gguf(&file).unwrap();
    ferrollama_model::adapters::inference_deltas(&cfg, &dir, 1.0).unwrap();
}

#[test]
fn the_grammar_seeds_compile() {
    for path in inputs("seeds", "gbnf") {
        let data = std::fs::read(&path).unwrap();
        let texts = parts::texts(&data, 2);
        let g = ferrollama_grammar::parse(&texts[0]).unwrap();
        assert!(
            ferrollama_grammar::matches(&g, &texts[1]).unwrap(),
            "{}: its text does not match",
            path.display()
        );
    }
    for path in inputs("seeds", "json_schema") {
        let text = std::fs::read_to_string(&path).unwrap();
        ferrollama_grammar::schema_to_gbnf(&text).unwrap();
    }
}

fn tempdir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ferrollama-fuzz-seeds-{what}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
