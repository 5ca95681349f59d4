//! A small corpus and tokenizer for the training tests, made in the test so nothing large
//! is committed.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ferrollama_tokenizer::train::{train_spm_bpe, TrainerOptions};
use ferrollama_tokenizer::Tokenizer;

/// Sentences written for these tests, recombined into `n` documents.
pub fn documents(n: usize) -> Vec<String> {
    let s = [
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "A lazy afternoon by the river: the dog sleeps while the fox watches.",
        "In 1984 the weather was cold, and in 2023 it was warmer than ever.",
        "Counting pairs and merging the most frequent one builds a vocabulary.",
        "The river flows, the fox runs, and the dog barks at the brown fox.",
        "Small models learn quickly when the text repeats what they have seen.",
    ];
    (0..n)
        .map(|i| {
            (0..4)
                .map(|j| s[(i * 5 + j * 7 + i / 3) % s.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

pub fn tokenizer() -> Tokenizer {
    let opts = TrainerOptions {
        vocab_size: 320,
        ..TrainerOptions::default()
    };
    Tokenizer::from_vocab(train_spm_bpe(&documents(60), &opts).unwrap()).unwrap()
}

/// A fresh directory under the system's temp directory.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrollama-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes the corpus as a fortune-style file: documents separated by `%` lines.
pub fn write_corpus(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("corpus.txt");
    std::fs::write(&path, documents(n).join("\n%\n")).unwrap();
    path
}

/// The committed tiny GGUF model (260k parameters, Q8_0).
pub fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny/tiny-260k-q8_0.gguf")
}

/// A rule as the reward, for RS and PPO: shorter answers are better (minus the answer's
/// length in characters, over ten), so what training should do is known.
pub struct Short;

impl ferrollama_train::policy::Reward for Short {
    fn scores(
        &self,
        conversations: &[ferrollama_train::sft::Conversation],
        _: &[bool],
    ) -> ferrollama_train::Result<Vec<f64>> {
        Ok(conversations
            .iter()
            .map(|c| -(c.messages.last().unwrap().content.chars().count() as f64) / 10.0)
            .collect())
    }
}

/// 40 prompts ("Tell me about the cat and the tree.") in `dir/prompts.jsonl`.
pub fn write_prompts(dir: &Path) -> PathBuf {
    let words = [
        "cat", "dog", "sun", "tree", "boat", "rain", "star", "fish", "bird", "moon", "king",
        "ship", "road", "sand", "wind", "fire",
    ];
    let mut text = String::new();
    for i in 0..40 {
        let (a, b) = (words[i % 16], words[(i * 7 + 3) % 16]);
        text.push_str(&format!(
            "{}\n",
            serde_json::json!({"prompt": format!("Tell me about the {a} and the {b}.")})
        ));
    }
    let path = dir.join("prompts.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}
