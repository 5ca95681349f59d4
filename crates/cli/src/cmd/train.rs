//! `ferrollama train`: pretrain a Llama with the Llama 2 recipe from a TOML config and/or
//! flags; `ferrollama tokenizer train`: learn its vocabulary; `ferrollama export`: turn a
//! run's last checkpoint into GGUF and Hugging Face files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use ferrollama_gguf::GgmlType;
use ferrollama_tokenizer::train::{train_spm_bpe, TrainerOptions};
use ferrollama_tokenizer::Tokenizer;
use ferrollama_train::collective::{Collective, Solo};
use ferrollama_train::data::{read_documents, unigram_entropy, Corpus, DataConfig};
use ferrollama_train::tokenizer_file::load_tokenizer;
use ferrollama_train::{Event, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

/// Where the data comes from (shared by `train` and `tokenizer train`).
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Text files, directories or JSONL files (default: Debian's fortune files, fetched on
    /// first use).
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// A line that separates documents in text files (`%` for fortune files).
    #[arg(long)]
    pub separator: Option<String>,
    /// The field of each JSONL object that holds its text.
    #[arg(long)]
    pub text_field: Option<String>,
}

impl DataArgs {
    /// Applies these flags to `data`; with no data anywhere, the default corpus.
    fn apply(&self, data: &mut DataConfig) -> Result<()> {
        if !self.data.is_empty() {
            data.paths = self.data.clone();
        }
        if let Some(s) = &self.separator {
            data.separator = Some(s.clone());
        }
        if let Some(f) = &self.text_field {
            data.text_field = f.clone();
        }
        if data.paths.is_empty() {
            data.paths = ferrollama_assets::default_corpus()?;
            data.separator.get_or_insert_with(|| "%".into());
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Settings as TOML (keys as in the run directory's config.toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model shape: 260k, 15m, 42m, 110m, llama2-7b, llama2-13b, llama2-34b, llama2-70b.
    #[arg(long, conflicts_with = "init")]
    pub preset: Option<String>,
    /// Continue pretraining this model (a GGUF file of any type, dequantized to f32, or a
    /// Hugging Face directory; `default` for the default model) with its own tokenizer and
    /// chat template; `--steps 0` exports it unchanged.
    #[arg(long, value_name = "MODEL")]
    pub init: Option<PathBuf>,
    /// Tokenizer (GGUF, HF directory or tokenizer.json); default: learn one from the data
    /// into OUT/tokenizer.json (or reuse the one there).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size of a tokenizer learned from the data (default: the preset's).
    #[arg(long)]
    pub vocab_size: Option<usize>,
    #[command(flatten)]
    pub data: DataArgs,
    /// The run directory: metrics.jsonl, checkpoints, plots, the exported model.
    #[arg(long, default_value = "run")]
    pub out: PathBuf,
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Tokens per optimizer step (reached by gradient accumulation).
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warm-up steps.
    #[arg(long)]
    pub warmup: Option<u64>,
    #[arg(long)]
    pub eval_every: Option<u64>,
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from the run directory's last checkpoint (same settings).
    #[arg(long)]
    pub resume: bool,
    /// Weight type of the exported GGUF: f32, f16, q8_0, q4_0, q4_1.
    #[arg(long, default_value = "f32")]
    pub gguf_type: String,
    /// Also write the initial weights and the first N steps' batches into OUT/reference/,
    /// for the PyTorch reference (benches/train_reference.py).
    #[arg(long, value_name = "N")]
    pub dump_reference: Option<u64>,
}

/// Set by SIGINT/SIGTERM: the loop checkpoints and stops at the end of the step.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM set the flag a training loop checks after each step (it then
/// checkpoints and stops), and returns the flag.
pub(crate) fn stop_on_signals() -> &'static AtomicBool {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            request_stop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            request_stop as *const () as libc::sighandler_t,
        );
    }
    &STOP
}

pub fn run(a: Args) -> Result<()> {
    keep_freed_memory()?;
    let mut cfg = match &a.config {
        Some(p) => TrainConfig::from_toml_file(p)?,
        None if a.resume && a.out.join("config.toml").exists() => {
            TrainConfig::from_toml_file(&a.out.join("config.toml"))?
        }
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = a.$field.clone() { cfg.$field = v; } )* };
    }
    set!(
        preset,
        steps,
        seq_len,
        batch_tokens,
        micro_batch,
        lr,
        warmup,
        eval_every,
        checkpoint_every,
        seed
    );
    a.data.apply(&mut cfg.data)?;
    if let Some(init) = &a.init {
        cfg.init = Some(if init.as_os_str() == "default" {
            ferrollama_assets::default_model()?
        } else {
            init.canonicalize()
                .with_context(|| format!("--init {}", init.display()))?
        });
    }
    if cfg.tokenizer.is_none() && a.tokenizer.is_none() {
        // A model trained further keeps its own vocabulary.
        cfg.tokenizer = cfg.init.clone();
    }
    let gguf_type = GgmlType::from_name(&a.gguf_type)
        .ok_or_else(|| anyhow!("unknown type `{}`", a.gguf_type))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let group = process_group()?;
    let group = &*group;
    let leader = group.is_leader();
    if let Some(t) = &a.tokenizer {
        cfg.tokenizer = Some(t.clone());
    }
    let tokenizer = match &cfg.tokenizer {
        Some(path) => {
            load_tokenizer(path).with_context(|| format!("loading {}", path.display()))?
        }
        None => {
            let path = a.out.join("tokenizer.json");
            // One rank learns the vocabulary; the others read what it wrote.
            if !leader {
                group.barrier()?;
            }
            let tok = if path.exists() || !leader {
                load_tokenizer(&path)?
            } else {
                let size = match a.vocab_size {
                    Some(n) => n,
                    None => {
                        ferrollama_model::Config::preset(&cfg.preset)
                            .ok_or_else(|| anyhow!("unknown preset `{}`", cfg.preset))?
                            .vocab_size
                    }
                };
                learn_tokenizer(&cfg.data, size, &a.out)?
            };
            if leader {
                group.barrier()?;
            }
            cfg.tokenizer = Some(path);
            tok
        }
    };
    let stop = stop_on_signals();
    let cache = ferrollama_assets::models_dir().join("token-shards");
    let mut trainer =
        Trainer::new_in_group(cfg.clone(), &tokenizer, &a.out, &cache, a.resume, group)?;
    if let (Some(n), true) = (a.dump_reference, leader) {
        trainer.dump_reference(&a.out.join("reference"), n)?;
    }
    let corpus = trainer.corpus();
    if corpus.val_by_tokens && leader {
        eprintln!(
            "note: no held-out document has tokens ({} document(s) in all), so the last {:.0} % of the tokens ({}) are held out for validation instead",
            corpus.train_docs,
            100.0 * cfg.data.val_fraction,
            corpus.val.len()
        );
    }
    if group.size() > 1 && leader {
        eprintln!(
            "data parallel: {} processes, {} micro-batches of {} sequences each per step",
            group.size(),
            cfg.accumulation()? / group.size(),
            cfg.micro_batch
        );
    }
    let bar = if leader {
        ProgressBar::new(cfg.steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    // Lines above the bar; printed even when stderr is not a terminal (the bar is not).
    let say = |line: String| {
        if leader {
            bar.suspend(|| eprintln!("{line}"))
        }
    };
    let summary = trainer.run(stop, &mut |e| match e {
        Event::Started {
            start_step,
            parameters,
            train_tokens,
            val_tokens,
            ..
        } => {
            say(format!(
                "model {} ({:.2}M parameters, vocabulary {}), {train_tokens} training and {val_tokens} validation tokens{}",
                cfg.init.as_ref().map_or(cfg.preset.clone(), |p| p.display().to_string()),
                parameters as f64 / 1e6,
                tokenizer.vocab_size(),
                if start_step > 0 { format!(", resuming at step {start_step}") } else { String::new() }
            ));
            say(schedule_line(&cfg));
            if val_tokens <= cfg.seq_len {
                say(format!(
                    "warning: {val_tokens} validation tokens are too few for one sequence of {} (+1); no validation loss will be reported",
                    cfg.seq_len
                ));
            }
            bar.set_position(start_step);
        }
        Event::Step(m) => {
            bar.set_position(m.step);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                m.loss, m.lr, m.tokens_per_s
            ));
            if let Some(v) = m.val_loss {
                say(format!(
                    "step {}: train loss {:.4}, val loss {v:.4} (perplexity {:.2})",
                    m.step,
                    m.loss,
                    v.exp()
                ));
            }
        }
        Event::InitialValidation { val_loss } => say(format!(
            "step 0 (the model trained from): val loss {val_loss:.4} (perplexity {:.2})",
            val_loss.exp()
        )),
        Event::Sample { step, text } => say(format!("step {step} sample: {text:?}")),
        Event::Checkpoint(dir) => say(format!("checkpoint {}", dir.display())),
        _ => {}
    })?;
    bar.finish_and_clear();
    if !leader {
        return Ok(());
    }
    if summary.stopped {
        eprintln!(
            "stopped at step {}; `--resume` with the same settings continues it",
            summary.steps
        );
        return Ok(());
    }
    let corpus = Corpus::prepare(&cfg.data, &tokenizer, &cache)?;
    let entropy = unigram_entropy(&corpus.train, tokenizer.vocab_size())?;
    match summary.last.as_ref().map(|m| (m.loss, m.val_loss)) {
        Some((loss, Some(val))) => println!(
            "final: train loss {loss:.4}, val loss {val:.4} nats; unigram entropy of the training tokens {entropy:.4} nats ({:.1} % below it)",
            100.0 * (1.0 - val / entropy)
        ),
        Some((loss, None)) => println!(
            "final: train loss {loss:.4} nats (no validation: too few held-out tokens); unigram entropy of the training tokens {entropy:.4} nats"
        ),
        None => {}
    }
    export_run(&trainer.model, &cfg, &tokenizer, &a.out, gguf_type)
}

/// Writes the run's model (GGUF and HF directory) into `out`, with the tokenizer, the
/// chat template of the model trained from, and the run directory's name as its name.
fn export_run(
    model: &ferrollama_model::TrainableLlama,
    cfg: &TrainConfig,
    tokenizer: &Tokenizer,
    out: &Path,
    ty: GgmlType,
) -> Result<()> {
    let chat_template = match &cfg.tokenizer {
        Some(p) => ferrollama_train::tokenizer_file::load_tokenizer_files(p)?.chat_template,
        None => None,
    };
    export_model(model, tokenizer, chat_template.as_deref(), out, ty)
}

/// Writes `model` as `out/model.gguf` and `out/hf/`, named after the directory `out`.
pub(crate) fn export_model(
    model: &ferrollama_model::TrainableLlama,
    tokenizer: &Tokenizer,
    chat_template: Option<&str>,
    out: &Path,
    ty: GgmlType,
) -> Result<()> {
    let name = std::path::absolute(out)?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ferrollama".into());
    let info = ferrollama_train::export::ExportInfo {
        tokenizer,
        chat_template,
        name: &name,
    };
    let (hf, gguf) = ferrollama_train::export::export(model, &info, out, ty)?;
    println!("exported {} and {}", gguf.display(), hf.display());
    Ok(())
}

/// The learning-rate schedule in one line, with a warning when the warm-up leaves the
/// run below its peak for long (the recipe's 2000 warm-up steps on a short run).
fn schedule_line(cfg: &TrainConfig) -> String {
    let warm = cfg.warmup.min(cfg.steps);
    let mut line = format!(
        "learning rate: linear warm-up over {} steps to {:.2e}, then cosine to {:.2e} at step {}",
        cfg.warmup,
        cfg.lr,
        cfg.lr * cfg.min_lr_ratio,
        cfg.steps
    );
    if cfg.steps > 0 && cfg.warmup * 2 > cfg.steps {
        line.push_str(&format!(
            "\nwarning: the warm-up is {} of the run's {} steps, so the learning rate stays below its peak for {:.0} % of the run{}; pass --warmup N (e.g. {}) for a short run",
            warm,
            cfg.steps,
            100.0 * warm as f64 / cfg.steps as f64,
            if cfg.warmup > cfg.steps {
                format!(" and ends at {:.2e}", cfg.lr * cfg.steps as f64 / cfg.warmup as f64)
            } else {
                String::new()
            },
            (cfg.steps / 10).max(1)
        ));
    }
    line
}

/// The processes training together: the MPI world when started by `mpirun` in a build
/// with the `mpi` feature, else this process alone.
fn process_group() -> Result<Box<dyn Collective>> {
    // OpenMPI's and MPICH's launchers say how many processes they started.
    let under_mpirun = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().any(|v| {
        std::env::var(v)
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n > 1)
    });
    if under_mpirun {
        #[cfg(feature = "mpi")]
        {
            let world = ferrollama_train::collective::MpiWorld::init()?;
            return Ok(Box::new(world));
        }
        #[cfg(not(feature = "mpi"))]
        anyhow::bail!(
            "started by mpirun, but this ferrollama was built without MPI; build it with `cargo build --release -p ferrollama --features mpi`"
        );
    }
    Ok(Box::new(Solo))
}

/// Training allocates and frees the same large activation and gradient buffers every
/// step. glibc serves blocks above its mmap threshold with fresh mappings and unmaps them
/// on free, so each step paid for hundreds of thousands of page faults: 260k at 16 x 256
/// tokens per forward spent 31 s in the kernel and 18 s computing for 4 steps, and 2 s
/// and 20 s with the heap kept. `mallopt` cannot raise the threshold past 32 MiB, below
/// the attention buffers' size, but the GLIBC_TUNABLES variable can; it is read only at
/// start-up, so the process replaces itself once with the variable set.
pub(crate) fn keep_freed_memory() -> Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const KEY: &str = "glibc.malloc.mmap_threshold";
        let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if current.contains(KEY) {
            return Ok(());
        }
        let sep = if current.is_empty() { "" } else { ":" };
        let tunables =
            format!("{current}{sep}{KEY}=4294967295:glibc.malloc.trim_threshold=4294967295");
        let err = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", tunables)
            .exec();
        return Err(err).context("restarting with the heap kept (GLIBC_TUNABLES)");
    }
    #[allow(unreachable_code)]
    Ok(())
}

/// Learns a vocabulary of `size` from the data and writes it into `out`.
fn learn_tokenizer(data: &DataConfig, size: usize, out: &Path) -> Result<Tokenizer> {
    eprintln!("learning a {size}-token vocabulary from the data");
    let docs = read_documents(data, MAX_TOKENIZER_BYTES)?;
    let vocab = train_spm_bpe(
        &docs,
        &TrainerOptions {
            vocab_size: size,
            ..TrainerOptions::default()
        },
    )?;
    let path = out.join("tokenizer.json");
    Tokenizer::from_vocab(vocab)?.write_hf_dir(out, None)?;
    // Read back what was written, so that this run and a resumed one (which reads the
    // file) train with, and export, the very same tokenizer.
    let tok = load_tokenizer(&path)?;
    eprintln!(
        "vocabulary of {} tokens written to {}",
        tok.vocab_size(),
        path.display()
    );
    Ok(tok)
}

/// Text sampled to learn a vocabulary (SentencePiece's default sample is 1M sentences).
const MAX_TOKENIZER_BYTES: usize = 200 << 20;

#[derive(clap::Args, Debug)]
pub struct TokenizerTrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Tokens in the vocabulary, including 3 specials and 256 byte tokens.
    #[arg(long, default_value_t = 4096)]
    pub vocab_size: usize,
    /// Directory for tokenizer.json and tokenizer_config.json.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn tokenizer_train(a: TokenizerTrainArgs) -> Result<()> {
    let mut data = DataConfig::default();
    a.data.apply(&mut data)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    learn_tokenizer(&data, a.vocab_size, &a.out)?;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A training run directory (with config.toml and checkpoints/).
    pub run: PathBuf,
    /// Where to write model.gguf and hf/ (default: the run directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Weight type of the GGUF: f32, f16, q8_0, q4_0, q4_1.
    #[arg(long = "type", default_value = "f32")]
    pub ty: String,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let cfg = TrainConfig::from_toml_file(&a.run.join("config.toml"))?;
    let tok_path = cfg
        .tokenizer
        .clone()
        .ok_or_else(|| anyhow!("{}: config.toml names no tokenizer", a.run.display()))?;
    let tokenizer = load_tokenizer(&tok_path)?;
    let ck = ferrollama_train::checkpoint::load_latest(&a.run.join("checkpoints"))?
        .ok_or_else(|| anyhow!("{}: no checkpoint yet", a.run.display()))?;
    let shape = cfg.model_config(tokenizer.vocab_size())?;
    let model = ferrollama_model::TrainableLlama::from_tensors(shape, ck.weights, cfg.seq_len)?;
    let ty = GgmlType::from_name(&a.ty).ok_or_else(|| anyhow!("unknown type `{}`", a.ty))?;
    let out = a.out.unwrap_or_else(|| a.run.clone());
    if ck.state.step < cfg.steps {
        eprintln!(
            "note: exporting step {} of {} (the run is not finished)",
            ck.state.step, cfg.steps
        );
    }
    export_run(&model, &cfg, &tokenizer, &out, ty)
}
