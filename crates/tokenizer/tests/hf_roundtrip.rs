//! GGUF → `tokenizer.json` + `tokenizer_config.json` → tokenizer: the reloaded tokenizer
//! must encode every test-vector string (with and without specials) and every
//! smollm2-tokenize.json string to the same ids, decode them to the same bytes, and agree
//! on BOS/EOS/EOG.

mod common;

use anyhow::Result;
use ferrollama_tokenizer::Tokenizer;

/// Strings to compare on: the vector cases of `vectors` plus chat-style text with specials.
fn texts(vectors: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = common::cases(vectors)?
        .into_iter()
        .map(|c| c.text)
        .collect();
    out.extend(
        [
            "<s>Hello</s> <unk>",
            "<|im_start|>user\nHi!<|im_end|>\n",
            "<|begin_of_text|><|start_header_id|>x<|eot_id|>",
            "<|endoftext|>a",
        ]
        .map(String::from),
    );
    Ok(out)
}

fn round_trip(tok: &Tokenizer, texts: &[String]) -> Result<()> {
    let json = tok.to_tokenizer_json();
    let config = tok.to_tokenizer_config_json(None);
    let back = Tokenizer::from_hf_json(&json, Some(&config))?;
    assert_eq!(back.vocab_size(), tok.vocab_size());
    assert_eq!(
        (back.bos(), back.eos(), back.eot()),
        (tok.bos(), tok.eos(), tok.eot())
    );
    assert_eq!(
        (back.add_bos(), back.add_eos(), back.add_space_prefix()),
        (tok.add_bos(), tok.add_eos(), tok.add_space_prefix())
    );
    assert_eq!(
        back.eog_ids().collect::<Vec<_>>(),
        tok.eog_ids().collect::<Vec<_>>()
    );
    let mut failures = Vec::new();
    for text in texts {
        for (add, parse) in [(false, false), (true, true)] {
            let want = tok.encode(text, add, parse);
            let got = back.encode(text, add, parse);
            if want != got {
                failures.push(format!(
                    "{text:?} (special {add}): gguf {want:?}\n  json {got:?}"
                ));
            }
            assert_eq!(
                back.decode(&want, false)?,
                tok.decode(&want, false)?,
                "decode of {text:?}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} encodings differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn llama_spm() -> Result<()> {
    round_trip(&common::vocab("llama-spm")?, &texts("llama-spm")?)
}

#[test]
fn gpt_2() -> Result<()> {
    round_trip(&common::vocab("gpt-2")?, &texts("gpt-2")?)
}

#[test]
fn llama_bpe() -> Result<()> {
    round_trip(&common::vocab("llama-bpe")?, &texts("llama-bpe")?)
}

#[test]
fn mpt_user_defined() -> Result<()> {
    round_trip(&common::vocab("mpt")?, &texts("mpt")?)
}

#[test]
fn smollm2_through_a_directory() -> Result<()> {
    let tok = common::smollm2()?;
    let dir =
        std::env::temp_dir().join(format!("ferrollama-tokenizer-test-{}", std::process::id()));
    tok.write_hf_dir(&dir, None)?;
    let back = Tokenizer::from_hf_dir(&dir)?;
    std::fs::remove_dir_all(&dir)?;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(common::data(
        "smollm2-tokenize.json",
    ))?)?;
    let mut texts = texts("gpt-2")?;
    for case in json["cases"].as_array().into_iter().flatten() {
        texts.push(case["text"].as_str().unwrap_or_default().to_string());
    }
    for text in &texts {
        assert_eq!(
            back.encode(text, true, true),
            tok.encode(text, true, true),
            "{text:?}"
        );
        assert_eq!(
            back.encode(text, false, false),
            tok.encode(text, false, false),
            "{text:?}"
        );
    }
    round_trip(&tok, &texts)
}
