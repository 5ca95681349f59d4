//! Conversations as supervised fine-tuning data (`ChatFormat::encode_for_training`) on the
//! tiny committed model's tokenizer: only the assistant's tokens are scored, each reply with
//! its end-of-turn text or EOS (a model trained without them never learns to stop), the
//! prompts never; the tokens are the conversation's, and Llama 2's agree with the prompts
//! inference builds.

use std::path::PathBuf;

use ferrollama_generate::chat::TrainingSample;
use ferrollama_generate::{ChatFormat, Message};
use ferrollama_tokenizer::Tokenizer;

fn tok() -> Tokenizer {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/tiny/tiny-260k-q8_0.gguf"
    ));
    Tokenizer::from_gguf_path(path).unwrap()
}

/// ChatML, as SmolLM2's and many models' templates write it.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn scored_text(t: &Tokenizer, s: &TrainingSample) -> Vec<String> {
    // Runs of scored tokens, decoded.
    let mut runs = Vec::new();
    let mut cur = Vec::new();
    for (&id, &on) in s.tokens.iter().zip(&s.scored) {
        if on {
            cur.push(id);
        } else if !cur.is_empty() {
            runs.push(t.decode_lossy(&cur, false).unwrap());
            cur.clear();
        }
    }
    if !cur.is_empty() {
        runs.push(t.decode_lossy(&cur, false).unwrap());
    }
    runs
}

fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "Be brief."),
        Message::new("user", "Capital of France?"),
        Message::new("assistant", "Paris."),
        Message::new("user", "And of Italy?"),
        Message::new("assistant", "Rome."),
    ]
}

#[test]
fn a_template_scores_each_reply_with_its_end_of_turn() {
    let t = tok();
    let f = ChatFormat::Template(CHATML.into());
    let s = f.encode_for_training(&conversation(), &t).unwrap();
    assert_eq!(s.tokens.len(), s.scored.len());
    assert_eq!(
        scored_text(&t, &s),
        ["Paris.<|im_end|>\n", "Rome.<|im_end|>\n"]
    );
    // Every token is the conversation's.
    let text = t.decode_lossy(&s.tokens, false).unwrap();
    assert!(
        text.ends_with("<|im_start|>assistant\nRome.<|im_end|>\n"),
        "{text}"
    );
    assert!(!s.scored[0]);
}

#[test]
fn llama2_scores_answers_and_eos_and_agrees_with_inference() {
    let t = tok();
    let f = ChatFormat::Llama2;
    let conv = conversation();
    let s = f.encode_for_training(&conv, &t).unwrap();
    let eos = t.eos().unwrap();
    let runs = scored_text(&t, &s);
    assert_eq!(runs.len(), 2);
    assert!(runs[0].trim_start().starts_with("Paris."), "{runs:?}");
    // Each scored run ends with EOS.
    for (i, (&id, &on)) in s.tokens.iter().zip(&s.scored).enumerate() {
        if id == eos {
            assert!(on, "EOS at {i} is not scored");
        }
    }
    // The prompt inference builds for the last user turn is the training tokens' prefix.
    let prompt = f.encode(&conv[..4], &t).unwrap();
    assert_eq!(&s.tokens[..prompt.len()], &prompt[..]);
    assert!(
        s.scored[..prompt.len()].iter().filter(|&&x| x).count() > 0,
        "the first answer is scored"
    );
}

#[test]
fn conversations_without_a_reply_or_with_a_template_that_does_not_grow_are_refused() {
    let t = tok();
    let f = ChatFormat::Template(CHATML.into());
    assert!(f
        .encode_for_training(&[Message::new("user", "hi")], &t)
        .is_err());
    // A template that prints the last message first cannot be split into turns.
    let odd =
        ChatFormat::Template("{% for m in messages|reverse %}{{ m.content }};{% endfor %}".into());
    let conv = [Message::new("user", "a"), Message::new("assistant", "b")];
    assert!(odd.encode_for_training(&conv, &t).is_err());
}
