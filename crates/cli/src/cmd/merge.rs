//! `ferrollama merge`: LoRA adapters folded into their base model (W + s B A, in f32), written
//! as GGUF of any type the converter writes; then the merged file is compared with the base
//! running the adapters unmerged (perplexity of both and their KL divergence, as
//! `perplexity --kl-base` reports it), so re-quantizing after the merge cannot lose quality
//! silently.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use ferrollama_eval::kl::kl_divergence;
use ferrollama_gguf::GgmlType;
use ferrollama_model::TrainableLlama;
use ferrollama_tokenizer::TokenizerFiles;

use crate::args::ModelArgs;
use crate::load::load;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base model and `--lora DIR[:SCALE]` (one or more adapters, added up).
    #[command(flatten)]
    pub model: ModelArgs,
    /// The merged model, a `.gguf` file.
    #[arg(long)]
    pub out: PathBuf,
    /// Weight type of the merged file: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K ..
    /// q6_K.
    #[arg(long = "type", default_value = "f32")]
    pub ty: String,
    /// Text the merged model is compared on (default: the default corpus, Debian's
    /// fortunes, its first 64 KB).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Context of the comparison's chunks.
    #[arg(long, default_value_t = 512)]
    pub compare_ctx: usize,
}

pub fn run(a: Args) -> Result<()> {
    let adapters = a.model.adapters()?;
    if adapters.is_empty() {
        bail!("nothing to merge: give --lora DIR");
    }
    let ty = GgmlType::from_name(&a.ty).ok_or_else(|| anyhow!("unknown type `{}`", a.ty))?;
    if a.out.extension().is_none_or(|e| e != "gguf") {
        bail!(
            "--out {}: the merged model is a .gguf file",
            a.out.display()
        );
    }
    let path = crate::load::model_path(&a.model)?;
    let mut model =
        TrainableLlama::open(&path, 1).with_context(|| format!("opening {}", path.display()))?;
    for (dir, scale) in &adapters {
        let (mut cfg, tensors) = ferrollama_model::lora::read_peft_dir(dir)
            .with_context(|| format!("reading the adapter {}", dir.display()))?;
        cfg.alpha *= scale;
        model.attach_lora(cfg, 0, Some(tensors))?;
        let merged = model
            .weight_names()
            .map(|n| Ok((n.to_string(), model.effective_weight(n)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        model = TrainableLlama::from_tensors(model.config.clone(), merged, 1)?;
    }
    let files = TokenizerFiles::load(&path)?;
    let parent = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = tempfile::tempdir_in(parent)
        .with_context(|| format!("a temporary directory in {}", parent.display()))?;
    crate::cmd::train::export_model(
        &model,
        &files.tokenizer,
        files.chat_template.as_deref(),
        tmp.path(),
        ty,
    )?;
    std::fs::rename(tmp.path().join("model.gguf"), &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    drop(model);
    println!(
        "merged {} adapter(s) into {}",
        adapters.len(),
        a.out.display()
    );

    // The merged file against the base running the adapters unmerged.
    let text = match &a.text {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => {
            let mut all = Vec::new();
            for f in ferrollama_assets::default_corpus()? {
                all.extend(std::fs::read(&f)?);
                if all.len() >= 64 << 10 {
                    break;
                }
            }
            all.truncate(64 << 10);
            all
        }
    };
    let text = String::from_utf8_lossy(&text).into_owned();
    let unmerged = load(&ModelArgs {
        ctx: Some(a.compare_ctx),
        ..a.model.clone()
    })?;
    let merged = load(&ModelArgs {
        model: Some(a.out.clone()),
        ctx: Some(a.compare_ctx),
        lora: Vec::new(),
        no_pack_cache: true,
        map_weights: false,
    })?;
    let tokens = unmerged.tokenizer.encode(&text, true, false);
    let bos = unmerged
        .tokenizer
        .add_bos()
        .then(|| unmerged.tokenizer.bos())
        .flatten();
    let r = kl_divergence(
        &unmerged.model,
        &merged.model,
        &tokens,
        a.compare_ctx,
        bos,
        |done, total| eprint!("\r[{done}/{total}]"),
    )?;
    eprintln!();
    println!(
        "perplexity: unmerged {:.4} ± {:.4}, merged ({}) {:.4} ± {:.4} ({} tokens scored)",
        r.ppl_base.mean, r.ppl_base.stderr, a.ty, r.ppl.mean, r.ppl.stderr, r.n_scored
    );
    println!(
        "KL divergence (unmerged || merged): mean {:.6} ± {:.6}, 99th percentile {:.6}, max {:.6}; same top token {:.2} %",
        r.kld.mean,
        r.kld.stderr,
        r.kld_p99,
        r.kld_max,
        100.0 * r.same_top.mean
    );
    Ok(())
}
