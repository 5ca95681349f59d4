//! Packed products with the AVX2 tiles and with the AVX-512 ones (VNNI for the quantized
//! formats, F for f16, BF16's `vdpbf16ps` for bf16), alternated in one process (the machines
//! here are shared: a ratio taken side by side is what holds):
//! `cargo run --release -p ferrollama-kernels --example tile_speed [-- ROUNDS]`. Shapes are
//! the default model's (576 wide, 1536 in the MLP), for a prompt of 512 rows and a decode
//! step of one; one thread. The f16 and bf16 products go through the prepared-rows path the
//! model runs (`partial`: eight-row tiles with AVX-512, four with AVX2), their activations'
//! rounding included. Prints a table and a JSON line.

use std::time::Instant;

use ferrollama_kernels::partial::Prepared;
use ferrollama_kernels::{
    kernel_isa, use_avx2_tiles_only, KFormat, PackedBf16, PackedF16, PackedKMatrix, PackedMatrix,
    WeightFormat,
};

/// A packed matrix of any family.
enum Matrix {
    Plain(PackedMatrix),
    K(PackedKMatrix),
    F16(PackedF16),
    Bf16(PackedBf16),
}

impl Matrix {
    fn matmul(&self, x: &[f32], m: usize, y: &mut [f32], prepared: &mut Prepared) {
        let n = y.len() / m;
        let mut store =
            |t: usize, c: usize, s: &[f32]| y[t * n + c..t * n + c + s.len()].copy_from_slice(s);
        match self {
            Matrix::Plain(p) => p.matmul(x, m, y),
            Matrix::K(p) => p.matmul(x, m, y),
            Matrix::F16(p) => {
                p.prepare(x, m, prepared);
                p.tiles(prepared, m, 0..p.groups(), &mut store);
            }
            Matrix::Bf16(p) => {
                p.prepare(x, m, prepared);
                p.tiles(prepared, m, 0..p.groups(), &mut store);
            }
        }
    }
}

/// n x k 16-bit values from a fixed pattern, finite and below 1 in both f16 and bf16.
fn halves(n: usize, k: usize, bf16: bool) -> Vec<u8> {
    (0..n * k)
        .flat_map(|i| {
            let v = ((i * 37 % 251) as f32 - 125.0) / 256.0;
            let bits = if bf16 {
                half::bf16::from_f32(v).to_bits()
            } else {
                half::f16::from_f32(v).to_bits()
            };
            bits.to_le_bytes()
        })
        .collect()
}

/// Weights from a fixed byte pattern (speed does not depend on the values), with every
/// block's f16 scales set to 1.0 so that every sum stays finite.
fn pattern(bytes: usize, block: usize, scales: &[usize]) -> Vec<u8> {
    let mut w: Vec<u8> = (0..bytes).map(|i| (i * 37 % 251) as u8).collect();
    for b in w.chunks_exact_mut(block) {
        for &at in scales {
            b[at] = 0x00;
            b[at + 1] = 0x3C;
        }
    }
    w
}

fn matrix(name: &str, n: usize, k: usize) -> Matrix {
    let plain = |f: WeightFormat| {
        let w = pattern(n * k / 32 * f.block_bytes(), f.block_bytes(), &[0]);
        Matrix::Plain(PackedMatrix::pack(f, &w, n, k).expect("sizes agree"))
    };
    let kq = |f: KFormat, scales: &[usize]| {
        let bb = f.block_bytes();
        let scales: Vec<usize> = scales.iter().map(|&s| s.min(bb - 2)).collect();
        let w = pattern(n * k / 256 * bb, bb, &scales);
        Matrix::K(PackedKMatrix::pack(f, &w, n, k).expect("sizes agree"))
    };
    match name {
        "f16" => Matrix::F16(PackedF16::pack(&halves(n, k, false), n, k).expect("sizes agree")),
        "bf16" => Matrix::Bf16(PackedBf16::pack(&halves(n, k, true), n, k).expect("sizes agree")),
        "q4_0" => plain(WeightFormat::Q4_0),
        "q4_1" => plain(WeightFormat::Q4_1),
        "q8_0" => plain(WeightFormat::Q8_0),
        "q5_0" => plain(WeightFormat::Q5_0),
        "q5_1" => plain(WeightFormat::Q5_1),
        "q2_K" => kq(KFormat::Q2K, &[80, 82]),
        "q3_K" => kq(KFormat::Q3K, &[108]),
        "q4_K" => kq(KFormat::Q4K, &[0, 2]),
        "q5_K" => kq(KFormat::Q5K, &[0, 2]),
        // Q6_K's f16 scale closes the block.
        _ => kq(KFormat::Q6K, &[usize::MAX]),
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .expect("the first pool of the process");
    let mut records = Vec::new();
    println!("kernels here: {}", kernel_isa());
    println!("| format | n x k | m | avx2 GOP/s | avx-512 GOP/s | avx-512 / avx2 |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut prepared = Prepared::default();
    for format in [
        "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "f16",
        "bf16",
    ] {
        for (n, k, m) in [
            (1536, 576, 512),
            (576, 1536, 512),
            (1536, 576, 1),
            (576, 1536, 1),
        ] {
            if format.ends_with('K') && k % 256 != 0 {
                continue;
            }
            let p = matrix(format, n, k);
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 13 % 97) as f32 - 48.0) / 17.0)
                .collect();
            let mut y = vec![0f32; m * n];
            let reps = (2e9 / (2.0 * (n * k * m) as f64)).ceil() as usize;
            let mut best = [f64::MAX; 2];
            for _ in 0..rounds {
                for (i, avx2_only) in [true, false].into_iter().enumerate() {
                    use_avx2_tiles_only(avx2_only);
                    p.matmul(&x, m, &mut y, &mut prepared);
                    let start = Instant::now();
                    for _ in 0..reps {
                        p.matmul(&x, m, &mut y, &mut prepared);
                    }
                    best[i] = best[i].min(start.elapsed().as_secs_f64() / reps as f64);
                }
            }
            let gops = |s: f64| 2.0 * (n * k * m) as f64 / s / 1e9;
            let (a, v) = (gops(best[0]), gops(best[1]));
            println!(
                "| {format} | {n} x {k} | {m} | {a:.1} | {v:.1} | {:.2} |",
                v / a
            );
            records.push(format!(
                "{{\"format\":\"{format}\",\"n\":{n},\"k\":{k},\"m\":{m},\"avx2_gops\":{a:.2},\"avx512_gops\":{v:.2}}}"
            ));
        }
    }
    println!("[{}]", records.join(","));
}
