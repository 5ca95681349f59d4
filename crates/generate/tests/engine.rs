//! The decode engine on a model the project trained itself (`tests/data/tiny/`, committed,
//! so these tests fetch nothing): several jobs batched in one engine each get exactly the
//! text they get alone, a job cancelled mid-way frees its slot for the next, a prompt
//! that does not fit is refused, and the one-slot `Generator` agrees with the engine.

use std::collections::HashMap;
use std::path::PathBuf;

use ferrollama_generate::engine::{Engine, Event, Job, NoObserver};
use ferrollama_generate::{Bundle, FinishReason, GenerateParams, Generator, OpenOptions};
use ferrollama_sampling::SamplingParams;

fn tiny() -> Bundle {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/tiny/tiny-260k-q8_0.gguf"
    ));
    Bundle::open(&path, &OpenOptions::default()).unwrap()
}

fn params(n: usize, seed: Option<u64>) -> GenerateParams {
    let sampling = match seed {
        None => SamplingParams::greedy(),
        Some(seed) => SamplingParams {
            seed,
            ..SamplingParams::default()
        },
    };
    GenerateParams {
        max_new_tokens: n,
        ignore_eos: true,
        grammar: None,
        sampling,
        ..GenerateParams::default()
    }
}

/// Runs `jobs` through an engine of `parallel` slots until all are done: each job's
/// token ids and finish reason.
fn run(b: &Bundle, parallel: usize, jobs: Vec<Job>) -> HashMap<u64, (Vec<u32>, FinishReason)> {
    let mut engine = Engine::new(&b.model, &b.tokenizer, parallel, 256);
    let mut queue = jobs.into_iter();
    let mut out: HashMap<u64, (Vec<u32>, FinishReason)> = HashMap::new();
    let mut ids: HashMap<u64, Vec<u32>> = HashMap::new();
    loop {
        while engine.has_free_slot() {
            match queue.next() {
                Some(job) => engine.place(job, &NoObserver).unwrap(),
                None => break,
            }
        }
        if engine.busy() == 0 {
            return out;
        }
        engine.step(&NoObserver, &mut |id, event| match event {
            Event::Token { id: t, .. } => ids.entry(id).or_default().push(t),
            Event::Done(u) => {
                out.insert(id, (ids.remove(&id).unwrap_or_default(), u.finish));
            }
            Event::Error(e) => panic!("job {id}: {e}"),
            Event::Text(_) => {}
        });
    }
}

fn prompts(b: &Bundle) -> Vec<Vec<u32>> {
    [
        "The quick brown fox",
        "Q: What is a programmer?\nA:",
        "Never trust a",
        "The quick brown fox jumps over",
        "A",
    ]
    .iter()
    .map(|p| b.tokenizer.encode(p, true, false))
    .collect()
}

#[test]
fn batched_jobs_get_the_text_they_get_alone() {
    let b = tiny();
    let jobs = |seeded: bool| -> Vec<Job> {
        prompts(&b)
            .into_iter()
            .enumerate()
            .map(|(i, prompt)| Job {
                id: i as u64,
                prompt,
                params: params(24, seeded.then_some(100 + i as u64)),
                top_logprobs: None,
                adapter: None,
            })
            .collect()
    };
    for seeded in [false, true] {
        let alone: HashMap<_, _> = jobs(seeded)
            .into_iter()
            .map(|j| {
                let id = j.id;
                (id, run(&b, 1, vec![j]).remove(&id).unwrap())
            })
            .collect();
        // Three slots for five jobs: some wait, two share a prompt prefix.
        let together = run(&b, 3, jobs(seeded));
        assert_eq!(together, alone, "seeded: {seeded}");
        assert!(alone
            .values()
            .all(|(ids, f)| ids.len() == 24 && *f == FinishReason::Length));
    }
}

#[test]
fn the_generator_is_the_engine_with_one_slot() {
    let b = tiny();
    let prompt = &prompts(&b)[1];
    let via_engine = run(
        &b,
        2,
        vec![Job {
            id: 7,
            prompt: prompt.clone(),
            params: params(16, Some(3)),
            top_logprobs: None,
            adapter: None,
        }],
    );
    let g = Generator::new(&b.model, &b.tokenizer, 256)
        .generate(prompt, &params(16, Some(3)), |_| true)
        .unwrap();
    assert_eq!(via_engine[&7].0, g.ids);
}

#[test]
fn a_cancelled_job_frees_its_slot_and_bad_prompts_are_refused() {
    let b = tiny();
    let mut engine = Engine::new(&b.model, &b.tokenizer, 1, 32);
    let job = |id, prompt: Vec<u32>| Job {
        id,
        prompt,
        params: params(100, None),
        top_logprobs: None,
        adapter: None,
    };
    let p = prompts(&b);
    engine.place(job(1, p[0].clone()), &NoObserver).unwrap();
    assert!(!engine.has_free_slot());
    assert!(engine.place(job(2, p[1].clone()), &NoObserver).is_err());
    engine.step(&NoObserver, &mut |_, _| {});
    assert!(engine.cancel(1));
    assert!(!engine.cancel(1));
    assert!(engine.has_free_slot());
    // Empty, too long for the slot's 32 positions: refused with a message, nothing placed.
    for bad in [vec![], vec![5u32; 33]] {
        match engine.place(job(3, bad), &NoObserver) {
            Err(Event::Error(msg)) => assert!(msg.contains("between 1 and 32"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(engine.busy(), 0);
    // A job that fills the context ends with ContextFull, not an error.
    let mut finish = None;
    engine.place(job(4, p[1].clone()), &NoObserver).unwrap();
    while engine.busy() > 0 {
        engine.step(&NoObserver, &mut |_, e| {
            if let Event::Done(u) = e {
                finish = Some(u.finish);
            }
        });
    }
    assert_eq!(finish, Some(FinishReason::ContextFull));
}

/// Jobs naming an adapter (a server's per-request `model`) run with it and the others
/// without, batched together: each gets the tokens it gets alone on a model with that
/// adapter applied to everything, or none. One prompt under two adapters shares no cached
/// prefix (its keys and values differ), and an adapter never loaded is refused.
#[test]
fn jobs_run_with_the_adapter_they_name() {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/tiny/lora-r4"
    ));
    let p = prompts(&tiny());
    let job = |id: u64, prompt: &Vec<u32>, adapter| Job {
        id,
        prompt: prompt.clone(),
        params: params(16, Some(5)),
        top_logprobs: None,
        adapter,
    };
    // The same prompt three times: with the adapter, without, with it again; and another.
    let mixed = vec![
        job(0, &p[0], Some(0)),
        job(1, &p[0], None),
        job(2, &p[0], Some(0)),
        job(3, &p[1], Some(0)),
    ];
    let mut adapted = tiny();
    adapted.model.attach_lora(&dir, 1.0).unwrap();
    let alone = |b: &Bundle, prompt: &Vec<u32>| {
        let j = job(9, prompt, None);
        run(b, 1, vec![j]).remove(&9).unwrap()
    };
    let base = tiny();
    let want = [
        alone(&adapted, &p[0]),
        alone(&base, &p[0]),
        alone(&adapted, &p[0]),
        alone(&adapted, &p[1]),
    ];
    assert_ne!(want[0], want[1], "the adapter changed nothing");
    let mut served = tiny();
    assert_eq!(served.model.load_adapter(&dir, 1.0).unwrap(), 0);
    // Two slots: the first two jobs (one prompt, two adapters) start together, where
    // prefix sharing would copy one's cache into the other; the rest wait and reuse slots
    // across adapters.
    let got = run(&served, 2, mixed);
    for (id, w) in want.iter().enumerate() {
        assert_eq!(&got[&(id as u64)], w, "job {id}");
    }
    let mut engine = Engine::new(&served.model, &served.tokenizer, 1, 64);
    assert!(engine.place(job(5, &p[0], Some(1)), &NoObserver).is_err());
}

/// `generate_all`: K samples of one prompt and other prompts, in the jobs' order, each
/// what it gets in a one-slot run; a prompt that does not fit fails the batch naming its
/// job; a stop flag abandons it.
#[test]
fn generate_all_keeps_order_and_matches_one_slot() {
    use std::sync::atomic::AtomicBool;
    let b = tiny();
    let ps = prompts(&b);
    let jobs: Vec<Job> = (0..7)
        .map(|i| Job {
            id: 99,
            prompt: ps[if i < 4 { 1 } else { i - 3 }].clone(),
            params: GenerateParams {
                ignore_eos: false,
                grammar: None,
                ..params(12 + i, Some(10 + i as u64))
            },
            top_logprobs: None,
            adapter: None,
        })
        .collect();
    let go = AtomicBool::new(false);
    let mut seen = Vec::new();
    let batched = ferrollama_generate::generate_all(
        &b.model,
        &b.tokenizer,
        jobs.clone(),
        4,
        128,
        &go,
        &mut |n| seen.push(n),
    )
    .unwrap()
    .unwrap();
    assert_eq!(seen, (1..=7).collect::<Vec<_>>());
    let alone = ferrollama_generate::generate_all(
        &b.model,
        &b.tokenizer,
        jobs.clone(),
        1,
        128,
        &go,
        &mut |_| {},
    )
    .unwrap()
    .unwrap();
    assert_eq!(batched, alone);
    // Seeds differ, so the four samples of one prompt are not all the same text.
    assert!(batched[..4].iter().any(|c| c.text != batched[0].text));
    for (c, j) in batched.iter().zip(&jobs) {
        assert!(c.ids.len() <= j.params.max_new_tokens);
        assert!(!c.text.is_empty() || c.ids.is_empty(), "{c:?}");
    }
    let mut long = jobs.clone();
    long[5].prompt = vec![1; 200];
    let err =
        ferrollama_generate::generate_all(&b.model, &b.tokenizer, long, 2, 128, &go, &mut |_| {})
            .unwrap_err()
            .to_string();
    assert!(err.contains("generation 6"), "{err}");
    let stop = AtomicBool::new(true);
    assert!(ferrollama_generate::generate_all(
        &b.model,
        &b.tokenizer,
        jobs,
        2,
        128,
        &stop,
        &mut |_| {}
    )
    .unwrap()
    .is_none());
}
