//! A thread pool for steps that take well under a millisecond: a decode step of a small
//! model is ~150 phases (each a matrix product or the attention of a few heads) of a few
//! microseconds each. rayon hands each phase to sleeping workers and lets idle ones spin
//! through `sched_yield`: on two cores that was a sixth of a decode step (futex wake-ups,
//! the scheduler, the spinning thread taking turns with the working one).
//!
//! Here a phase is one call of [`Pool::run`]: the same function runs once for each index
//! 0..threads, and `run` returns when all are done (one barrier per phase). Work is split
//! statically by the function (see [`split`]), so a phase costs one store to start and one
//! counter to finish. Indices are claimed, not assigned: the caller and the workers take the
//! next unclaimed one until none is left. On an idle machine each thread takes one; when a
//! worker is not running (another process holds its core, or the scheduler put it on the
//! caller's core after a wake-up) the caller does its share instead of waiting for it, so a
//! busy machine costs at most the speed of one thread, never a stall per phase.
//! [`Pool::run_parts`] cuts a phase into more parts than threads, so a thread that runs
//! slower (its core shared, its part costlier) takes fewer of them. (The decode path does
//! not: four parts per thread halved the prompt's waiting at barriers but made pp512 ~6 %
//! slower, each part's tiles re-reading the activations for fewer weight rows.) Between
//! phases the workers spin on the phase counter for a short while ([`SPIN`]), then park on
//! a condition variable, so an idle pool costs nothing.
//!
//! The pool is used by one caller at a time: a second caller (another thread, or a phase
//! calling `run` again) gets the same function run for every index on its own thread,
//! which gives the same results, serially.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a worker spins for the next phase before parking: long enough to cover the
/// gap between two decode steps (sampling a token), short enough not to hold a core
/// that something else wants.
pub const SPIN: Duration = Duration::from_micros(300);

/// A phase: called once for each part, with the slot of the thread running it.
type Job<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// State shared by the caller and the workers.
struct Shared {
    /// Phases started so far; a worker runs a phase when this moves past what it saw.
    epoch: AtomicUsize,
    /// The running phase's function, lifetime erased (see `Pool::run`).
    job: Mutex<Option<Job<'static>>>,
    /// Parts of the current phase not yet claimed (<= 0: none; between phases too). A
    /// claim is one decrement, so it succeeds or fails in one step: a claim read in one
    /// phase can never be judged against the next phase's number of parts.
    unclaimed: AtomicIsize,
    /// Parts of the current phase finished.
    done: AtomicUsize,
    /// Parts of the current phase.
    parts: AtomicUsize,
    /// Workers parked (or about to park) on `wake`.
    parked: AtomicUsize,
    wake: Condvar,
    wake_lock: Mutex<()>,
    /// The first panic of a worker in the current phase, re-raised by the caller.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    stop: AtomicBool,
}

/// A fixed set of threads that run phases together with the caller.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
    /// Held while a caller runs phases.
    busy: Mutex<()>,
}

impl Pool {
    /// A pool of `threads` (at least 1): the caller and `threads - 1` workers.
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        Self::with_workers(threads, threads - 1)
    }

    /// A pool of `threads` indices per phase served by `workers` threads besides the
    /// caller (fewer than `threads - 1` only in tests: workers that never come).
    fn with_workers(threads: usize, workers: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            unclaimed: AtomicIsize::new(0),
            done: AtomicUsize::new(0),
            parts: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            panic: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let workers = (1..=workers)
            .map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("ferrollama-pool-{index}"))
                    .spawn(move || worker(&shared, index))
                    .expect("spawning a pool thread")
            })
            .collect();
        Self {
            shared,
            workers,
            threads,
            busy: Mutex::new(()),
        }
    }

    /// Threads that run each phase (the caller included).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for every index i in 0..threads(), in parallel, and returns when every
    /// call has returned. Each index runs exactly once, on some thread (the caller's when a
    /// worker is slow to come). A panic in any call is re-raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        self.run_parts(self.threads, &|part, _slot| f(part));
    }

    /// Runs `f(part, slot)` for every part in 0..parts, in parallel, and returns when every
    /// call has returned. Parts are claimed one at a time by whichever thread is free, so
    /// more parts than threads even out threads that run at different speeds. `slot`
    /// (< threads()) names the thread running the call, for per-thread scratch: no two
    /// calls of one `run_parts` running at once share a slot (the caller is slot 0). A
    /// phase run serially because the pool is busy (another thread's phase, or a phase
    /// calling this) gets slot 0 too, while that other phase may be using its own slot 0:
    /// scratch indexed by slot must belong to the call, not to the pool. A panic in any
    /// call is re-raised here.
    pub fn run_parts(&self, parts: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let _busy = match self.busy.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // Someone else runs phases (or this is a phase itself): same results, serially.
                (0..parts).for_each(|part| f(part, 0));
                return;
            }
        };
        if self.threads == 1 || parts <= 1 {
            (0..parts).for_each(|part| f(part, 0));
            return;
        }
        let s = &*self.shared;
        // SAFETY: the erased lifetime is never outlived: a thread reads the job only after
        // claiming a part of this phase, the phase ends when every part is done (panics
        // are caught), and the job is taken out again before `run_parts` returns.
        let job: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(f) };
        *lock(&s.job) = Some(job);
        s.done.store(0, Ordering::SeqCst);
        s.parts.store(parts, Ordering::SeqCst);
        // Opens the claims: a worker that claims a part from here on sees the job above.
        let open = isize::try_from(parts).expect("a phase of more than isize::MAX parts");
        s.unclaimed.store(open, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) > 0 {
            let _g = lock(&s.wake_lock);
            s.wake.notify_all();
        }
        // The caller claims like a worker; a panic is kept like a worker's, so the phase
        // still ends with every part counted.
        work(s, 0);
        let start = Instant::now();
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) != parts {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            // A worker descheduled mid-part (a busy machine): let it have the core.
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                std::thread::yield_now();
            }
        }
        *lock(&s.job) = None;
        if let Some(payload) = lock(&s.panic).take() {
            resume_unwind(payload);
        }
    }
}

/// The next unclaimed part of the current phase, if any is left.
fn claim(s: &Shared) -> Option<usize> {
    let left = s.unclaimed.fetch_sub(1, Ordering::SeqCst);
    // After a successful claim the phase cannot end before this part is done, so `parts`
    // is still this phase's.
    (left > 0).then(|| s.parts.load(Ordering::SeqCst) - left as usize)
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _g = lock(&s.wake_lock);
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A worker: waits for each phase, runs the parts it claims, counts each done.
fn worker(s: &Shared, slot: usize) {
    let mut seen = 0;
    loop {
        seen = next_epoch(s, seen);
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        work(s, slot);
    }
}

/// Runs parts of the current phase until none is left to claim, each counted done (also
/// when it panics: the first panic is kept for the caller). Claims may belong to a later
/// phase than the one this thread woke for (it was slow and the caller went on): the job
/// is read after each claim, so it is the claimed phase's.
fn work(s: &Shared, slot: usize) {
    while let Some(i) = claim(s) {
        let job = *lock(&s.job);
        if let Some(job) = job {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(i, slot))) {
                lock(&s.panic).get_or_insert(payload);
            }
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

/// Waits until the phase counter moves past `seen`: spinning for [`SPIN`], then parked.
fn next_epoch(s: &Shared, seen: usize) -> usize {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let now = s.epoch.load(Ordering::Acquire);
        if now != seen {
            return now;
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) && start.elapsed() > SPIN {
            break;
        }
    }
    // Parked: the caller bumps the counter before it reads `parked`, and this reads the
    // counter after raising `parked` and under the lock the caller notifies under, so a
    // phase cannot start unseen.
    s.parked.fetch_add(1, Ordering::SeqCst);
    let mut guard = lock(&s.wake_lock);
    let now = loop {
        let now = s.epoch.load(Ordering::SeqCst);
        if now != seen {
            break now;
        }
        guard = s.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
    };
    drop(guard);
    s.parked.fetch_sub(1, Ordering::SeqCst);
    now
}

/// Locks `m`, also when a panic elsewhere poisoned it (the data are plain values).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Part `index` of `0..len` split into `parts` contiguous ranges whose sizes differ by at
/// most one.
pub fn split(len: usize, parts: usize, index: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    let (base, extra) = (len / parts, len % parts);
    let start = index * base + index.min(extra);
    let end = start + base + usize::from(index < extra);
    start.min(len)..end.min(len)
}

/// The process's pool, sized like rayon's global pool (`--threads`, `RAYON_NUM_THREADS`,
/// or the cores) when first used.
pub fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(rayon::current_num_threads()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once() {
        for len in 0..40 {
            for parts in 1..9 {
                let mut next = 0;
                for i in 0..parts {
                    let r = split(len, parts, i);
                    assert_eq!(r.start, next);
                    assert!(r.len() <= len.div_ceil(parts));
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn every_index_runs_once_per_phase() {
        let pool = Pool::new(3);
        for phase in 0..2000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|i| {
                hits[i].fetch_add(phase + 1, Ordering::Relaxed);
            });
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), phase + 1);
            }
            if phase % 500 == 0 {
                // Let the workers park, so the wake-up path runs too.
                std::thread::sleep(SPIN * 3);
            }
        }
    }

    #[test]
    fn the_caller_does_the_share_of_a_worker_that_does_not_come() {
        // A pool of 3 indices whose workers never run (as when the scheduler keeps them off
        // every core): each phase still ends, every index run once, on the caller.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = Pool::with_workers(3, 0);
            let caller = std::thread::current().id();
            for _ in 0..100 {
                let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
                pool.run(&|i| {
                    assert_eq!(std::thread::current().id(), caller);
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("a phase waited for a worker that never came");
    }

    #[test]
    fn every_part_runs_once_on_one_slot_at_a_time() {
        let pool = Pool::new(3);
        let slots: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for (phase, parts) in (0..600).zip([0, 1, 2, 3, 7, 24].iter().cycle()) {
            let hits: Vec<AtomicUsize> = (0..*parts).map(|_| AtomicUsize::new(0)).collect();
            pool.run_parts(*parts, &|part, slot| {
                // A slot is one thread's: nobody else is inside a call with it.
                assert_eq!(
                    slots[slot].fetch_add(1, Ordering::SeqCst),
                    0,
                    "slot {slot} shared"
                );
                hits[part].fetch_add(1, Ordering::Relaxed);
                std::hint::black_box((0..50).sum::<usize>());
                slots[slot].fetch_sub(1, Ordering::SeqCst);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "phase {phase}"
            );
            if phase % 200 == 0 {
                std::thread::sleep(SPIN * 3);
            }
        }
    }

    #[test]
    fn a_busy_pool_runs_the_phase_serially() {
        let pool = Pool::new(2);
        let inner = AtomicUsize::new(0);
        pool.run(&|_| {
            pool.run(&|i| {
                inner.fetch_add(i + 1, Ordering::Relaxed);
            });
        });
        // Each of the 2 outer calls ran the inner phase for indices 0 and 1.
        assert_eq!(inner.load(Ordering::Relaxed), 2 * (1 + 2));
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(2);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i| {
                if i == 1 {
                    panic!("worker failed");
                }
            })
        }));
        assert!(caught.is_err());
        let ran = AtomicUsize::new(0);
        pool.run(&|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    }
}
