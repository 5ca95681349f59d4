//! The dependency probe on the default model and six EWT test sentences
//! (tests/data/ewt-test-excerpt.conllu, CC BY-SA 4.0): with the grammar every answer
//! parses and keeps the gold tokens; the scores count what they should.

use std::sync::{Arc, OnceLock};

use ferrollama_generate::{grammar_vocabulary, ChatFormat};
use ferrollama_gguf::GgufFile;
use ferrollama_grammar::Vocabulary;
use ferrollama_model::{Config, GgufWeights, Llama};
use ferrollama_probe::conllu::{self, Sentence};
use ferrollama_probe::dependency::{self, Settings, Shots};
use ferrollama_tokenizer::Tokenizer;

struct Fixture {
    model: Llama,
    tok: Tokenizer,
    vocab: Arc<Vocabulary>,
    template: Option<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let file = GgufFile::open(ferrollama_assets::default_model().unwrap()).unwrap();
        let tok = Tokenizer::from_gguf(&file.header).unwrap();
        let template = file
            .header
            .get_str("tokenizer.chat_template")
            .ok()
            .map(str::to_string);
        let model = Llama::load(
            &GgufWeights::new(&file),
            Config::from_gguf(&file).unwrap(),
            2048,
        )
        .unwrap();
        let vocab = grammar_vocabulary(&tok);
        Fixture {
            model,
            tok,
            vocab,
            template,
        }
    })
}

fn gold() -> Vec<Sentence> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ewt-test-excerpt.conllu"
    ))
    .unwrap();
    conllu::read(&text).unwrap()
}

#[test]
fn constrained_answers_all_parse_with_the_gold_tokens() {
    let f = fixture();
    let gold = gold();
    for (shots, chat) in [(Shots::Two, false), (Shots::Zero, true)] {
        let settings = Settings {
            shots,
            constrained: true,
            parallel: 3,
            chat: chat.then(|| ChatFormat::for_model(f.template.as_deref())),
        };
        let outcomes =
            dependency::probe(&f.model, &f.tok, &f.vocab, &gold, &settings, &mut |_| {}).unwrap();
        let scores = dependency::score(&gold, &outcomes);
        assert_eq!(scores.parsed, gold.len(), "{outcomes:#?}");
        assert_eq!(scores.aligned, gold.len());
        assert_eq!(
            scores.words,
            gold.iter().map(|s| s.words.len()).sum::<usize>()
        );
        assert!(scores.las() <= scores.uas() && scores.uas() <= 1.0);
    }
}

#[test]
fn gold_analyses_score_perfectly_and_make_training_examples() {
    let gold = gold();
    let mut s = dependency::Scores::default();
    for g in &gold {
        s.add(g, Some(g));
    }
    assert_eq!((s.upos(), s.uas(), s.las()), (1.0, 1.0, 1.0));
    // The training answer is what the grammar takes, relations as UD's universal ones.
    let (prompt, answer) = dependency::training_example(&gold[2], Shots::Zero);
    assert!(
        prompt.ends_with("Sentence: \"Google is a nice search engine.\""),
        "{prompt}"
    );
    let tokens: Vec<String> = gold[2].words.iter().map(|w| w.form.clone()).collect();
    let g = ferrollama_grammar::parse(&dependency::prompt::grammar(&tokens, "")).unwrap();
    assert!(
        ferrollama_grammar::matches(&g, &answer).unwrap(),
        "{answer}"
    );
    let parsed = dependency::Analysis::parse(&answer).unwrap();
    assert_eq!(parsed.deps[0], "nsubj");
    assert_eq!(
        parsed.heads[1],
        Some(5),
        "\"is\" is the copula of \"engine\""
    );
}
