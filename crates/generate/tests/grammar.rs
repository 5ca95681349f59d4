//! Constrained generation on the default model: every output is a sentence of its grammar.

use std::sync::{Arc, OnceLock};

use ferrollama_generate::{
    constraint, grammar_vocabulary, FinishReason, GenerateParams, Generator, GrammarSource,
};
use ferrollama_gguf::GgufFile;
use ferrollama_grammar::{matches, parse, Vocabulary};
use ferrollama_model::{Config, GgufWeights, Llama};
use ferrollama_sampling::SamplingParams;
use ferrollama_tokenizer::Tokenizer;

struct Fixture {
    model: Llama,
    tok: Tokenizer,
    vocab: Arc<Vocabulary>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let file = GgufFile::open(ferrollama_assets::default_model().unwrap()).unwrap();
        let tok = Tokenizer::from_gguf(&file.header).unwrap();
        let model = Llama::load(
            &GgufWeights::new(&file),
            Config::from_gguf(&file).unwrap(),
            512,
        )
        .unwrap();
        let vocab = grammar_vocabulary(&tok);
        Fixture { model, tok, vocab }
    })
}

fn grammar_file(name: &str) -> String {
    let path = format!(
        "{}/../grammar/tests/data/llama-cpp-grammars/{name}.gbnf",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path).unwrap()
}

fn run(
    prompt: &str,
    source: &GrammarSource,
    sampling: SamplingParams,
    n: usize,
) -> (String, FinishReason) {
    let f = fixture();
    let params = GenerateParams {
        max_new_tokens: n,
        sampling,
        grammar: Some(constraint(source, &f.vocab).unwrap()),
        ..GenerateParams::default()
    };
    let ids = f.tok.encode(prompt, true, true);
    let mut g = Generator::new(&f.model, &f.tok, 512);
    let out = g.generate(&ids, &params, |_| true).unwrap();
    (out.text, out.finish_reason)
}

/// Finished outputs are sentences of the grammar; outputs cut by the token limit are
/// prefixes of one.
fn assert_follows(source: &GrammarSource, text: &str, finish: FinishReason) {
    let f = fixture();
    let grammar = parse(&source.to_gbnf().unwrap()).unwrap();
    match finish {
        FinishReason::Stop => assert!(matches(&grammar, text).unwrap(), "not a sentence: {text:?}"),
        FinishReason::Length => {
            let mut c = constraint(source, &f.vocab).unwrap();
            // The text may end inside a character (shown as U+FFFD): check whole ones.
            let text = text.trim_end_matches('\u{FFFD}');
            assert!(
                c.accept_bytes(text.as_bytes()).is_ok(),
                "not a prefix: {text:?}"
            );
        }
        other => panic!("unexpected finish {other:?}"),
    }
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed,
        ..SamplingParams::default()
    }
}

#[test]
fn llama_cpp_grammars_are_followed_greedy_and_sampled() {
    let cases = [
        ("chess", "A chess game in PGN:\n"),
        ("arithmetic", "Some sums:\n"),
        ("json", "A JSON object describing a book:\n"),
        ("list", "A shopping list:\n"),
        ("c", "A C program:\n"),
        ("japanese", "こんにちは、"),
        ("english", "An English sentence:"),
    ];
    let mut finished = 0;
    for (name, prompt) in cases {
        let source = GrammarSource::Gbnf(grammar_file(name));
        for sampling in [SamplingParams::greedy(), sampled(1), sampled(2)] {
            let (text, finish) = run(prompt, &source, sampling, 40);
            assert_follows(&source, &text, finish);
            finished += usize::from(finish == FinishReason::Stop);
        }
    }
    assert!(
        finished > 0,
        "no output ever finished: only prefixes were checked"
    );
}

#[test]
fn json_schemas_give_parseable_json() {
    let schemas = [
        r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}}, "required": ["name", "age"]}"#,
        r#"{"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3}"#,
        r#"{"type": "object", "properties": {"ok": {"type": "boolean"}, "score": {"type": "number"}}, "required": ["ok"]}"#,
    ];
    for schema in schemas {
        let source = GrammarSource::JsonSchema(schema.into());
        for sampling in [SamplingParams::greedy(), sampled(7)] {
            let (text, finish) = run("Answer in JSON:\n", &source, sampling, 60);
            assert_follows(&source, &text, finish);
            if finish == FinishReason::Stop {
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{e}: {text}"));
            }
        }
    }
}

#[test]
fn a_grammar_that_allows_everything_changes_nothing() {
    // `.*` allows every text token and the end at any point: greedy output is the
    // unconstrained one, token for token (the fast path and the mask agree with argmax).
    let f = fixture();
    let prompt = f.tok.encode("The capital of France is", true, true);
    let plain = GenerateParams {
        max_new_tokens: 24,
        sampling: SamplingParams::greedy(),
        ..GenerateParams::default()
    };
    let want = Generator::new(&f.model, &f.tok, 512)
        .generate(&prompt, &plain, |_| true)
        .unwrap();
    let source = GrammarSource::Gbnf("root ::= .*".into());
    let (text, _) = run(
        "The capital of France is",
        &source,
        SamplingParams::greedy(),
        24,
    );
    assert_eq!(text, want.text);
}

#[test]
fn a_finished_grammar_ends_generation_at_once() {
    let source = GrammarSource::Gbnf(r#"root ::= " Paris" | " Rome""#.into());
    let (text, finish) = run(
        "The capital of France is",
        &source,
        SamplingParams::greedy(),
        50,
    );
    assert_eq!(finish, FinishReason::Stop);
    assert!(text == " Paris" || text == " Rome", "{text}");
}
