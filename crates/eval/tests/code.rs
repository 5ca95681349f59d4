//! Code tasks on committed excerpts (`tests/data/eval/`: HumanEval, MBPP and Rust MBPP
//! request files): the programs built from a completion pass with the reference solution
//! and fail with a wrong one; model-written attacks end as failed samples, promptly; and a
//! run on the tiny model is scored and logged whatever the batch size.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferrollama_eval::code::exec::Runner;
use ferrollama_eval::code::problems::{self, CodeTask};
use ferrollama_eval::code::run::{evaluate, keep_valid, CodeOptions};
use ferrollama_eval::harness::report;
use ferrollama_generate::{Bundle, OpenOptions};

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn task(name: &str) -> CodeTask {
    problems::load(name, &repo().join("tests/data/eval")).unwrap()
}

fn program(t: &CodeTask, i: usize, completion: &str) -> String {
    let p = &t.problems[i];
    format!("{}{completion}{}", p.before, p.after)
}

fn field(t: &CodeTask, i: usize, k: &str) -> String {
    t.problems[i].doc[k].as_str().unwrap().to_string()
}

#[test]
fn reference_solutions_pass_and_wrong_ones_fail() {
    let runner = Runner::new();
    let he = task("humaneval");
    assert_eq!(he.problems.len(), 3);
    for i in 0..3 {
        let right = runner
            .run(
                he.language,
                &program(&he, i, &field(&he, i, "canonical_solution")),
            )
            .unwrap();
        assert!(right.passed, "HumanEval {i}: {right:?}");
        let wrong = runner
            .run(he.language, &program(&he, i, "    return None\n"))
            .unwrap();
        assert!(
            !wrong.passed && wrong.result.starts_with("failed"),
            "{wrong:?}"
        );
    }
    let mbpp = task("mbpp");
    assert!(mbpp.problems[0]
        .prompt
        .contains("[DONE]\n\nYou are an expert Python programmer"));
    assert!(mbpp.problems[0].prompt.ends_with("[BEGIN]\n"));
    for i in 0..mbpp.problems.len() {
        let right = runner
            .run(mbpp.language, &program(&mbpp, i, &field(&mbpp, i, "code")))
            .unwrap();
        assert!(right.passed, "MBPP {i}: {right:?}");
    }
    let wrong = runner
        .run(
            mbpp.language,
            &program(&mbpp, 0, "def remove_Occ(s, ch):\n  return s\n"),
        )
        .unwrap();
    assert!(!wrong.passed);
}

#[test]
fn rust_problems_keep_only_what_their_reference_passes() {
    let runner = Runner::new();
    let mut rust = task("mbpp_rust");
    let translated = rust.problems.len();
    assert!(translated >= 2, "{:?}", rust.left_out);
    let failures = keep_valid(&runner, &mut rust, 2, &|_| {}).unwrap();
    assert_eq!(rust.problems.len() + failures.len(), translated);
    assert!(!rust.problems.is_empty(), "{failures:?}");
    let p = &rust.problems[0];
    assert!(
        p.prompt.ends_with(&p.before),
        "the prompt ends with the signature"
    );
    // The reference's body, cut from its source, passes as a completion; an empty body
    // does not compile.
    let code = p.doc["code"].as_str().unwrap();
    let header_end = code
        .find(p.before.trim_end().lines().last().unwrap())
        .unwrap()
        + p.before.trim_end().lines().last().unwrap().len();
    let body_end = code[header_end..].find("\n}").unwrap() + header_end;
    let body = &code[header_end + 1..body_end];
    let right = runner.run(rust.language, &program(&rust, 0, body)).unwrap();
    assert!(right.passed, "{right:?}\n{}", program(&rust, 0, body));
    let empty = runner.run(rust.language, &program(&rust, 0, "")).unwrap();
    assert_eq!(empty.result, "compile error");
}

/// What a model might write instead of a solution: each ends as a failed sample, within
/// its limits, and the run goes on.
#[test]
fn hostile_completions_end_as_failed_samples() {
    let runner = Runner::new();
    let he = task("humaneval");
    let outside = tempfile::tempdir().unwrap();
    let escaped = outside.path().join("escaped");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let right = field(&he, 0, "canonical_solution");
    let attacks = [
        (
            "infinite loop",
            "    while True:\n        pass\n".to_string(),
        ),
        (
            "fork bomb",
            "    import os\n    while True:\n        os.fork()\n".to_string(),
        ),
        (
            "10 GB allocation",
            "    x = bytearray(10 * 1024 ** 3)\n    return False\n".to_string(),
        ),
        (
            "write outside",
            format!(
                "    open({:?}, 'w').write('x')\n{right}",
                escaped.display().to_string()
            ),
        ),
        (
            "network",
            format!(
                "    import socket\n    socket.create_connection(('127.0.0.1', {port}))\n{right}"
            ),
        ),
        (
            "output flood",
            "    while True:\n        print('x' * 4096)\n".to_string(),
        ),
    ];
    let start = Instant::now();
    for (what, completion) in &attacks {
        let t0 = Instant::now();
        let v = runner
            .run(he.language, &program(&he, 0, completion))
            .unwrap();
        assert!(!v.passed, "{what}: {v:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(16),
            "{what} took {:?}",
            t0.elapsed()
        );
        eprintln!("{what}: {} in {:.1?}", v.result, t0.elapsed());
    }
    assert!(!escaped.exists(), "a file was written outside the sandbox");
    assert!(listener.accept().is_err(), "a connection arrived");
    // The runner is intact: the right solution still passes.
    assert!(
        runner
            .run(he.language, &program(&he, 0, &right))
            .unwrap()
            .passed
    );
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_run_is_scored_logged_and_independent_of_the_batch_size() {
    let b = Bundle::open(
        &repo().join("tests/data/tiny/tiny-260k-q8_0.gguf"),
        &OpenOptions::default(),
    )
    .unwrap();
    let runner = Runner::new();
    let mut mbpp = task("mbpp");
    // The tiny model writes stories, and ends at once after an MBPP prompt: start one.
    mbpp.max_gen_toks = 48;
    for (i, p) in mbpp.problems.iter_mut().enumerate() {
        p.prompt = format!(
            "Once upon a time, there was a little {}",
            ["girl", "dog"][i % 2]
        );
    }
    let opts = |parallel| CodeOptions {
        limit: Some(2),
        samples: 1,
        sampled: None,
        ks: vec![1],
        seed: 1234,
        parallel,
        max_len: b.n_ctx,
        workers: 2,
    };
    let one = evaluate(
        &b.model,
        &b.tokenizer,
        &runner,
        &mbpp,
        &opts(1),
        &|_, _, _| {},
    )
    .unwrap();
    let four = evaluate(
        &b.model,
        &b.tokenizer,
        &runner,
        &mbpp,
        &opts(4),
        &|_, _, _| {},
    )
    .unwrap();
    let lines = |r: &ferrollama_eval::harness::TaskResult| -> Vec<serde_json::Value> {
        r.samples.iter().flat_map(report::sample_lines).collect()
    };
    assert_eq!(lines(&one), lines(&four));
    assert!(
        one.samples
            .iter()
            .any(|s| !s.generated.as_deref().unwrap_or("").is_empty()),
        "the tiny model wrote something"
    );
    assert_eq!(one.metrics[0].0, "pass_at_1,none");
    let l = &lines(&one)[0];
    assert_eq!(
        l["execution"][0]["passed"], false,
        "the tiny model writes no working code"
    );
    assert!(l["filtered_resps"][0]
        .as_str()
        .unwrap()
        .ends_with(&mbpp.problems[0].target));
    // n samples need a temperature; k cannot exceed n.
    let mut o = opts(2);
    o.samples = 2;
    assert!(evaluate(&b.model, &b.tokenizer, &runner, &mbpp, &o, &|_, _, _| {}).is_err());
    o.samples = 1;
    o.ks = vec![5];
    assert!(evaluate(&b.model, &b.tokenizer, &runner, &mbpp, &o, &|_, _, _| {}).is_err());
}
