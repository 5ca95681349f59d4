//! The decode step's products on our thread pool against rayon, alternated in one
//! process (the machines here are shared: a ratio taken side by side is what holds):
//! `cargo run --release -p ferrollama-kernels --example pool_speed [-- STEPS [THREADS]]`.
//!
//! One "step" is the default model's decode products without attention: 30 blocks of
//! Q/K/V (960 x 576), output (576 x 576), gate/up (3072 x 576) and down (576 x 1536),
//! then the output projection (49152 x 576), in Q8_0 with a matrix of its own each (so
//! the weights stream from memory as in a real step, ~140 MB). rayon: each product's
//! `matmul` (its parallel loop over row groups) inside the pool, as the candle path runs
//! them; pool: one phase per product, each thread preparing the activations and taking an
//! equal share of the row groups (`partial`), as the decode path runs them. Both give the
//! same bits (checked here). Prints a table and a JSON line.

use std::time::Instant;

use ferrollama_kernels::partial::Prepared;
use ferrollama_kernels::pool::{split, Pool};
use ferrollama_kernels::{kernel_isa, PackedMatrix, WeightFormat};

/// Weights from a fixed byte pattern with every block's f16 scale 1/1024 (finite sums).
fn matrix(n: usize, k: usize, seed: usize) -> PackedMatrix {
    let f = WeightFormat::Q8_0;
    let bb = f.block_bytes();
    let mut w: Vec<u8> = (0..n * k / 32 * bb)
        .map(|i| ((i + seed) * 37 % 251) as u8)
        .collect();
    for b in w.chunks_exact_mut(bb) {
        b[..2].copy_from_slice(&[0x00, 0x14]);
    }
    PackedMatrix::pack(f, &w, n, k).expect("sizes agree")
}

/// A raw output buffer the pool's threads write in disjoint parts.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each thread writes the columns of its own row groups only.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so closures capture the whole `Out`, which is Sync).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(40);
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("first use of rayon");
    let pool = Pool::new(threads);
    let shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
    let mut weights: Vec<PackedMatrix> = (0..30)
        .flat_map(|l| shapes.iter().map(move |&(n, k)| matrix(n, k, l)))
        .collect();
    weights.push(matrix(49152, 576, 99));
    let x: Vec<f32> = (0..1536)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.1)
        .collect();
    let mut y_rayon: Vec<Vec<f32>> = weights.iter().map(|w| vec![0.0; w.shape().0]).collect();
    let mut y_pool = y_rayon.clone();
    let mut prepared: Vec<std::sync::Mutex<Prepared>> = (0..threads)
        .map(|_| std::sync::Mutex::new(Prepared::with_capacity(1, 1536)))
        .collect();

    let rayon_step = |ys: &mut [Vec<f32>]| {
        rayon::scope(|_| {
            for (w, y) in weights.iter().zip(ys.iter_mut()) {
                w.matmul(&x[..w.shape().1], 1, y);
            }
        })
    };
    let pool_step = |ys: &mut [Vec<f32>], prepared: &mut [std::sync::Mutex<Prepared>]| {
        let prepared = &*prepared;
        for (w, y) in weights.iter().zip(ys.iter_mut()) {
            let out = Out(y.as_mut_ptr());
            let k = w.shape().1;
            pool.run(&|t| {
                let mut p = prepared[t].lock().expect("one user per index");
                w.prepare(&x[..k], 1, &mut p);
                w.tiles(&p, 1, split(w.groups(), threads, t), &mut |_, c, v| {
                    // SAFETY: columns of this thread's groups, inside y.
                    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out.at(c), v.len()) }
                });
            });
        }
    };
    // Warm-up (and the pages of every matrix touched), then alternated timed steps.
    rayon_step(&mut y_rayon);
    pool_step(&mut y_pool, &mut prepared);
    assert!(y_rayon == y_pool, "the pool's products differ from rayon's");
    let (mut t_rayon, mut t_pool) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let t = Instant::now();
        rayon_step(&mut y_rayon);
        t_rayon.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        pool_step(&mut y_pool, &mut prepared);
        t_pool.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, p) = (median(&mut t_rayon), median(&mut t_pool));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    println!("products of one decode step (121, Q8_0), {threads} threads, {steps} alternated steps, median");
    println!("CPU: {cpu}; tiles: {}", kernel_isa());
    println!("| runner | us per step | ratio |");
    println!("|---|---:|---:|");
    println!("| rayon (matmul) | {r:.0} | 1.00 |");
    println!("| pool (partial) | {p:.0} | {:.2} |", r / p);
    println!(
        "{{\"threads\":{threads},\"steps\":{steps},\"cpu\":\"{cpu}\",\"kernels\":\"{}\",\"rayon_us\":{r:.1},\"pool_us\":{p:.1},\"speedup\":{:.3}}}",
        kernel_isa(),
        r / p
    );
}
