//! Checkpoints: weights and optimizer moments (safetensors) and the loop's position
//! (JSON), in a directory `step-NNNNNNNN` that appears whole or not at all: files are
//! written into a temporary directory and fsynced, the directory is renamed into place,
//! and `latest` (written the same way) names it. A run killed at any instant resumes from
//! the last complete checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{io, Error, Result};

/// Where the loop stands, saved beside the weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoopState {
    /// Optimizer steps done.
    pub step: u64,
    /// Training sequences consumed: the data position, since the order is fixed by the seed.
    pub sequences: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// The seed of the run (weights and data order), which a resume must not change.
    pub seed: u64,
    /// A digest of the settings that shape the run; a resume with different ones is refused.
    pub settings: String,
}

/// A checkpoint read back.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub weights: BTreeMap<String, Tensor>,
    pub optimizer: BTreeMap<String, Tensor>,
    pub state: LoopState,
}

const LATEST: &str = "latest";

/// Writes a checkpoint under `root` and points `latest` at it; keeps the newest `keep`
/// checkpoints and deletes older ones.
pub fn save(
    root: &Path,
    weights: &BTreeMap<String, Tensor>,
    optimizer: &BTreeMap<String, Tensor>,
    state: &LoopState,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| io(root, e))?;
    let name = format!("step-{:08}", state.step);
    let dir = root.join(&name);
    let tmp = root.join(format!("{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    save_tensors(&tmp.join("model.safetensors"), weights)?;
    save_tensors(&tmp.join("optimizer.safetensors"), optimizer)?;
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::Internal(format!("encoding the loop state: {e}")))?;
    write_synced(&tmp.join("state.json"), &json)?;
    sync_dir(&tmp)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
    sync_dir(root)?;
    let latest_tmp = root.join(format!("{LATEST}.tmp"));
    write_synced(&latest_tmp, name.as_bytes())?;
    std::fs::rename(&latest_tmp, root.join(LATEST)).map_err(|e| io(root, e))?;
    sync_dir(root)?;
    prune(root, keep)?;
    Ok(dir)
}

/// The checkpoint `latest` names under `root`, if any.
pub fn load_latest(root: &Path) -> Result<Option<Checkpoint>> {
    let latest = root.join(LATEST);
    let name = match std::fs::read_to_string(&latest) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&latest, e)),
    };
    let name = name.trim();
    if name.contains('/') || name.contains("..") || name.is_empty() {
        return Err(Error::Invalid {
            file: latest.display().to_string(),
            msg: format!("`{name}` is not a checkpoint name"),
        });
    }
    let dir = root.join(name);
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?;
    let state: LoopState = serde_json::from_str(&text).map_err(|e| Error::Invalid {
        file: state_path.display().to_string(),
        msg: format!("not a loop state: {e}"),
    })?;
    Ok(Some(Checkpoint {
        weights: load_tensors(&dir.join("model.safetensors"))?,
        optimizer: load_tensors(&dir.join("optimizer.safetensors"))?,
        state,
        dir,
    }))
}

/// Writes tensors as safetensors and fsyncs the file.
pub fn save_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let map: HashMap<&str, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    candle_core::safetensors::save(&map, path)?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(path, e))
}

/// Reads every tensor of a safetensors file.
pub fn load_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !path.exists() {
        return Err(io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint file missing"),
        ));
    }
    let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| Error::Invalid {
        file: path.display().to_string(),
        msg: format!("not a readable safetensors file: {e}"),
    })?;
    Ok(map.into_iter().collect())
}

/// Writes `bytes` to `path` and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| io(path, e))?;
    f.write_all(bytes).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

/// Makes a rename inside `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(dir, e))
}

/// Deletes all but the newest `keep` complete checkpoints (and any leftover temporaries).
fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    steps.sort();
    let (tmps, mut done): (Vec<PathBuf>, Vec<PathBuf>) = steps
        .into_iter()
        .partition(|p| p.extension().is_some_and(|e| e == "tmp"));
    for t in tmps {
        let _ = std::fs::remove_dir_all(t);
    }
    let excess = done.len().saturating_sub(keep.max(1));
    for old in done.drain(..excess) {
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    }
    Ok(())
}
