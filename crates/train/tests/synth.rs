//! Context distillation and Ghost Attention data on the committed tiny model: the
//! pre-prompt shapes the answers but never appears in the records; targeted distillation
//! keeps exactly the answers scored above the plain ones; Ghost Attention's answers after
//! the first turn differ from those sampled with the instruction given once, its records
//! carry the instruction on the first turn only and learn one turn each.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ferrollama_generate::Message;
use ferrollama_train::policy::{Prompt, Reward, Sampling};
use ferrollama_train::sft::Conversation;
use ferrollama_train::synth::{distill, gatt, Learned, Placement, PreContext};

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny/tiny-260k-q8_0.gguf")
}

fn sampling() -> Sampling {
    Sampling {
        temperature: 0.0,
        top_p: 1.0,
        max_new_tokens: 16,
        stop: vec![".".into()],
        parallel: 4,
    }
}

struct Short;

impl Reward for Short {
    fn scores(&self, c: &[Conversation], _: &[bool]) -> ferrollama_train::Result<Vec<f64>> {
        Ok(c.iter()
            .map(|c| -(c.messages.last().unwrap().content.len() as f64))
            .collect())
    }
}

#[test]
fn distilled_answers_lose_the_preprompt_and_targeting_keeps_improvements() {
    let prompts: Vec<Prompt> = ["Once upon a time", "The cat", "A big dog", "Lily went"]
        .iter()
        .map(|p| Prompt {
            messages: vec![Message::new("user", p)],
            unsafe_prompt: false,
        })
        .collect();
    let go = AtomicBool::new(false);
    let pre = "Tom was a kind boy who liked to play with his red ball in the park.";
    let plain = distill(
        &tiny_model(),
        &prompts,
        &PreContext::new(pre, Placement::User),
        &sampling(),
        1,
        None,
        &go,
        &mut |_, _, _| {},
    )
    .unwrap()
    .unwrap();
    let targeted = distill(
        &tiny_model(),
        &prompts,
        &PreContext::new(pre, Placement::User),
        &sampling(),
        1,
        Some(&Short),
        &go,
        &mut |_, _, _| {},
    )
    .unwrap()
    .unwrap();
    assert_eq!(plain.len(), 4);
    let mut differs = false;
    for (p, t) in plain.iter().zip(&targeted) {
        assert_eq!(p.answer, t.answer);
        let (without, with_score, without_score) = t.plain.clone().unwrap();
        assert_eq!(with_score, -(t.answer.len() as f64));
        assert_eq!(without_score, -(without.len() as f64));
        assert_eq!(t.kept(), t.finished && with_score > without_score);
        differs |= without != t.answer;
        let rec = t.record(&prompts[t.prompt]);
        let text = rec.to_string();
        assert!(!text.contains("kind boy"), "{text}");
        assert_eq!(
            rec["messages"][0]["content"],
            prompts[t.prompt].messages[0].content.as_str()
        );
        assert_eq!(rec["messages"][1]["content"], t.answer.as_str());
    }
    assert!(differs, "the pre-prompt changed no answer: {targeted:?}");
}

#[test]
fn gatt_samples_with_the_instruction_on_every_turn_and_writes_it_once() {
    let dialogues: Vec<Vec<String>> = (0..3)
        .map(|d| {
            (0..3)
                .map(|t| format!("Tell me about day {} of the trip", d * 3 + t))
                .collect()
        })
        .collect();
    let inst = vec!["Lily and Tom went to the big park to play with the ball".to_string()];
    let go = AtomicBool::new(false);
    let drawn = Sampling {
        temperature: 1.0,
        ..sampling()
    };
    let run = |every| {
        gatt(
            &tiny_model(),
            &dialogues,
            &inst,
            every,
            Placement::User,
            &drawn,
            7,
            &go,
            &mut |_, _, _| {},
        )
        .unwrap()
        .unwrap()
    };
    let (every, first) = (run(true), run(false));
    let mut later_differ = false;
    for (e, f) in every.iter().zip(&first) {
        assert_eq!(e.turns.len(), 3);
        // The first turn is asked the same way in both.
        assert_eq!(e.turns[0], f.turns[0]);
        later_differ |= e.turns[1..] != f.turns[1..];
        let recs = e.records(Learned::EveryTurn, Placement::User);
        assert_eq!(recs.len(), 3);
        for (k, r) in recs.iter().enumerate() {
            let text = r["messages"].to_string();
            assert_eq!(text.matches("big park").count(), 1, "{text}");
            let c = ferrollama_train::sft::conversation_from_record(r).unwrap();
            assert_eq!(c.unlearned.len(), k);
            assert_eq!(c.messages.last().unwrap().content, e.turns[k].1);
        }
    }
    assert!(
        later_differ,
        "the instruction on later turns changed nothing: {every:?} {first:?}"
    );
    assert!(gatt(
        &tiny_model(),
        &dialogues,
        &[" ".to_string()],
        true,
        Placement::User,
        &sampling(),
        7,
        &go,
        &mut |_, _, _| {}
    )
    .is_err());
}
