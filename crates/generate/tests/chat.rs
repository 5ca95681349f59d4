//! Chat prompts: the default model's own Jinja template, and Llama 2's format exactly as
//! Meta's reference `chat_completion` builds it (on llama.cpp's Llama SentencePiece vocab).

use ferrollama_generate::{ChatFormat, Message};
use ferrollama_gguf::GgufFile;
use ferrollama_tokenizer::Tokenizer;

fn tokenizer(path: std::path::PathBuf) -> (Tokenizer, GgufFile) {
    let file = GgufFile::open(path).unwrap();
    (Tokenizer::from_gguf(&file.header).unwrap(), file)
}

#[test]
fn smollm2_template_renders_chatml() {
    let (tok, file) = tokenizer(ferrollama_assets::default_model().unwrap());
    let template = file.header.get_str("tokenizer.chat_template").unwrap();
    let msgs = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
    ];
    let text = ferrollama_generate::chat::render_template(template, &msgs, &tok).unwrap();
    assert_eq!(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    let ids = ChatFormat::for_model(Some(template))
        .encode(&msgs, &tok)
        .unwrap();
    assert_eq!(ids[0], tok.token_id("<|im_start|>").unwrap());
    assert_eq!(
        String::from_utf8(tok.decode(&ids, false).unwrap()).unwrap(),
        text
    );
}

#[test]
fn llama2_format_matches_meta_reference() {
    let (tok, _) = tokenizer(ferrollama_assets::vocab_file("ggml-vocab-llama-spm.gguf").unwrap());
    let msgs = [
        Message::new("system", "Answer briefly."),
        Message::new("user", " What is 2+2? "),
        Message::new("assistant", "4"),
        Message::new("user", "And 3+3?"),
    ];
    let ids = ChatFormat::Llama2.encode(&msgs, &tok).unwrap();
    // Meta: [BOS] + sp.encode("[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{user} [/INST] {answer} ")
    // + [EOS], then [BOS] + sp.encode("[INST] {user} [/INST]"). Meta strips the merged
    // system+user content as a whole, so the user's own leading space survives after E_SYS.
    let (bos, eos) = (tok.bos().unwrap(), tok.eos().unwrap());
    assert_eq!(ids.iter().filter(|&&i| i == bos).count(), 2);
    assert_eq!(ids[0], bos);
    let eos_at = ids.iter().position(|&i| i == eos).unwrap();
    assert_eq!(ids[eos_at + 1], bos);
    let first = String::from_utf8(tok.decode(&ids[1..eos_at], false).unwrap()).unwrap();
    let second = String::from_utf8(tok.decode(&ids[eos_at + 2..], false).unwrap()).unwrap();
    assert_eq!(
        first.trim_start(),
        "[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>\n\n What is 2+2? [/INST] 4 "
    );
    assert_eq!(second.trim_start(), "[INST] And 3+3? [/INST]");
    // SentencePiece adds its dummy prefix: "[INST]" starts with the space marker.
    assert_eq!(tok.piece(ids[1]), Some("▁["));
}

#[test]
fn llama2_format_rejects_bad_turn_order() {
    let (tok, _) = tokenizer(ferrollama_assets::vocab_file("ggml-vocab-llama-spm.gguf").unwrap());
    let msgs = [Message::new("assistant", "hi")];
    let err = ChatFormat::Llama2
        .encode(&msgs, &tok)
        .unwrap_err()
        .to_string();
    assert!(err.contains("turn 1 is `assistant`"), "{err}");
}

#[test]
fn broken_template_is_an_error() {
    let (tok, _) = tokenizer(ferrollama_assets::default_model().unwrap());
    let err = ferrollama_generate::chat::render_template("{% for %}", &[], &tok).unwrap_err();
    assert!(err.to_string().starts_with("chat template:"), "{err}");
    let err = ferrollama_generate::chat::render_template(
        "{{ raise_exception('no system role') }}",
        &[],
        &tok,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no system role"), "{err}");
}

/// A template is a program from a model file: one that loops for ever, recurses without
/// end or writes without bound ends in an error, quickly, while a long real conversation
/// renders.
#[test]
fn hostile_templates_end_in_errors() {
    let (tok, file) = tokenizer(ferrollama_assets::default_model().unwrap());
    let render = |t: &str, msgs: &[Message]| {
        let start = std::time::Instant::now();
        let r = ferrollama_generate::chat::render_template(t, msgs, &tok);
        (r, start.elapsed())
    };
    let hi = [Message::new("user", &"x".repeat(1000))];
    for (template, says) in [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "fuel",
        ),
        (
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "recursion",
        ),
        (
            "{% for i in range(10000) %}{{ messages[0].content }}{% endfor %}",
            "output passed",
        ),
    ] {
        let (r, took) = render(template, &hi);
        let err = r.unwrap_err().to_string();
        assert!(err.to_lowercase().contains(says), "{template}: {err}");
        assert!(took.as_secs() < 5, "{template}: {took:?}");
    }
    // 400 turns with SmolLM2's own template stay well inside the limits.
    let template = file.header.get_str("tokenizer.chat_template").unwrap();
    let long: Vec<Message> = (0..400)
        .map(|i| {
            Message::new(
                if i % 2 == 0 { "user" } else { "assistant" },
                "Tell me more.",
            )
        })
        .collect();
    let (r, _) = render(template, &long);
    // The template adds its default system message: 1 + 400 turns + the generation prompt.
    assert_eq!(r.unwrap().matches("<|im_start|>").count(), 402);
}
