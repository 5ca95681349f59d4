//! A decode step allocates nothing: 100 greedy tokens of the default model through
//! `Llama::step` under a global allocator that counts every allocation of the process
//! (the pool's threads included). Its own test binary, so no other test allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ferrollama_gguf::GgufFile;
use ferrollama_model::decode::RunState;
use ferrollama_model::llama::SeqBatch;
use ferrollama_model::{Config, GgufWeights, Llama};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn a_hundred_decode_steps_allocate_nothing() {
    let file = GgufFile::open(ferrollama_assets::default_model().unwrap()).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let model = Llama::load(&GgufWeights::new(&file), cfg, 256).unwrap();
    let mut state = RunState::new(&model, 1).unwrap();
    let mut cache = model.new_cache(256);
    // Warm-up: the KV cache's memory and the pool's threads come with the first step.
    let mut token = 1u32;
    for _ in 0..2 {
        let seq = SeqBatch {
            tokens: std::slice::from_ref(&token),
            outputs: 1,
            adapter: None,
        };
        token = argmax(model.step(&mut state, &[seq], &mut [&mut cache]).unwrap());
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let mut tokens = [0u32; 100];
    for slot in &mut tokens {
        let seq = SeqBatch {
            tokens: std::slice::from_ref(&token),
            outputs: 1,
            adapter: None,
        };
        token = argmax(model.step(&mut state, &[seq], &mut [&mut cache]).unwrap());
        *slot = token;
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(cache.seq_len(), 102);
    assert!(
        tokens.iter().any(|&t| t != tokens[0]),
        "greedy decoding produced a single token: {tokens:?}"
    );
    assert_eq!(
        allocations, 0,
        "100 decode steps allocated {allocations} times"
    );
}
