//! The machine's read bandwidth as generation sees it: `threads` threads each stream their
//! own buffer (far larger than any cache) at once, and their rates add up. Generation of a
//! small model reads every weight once per token, so bandwidth / weight bytes is the
//! ceiling tg can reach; `ferrollama bench` reports its figure as a fraction of it. The same
//! probe as `benches/compare_llama_cpp.py`'s (numpy `sum` in one process per thread).
//! Like numpy's large arrays and our packed weights (`ferrollama_model::huge_pages`), the
//! buffers are advised into huge pages where the kernel offers them: in 4 KiB pages the
//! same stream ran a fifth slower here.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use ferrollama_model::huge_pages::HugePageBuffer;

/// Bytes each thread streams: 256 MiB, eight times the largest L3 of a CCD or a client
/// chip, so the reads come from memory.
pub const BYTES_PER_THREAD: usize = 256 << 20;

/// Aggregate read rate in bytes per second of `threads` threads, each summing its own
/// `bytes` (rounded down to whole u64 words) `reps` times after one untimed pass that
/// brings the pages in. None when a thread cannot be started or its buffer allocated: a
/// part of the machine's rate would pass for all of it.
pub fn read_bandwidth(threads: usize, bytes: usize, reps: usize) -> Option<f64> {
    let threads = threads.max(1);
    let reps = reps.max(1);
    let words = (bytes / 8).max(1);
    // The threads start streaming together, once all have their buffers in memory: a gate
    // that every thread passes (also one that failed), and that a failed spawn opens too.
    let ready = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let wait_for_all = || {
        ready.fetch_add(1, Ordering::SeqCst);
        while ready.load(Ordering::SeqCst) < threads && !failed.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        !failed.load(Ordering::SeqCst)
    };
    std::thread::scope(|s| {
        let mut workers = Vec::with_capacity(threads);
        for t in 0..threads {
            let (wait_for_all, failed) = (&wait_for_all, &failed);
            let spawned = std::thread::Builder::new().spawn_scoped(s, move || {
                let Ok(mut bytes) = HugePageBuffer::zeroed(words * 8) else {
                    failed.store(true, Ordering::SeqCst);
                    wait_for_all();
                    return None;
                };
                // SAFETY: any bytes are a valid u64. The rate counts the aligned middle only.
                let (_, buf, _) = unsafe { bytes.align_to_mut::<u64>() };
                for (i, w) in buf.iter_mut().enumerate() {
                    *w = i as u64 ^ t as u64;
                }
                let buf = &*buf;
                std::hint::black_box(sum_words(buf));
                if !wait_for_all() {
                    return None;
                }
                let t0 = Instant::now();
                for _ in 0..reps {
                    std::hint::black_box(sum_words(std::hint::black_box(buf)));
                }
                Some((reps * buf.len() * 8) as f64 / t0.elapsed().as_secs_f64())
            });
            match spawned {
                Ok(w) => workers.push(w),
                Err(_) => {
                    failed.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
        // Every thread must give its figure (a panic or a failure leaves none).
        let rates: Option<Vec<f64>> = workers
            .into_iter()
            .map(|w| w.join().ok().flatten())
            .collect();
        rates.filter(|r| r.len() == threads).map(|r| r.iter().sum())
    })
}

/// Wrapping sum of the words with eight independent accumulators: integer adds vectorize
/// (float sums would be kept in order), so the loop runs at the speed of the loads.
pub fn sum_words(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = words.chunks_exact(8);
    for c in &mut chunks {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(w);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |s, &w| s.wrapping_add(w));
    acc.iter().fold(tail, |s, &a| s.wrapping_add(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_of_words_is_the_plain_sum() {
        for n in [0usize, 1, 7, 8, 9, 63, 1000] {
            let words: Vec<u64> = (0..n as u64)
                .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .collect();
            let plain = words.iter().fold(0u64, |s, &w| s.wrapping_add(w));
            assert_eq!(sum_words(&words), plain, "n = {n}");
        }
    }

    #[test]
    fn probe_gives_a_finite_positive_rate() {
        for threads in [1, 2] {
            let r = read_bandwidth(threads, 1 << 20, 2).expect("a figure");
            assert!(r.is_finite() && r > 0.0, "{threads} threads: {r}");
        }
    }
}
