//! `ferrollama bench`: prompt processing (pp: one batched forward over P tokens) and text
//! generation (tg: N single-token decode steps from an empty cache) in tokens per second,
//! after one warm-up run, as llama.cpp's llama-bench measures them; `--json` prints
//! records shaped like `llama-bench -o json`, so its tooling reads them.

use std::time::Instant;

use anyhow::{bail, Result};
use ferrollama_model::llama::Cache;
use ferrollama_model::Llama;

use crate::args::ModelArgs;
use crate::load::load;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens for the pp test (0 skips it).
    #[arg(short = 'p', long, default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens for the tg test (0 skips it).
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    /// Threads (sets the size of the compute pool; default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Print a JSON array of llama-bench-style records.
    #[arg(long)]
    pub json: bool,
    /// Run every pass through candle's tensors, not the decode path (same results; to
    /// measure what the decode path gains).
    #[arg(long)]
    pub no_decode_path: bool,
    /// Skip the read-bandwidth probe (a second or two, 256 MiB per thread) and the
    /// fraction of its ceiling that tg reaches.
    #[arg(long)]
    pub no_bandwidth: bool,
}

/// One test's measurements.
struct Record {
    n_prompt: usize,
    n_gen: usize,
    samples_ns: Vec<u128>,
}

impl Record {
    fn tokens(&self) -> usize {
        self.n_prompt + self.n_gen
    }

    fn samples_ts(&self) -> Vec<f64> {
        self.samples_ns
            .iter()
            .map(|&ns| self.tokens() as f64 / (ns as f64 / 1e9))
            .collect()
    }
}

/// Sets the compute pool size; must run before any parallel work starts.
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(t) = threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        // candle sizes its pools from this variable; rayon's global pool is built here.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()?;
    }
    Ok(())
}

pub fn run(mut a: Args) -> Result<()> {
    set_threads(a.threads)?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let needed = a.n_prompt.max(a.n_gen).max(1);
    a.model.ctx = Some(a.model.ctx.unwrap_or(needed).max(needed));
    let m = load(&a.model)?;
    m.model.set_decode_path(!a.no_decode_path);
    let vocab = m.tokenizer.vocab_size().min(m.model.config.vocab_size) as u32;
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut random_token = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % vocab as u64) as u32
    };
    let mut cache = m.model.new_cache(m.n_ctx);
    let mut records = Vec::new();
    for (n_prompt, n_gen) in [(a.n_prompt, 0), (0, a.n_gen)] {
        if n_prompt + n_gen == 0 {
            continue;
        }
        let mut samples = Vec::with_capacity(a.repetitions);
        // One warm-up run, then the measured ones.
        for rep in 0..=a.repetitions {
            let tokens: Vec<u32> = (0..n_prompt.max(n_gen)).map(|_| random_token()).collect();
            let ns = if n_prompt > 0 {
                time_pp(&m.model, &mut cache, &tokens)?
            } else {
                time_tg(&m.model, &mut cache, &tokens)?
            };
            if rep > 0 {
                samples.push(ns);
            }
        }
        records.push(Record {
            n_prompt,
            n_gen,
            samples_ns: samples,
        });
    }
    // Before the probe, whose buffers are not the model's.
    let peak_rss = peak_rss_bytes();
    let weight_bytes = weight_bytes(&m.path);
    let bandwidth = (!a.no_bandwidth)
        .then(|| crate::bandwidth::read_bandwidth(threads, crate::bandwidth::BYTES_PER_THREAD, 5))
        .flatten();
    // Generation reads every weight once per token: bandwidth / weight bytes tokens per second
    // at most.
    let fraction = |r: &Record| match (bandwidth, weight_bytes) {
        (Some(bw), Some(wb)) if r.n_gen > 0 && wb > 0 => {
            Some(mean_std(&r.samples_ts()).0 / (bw / wb as f64))
        }
        _ => None,
    };
    let file_name = m.path.display().to_string();
    // A directory's size is its safetensors files' (the directory entry itself is 0 or 4 KiB).
    let model_size: u64 = if m.path.is_dir() {
        weight_bytes.unwrap_or(0)
    } else {
        std::fs::metadata(&m.path).map(|md| md.len()).unwrap_or(0)
    };
    let n_params = m.model.config.num_parameters();
    if a.json {
        let json: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                let ts = r.samples_ts();
                let (avg_ns, _) =
                    mean_std(&r.samples_ns.iter().map(|&n| n as f64).collect::<Vec<_>>());
                let (avg_ts, stddev_ts) = mean_std(&ts);
                serde_json::json!({
                    "build_commit": env!("CARGO_PKG_VERSION"),
                    "cpu_info": cpu_model(),
                    "kernels": ferrollama_kernels::kernel_isa(),
                    "decode_path": !a.no_decode_path,
                    "backend": "CPU",
                    "model_filename": file_name,
                    "model_type": "llama",
                    "model_size": model_size,
                    "model_n_params": n_params,
                    "n_threads": threads,
                    "n_batch": ferrollama_model::llama::UBATCH,
                    "n_ubatch": ferrollama_model::llama::UBATCH,
                    "n_prompt": r.n_prompt,
                    "n_gen": r.n_gen,
                    "avg_ns": avg_ns as u128,
                    "samples_ns": r.samples_ns,
                    "avg_ts": avg_ts,
                    "stddev_ts": stddev_ts,
                    "samples_ts": ts,
                    "peak_rss_bytes": peak_rss,
                    "weight_bytes": weight_bytes,
                    "read_bandwidth_gbs": bandwidth.map(|b| b / 1e9),
                    "bandwidth_fraction": fraction(r),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!("| model | size | params | threads | test | t/s |");
    println!("| --- | ---: | ---: | ---: | --- | ---: |");
    for r in &records {
        let (avg, std) = mean_std(&r.samples_ts());
        let test = if r.n_prompt > 0 {
            format!("pp{}", r.n_prompt)
        } else {
            format!("tg{}", r.n_gen)
        };
        println!(
            "| {} | {:.2} MiB | {:.2} M | {threads} | {test} | {avg:.2} ± {std:.2} |",
            m.path
                .file_name()
                .map_or(file_name.clone(), |n| n.to_string_lossy().into_owned()),
            model_size as f64 / (1 << 20) as f64,
            n_params as f64 / 1e6,
        );
    }
    println!("peak RSS: {:.1} MiB", peak_rss as f64 / (1 << 20) as f64);
    if bandwidth.is_none() && !a.no_bandwidth {
        eprintln!(
            "warning: the bandwidth probe did not run (a thread or its buffer could not be had)"
        );
    }
    if let Some(bw) = bandwidth {
        println!("read bandwidth ({threads} threads): {:.1} GB/s", bw / 1e9);
        for r in &records {
            if let (Some(f), Some(wb)) = (fraction(r), weight_bytes) {
                println!(
                    "tg{}: {:.0} % of the bandwidth ceiling ({:.0} t/s for {:.1} MB of weights per token)",
                    r.n_gen,
                    100.0 * f,
                    bw / wb as f64,
                    wb as f64 / 1e6
                );
            }
        }
    }
    println!("kernels: {}", ferrollama_kernels::kernel_isa());
    if a.no_decode_path {
        println!("decode path: off (every pass through candle's tensors)");
    }
    Ok(())
}

/// Nanoseconds for one batched forward over `tokens` from an empty cache.
fn time_pp(model: &Llama, cache: &mut Cache, tokens: &[u32]) -> Result<u128> {
    // Emptied but kept: its pages stay mapped from one repetition to the next, as
    // llama-bench keeps its KV buffer (a reset would free them and fault them in again).
    cache.truncate(0);
    let start = Instant::now();
    model.forward(tokens, cache, 1)?;
    Ok(start.elapsed().as_nanos())
}

/// Nanoseconds for one decode step per token, from an empty cache.
fn time_tg(model: &Llama, cache: &mut Cache, tokens: &[u32]) -> Result<u128> {
    cache.truncate(0);
    let start = Instant::now();
    for &t in tokens {
        model.forward(&[t], cache, 1)?;
    }
    Ok(start.elapsed().as_nanos())
}

/// Bytes of weights a decode step reads: the tensors of a GGUF file, the safetensors files
/// of a directory; None where neither can be read. An embedding table that is not also the
/// output head counts whole though a step reads one row of it (the ceiling comes out a
/// little low for such models; the default model ties them).
fn weight_bytes(path: &std::path::Path) -> Option<u64> {
    if path.is_dir() {
        let files = std::fs::read_dir(path).ok()?;
        let total = files
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .filter_map(|e| e.metadata().ok())
            .map(|md| md.len())
            .sum();
        return Some(total);
    }
    let file = ferrollama_gguf::GgufFile::open(path).ok()?;
    Some(file.header.tensors.iter().map(|t| t.size).sum())
}

/// Mean and sample standard deviation (0 for one sample).
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Peak resident set size of this process (Linux `VmHWM`), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The CPU's model name (Linux), for the records.
fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}
