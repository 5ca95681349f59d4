//! `ferrollama ppo`: PPO against reward models (see `ferrollama_train::ppo`): the policy's
//! LoRA adapter and a value head trained on its own answers, scored, with a per-token KL
//! penalty to the base; reward, KL, entropy and clip fraction printed per iteration, the
//! held-out reward and KL before and after.

use std::path::PathBuf;

use anyhow::Result;
use ferrollama_train::ppo::{Ppo, PpoConfig, PpoEval, PpoEvent};

use crate::cmd::rs::PolicyArgs;
use crate::cmd::tuning::TuningArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model to start from and what is trained: a LoRA adapter (--lora-rank; the
    /// reference is the model without it) or all weights (the reference a second copy).
    /// `--val-data` names held-out prompts here (default: --val-fraction of --prompts);
    /// --seq-len must hold a prompt and its answer.
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The run directory.
    #[arg(long, default_value = "ppo-run")]
    pub out: PathBuf,
    /// Iterations of sampling and updating (default 20; may be raised on --resume).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Prompts answered per iteration (default 32).
    #[arg(long)]
    pub rollouts: Option<usize>,
    /// Answers per optimizer step (default 8).
    #[arg(long)]
    pub minibatch: Option<usize>,
    /// Passes over each iteration's answers (default 1).
    #[arg(long)]
    pub ppo_epochs: Option<usize>,
    /// β of the per-token KL penalty to the reference (default 0.01, Llama 2's).
    #[arg(long)]
    pub kl_coef: Option<f64>,
    /// ε of the clipped objective (default 0.2).
    #[arg(long)]
    pub clip: Option<f64>,
    /// The value loss's weight (default 0.1).
    #[arg(long)]
    pub vf_coef: Option<f64>,
    /// GAE's λ (default 0.95) and γ (default 1).
    #[arg(long)]
    pub lam: Option<f64>,
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Use the raw scores instead of whitening them over each iteration's answers.
    #[arg(long)]
    pub no_whiten_rewards: bool,
    /// Sampling temperature of the answers (default 1.0).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Most tokens per answer (default 256).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Answers decoded together (default 8).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Iterations between held-out measurements (default 0: before and after only).
    #[arg(long)]
    pub eval_every_iterations: Option<usize>,
    /// Share of --prompts held out when --val-data is not given (default 0.1).
    #[arg(long)]
    pub val_fraction: Option<f64>,
}

/// LoRA's peak learning rate for PPO (full weights: 1e-6, Llama 2's).
const LORA_LR: f64 = 1e-4;

pub fn run(a: Args) -> Result<()> {
    let t = &a.tuning;
    t.model
        .no_adapters("ppo (merge the adapter first; --lora-rank trains a new one)")?;
    crate::cmd::train::keep_freed_memory()?;
    let model_path = crate::load::model_path(&t.model)?;
    let saved = a.out.join("ppo.toml");
    let resumed = t.resume && saved.exists();
    let mut cfg = if resumed {
        PpoConfig::from_toml_file(&saved)?
    } else {
        PpoConfig::default()
    };
    let default_lr = if resumed { cfg.tuning.lr } else { LORA_LR };
    let lr = cfg.tuning.lr;
    cfg.tuning = t.apply(cfg.tuning, &model_path, &a.policy.prompts, default_lr)?;
    if t.lora_rank.is_none() && t.lr.is_none() && !resumed {
        cfg.tuning.lr = lr;
    }
    cfg.prompts = cfg.tuning.data.clone();
    if let Some(v) = cfg.tuning.val_data.take() {
        cfg.val_prompts = Some(v);
    }
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = a.$field.clone() { cfg.$field = v; } )* };
    }
    set!(
        iterations,
        rollouts,
        minibatch,
        ppo_epochs,
        kl_coef,
        clip,
        vf_coef,
        lam,
        gamma,
        val_fraction
    );
    if let Some(v) = &a.policy.unsafe_field {
        cfg.unsafe_field = v.clone();
    }
    if let Some(v) = a.eval_every_iterations {
        cfg.eval_every = v;
    }
    if a.no_whiten_rewards {
        cfg.whiten_rewards = false;
    }
    if let Some(v) = a.temperature {
        cfg.sampling.temperature = v;
    }
    if let Some(v) = a.max_new_tokens {
        cfg.sampling.max_new_tokens = v;
    }
    if let Some(v) = a.parallel {
        cfg.sampling.parallel = v;
    }
    let (reward, safety_reward, rewards) = a.policy.open_rewards(cfg.score_batch)?;
    (cfg.reward, cfg.safety_reward) = (reward, safety_reward);
    let mut ppo = Ppo::new(cfg.clone(), &a.out, t.resume, &rewards)?;
    let stop = crate::cmd::train::stop_on_signals();
    let outcome = ppo.run(stop, &mut |e| match e {
        PpoEvent::Started {
            train_prompts,
            val_prompts,
            start_iteration,
            parameters,
        } => eprintln!(
            "PPO from {}: {train_prompts} training and {val_prompts} held-out prompts, {} answers per iteration, iterations {}..{} ({parameters} trained parameters)",
            cfg.tuning.model.display(),
            cfg.rollouts,
            start_iteration + 1,
            cfg.iterations
        ),
        PpoEvent::Sampling {
            iteration,
            heldout,
            done,
            total,
        } if done == total => eprintln!(
            "iteration {iteration}: {total} {} answers sampled",
            if heldout { "held-out" } else { "training" }
        ),
        PpoEvent::Iteration(m) => eprintln!(
            "iteration {}: reward {:.3} (std {:.3}), KL {:.3}, entropy {:.3}, policy loss {:.4}, value loss {:.4}, clip fraction {:.3}, approx KL {:.4}, finished {:.2}, {:.0} tokens/answer",
            m.iteration,
            m.reward.mean,
            m.reward.std,
            m.kl,
            m.entropy,
            m.policy_loss,
            m.value_loss,
            m.clip_fraction,
            m.approx_kl,
            m.finished,
            m.mean_answer_tokens
        ),
        PpoEvent::Eval(e) => eprintln!("{}", eval_line(e)),
        _ => {}
    })?;
    match outcome {
        None => eprintln!("stopped; `--resume` with the same settings continues the run"),
        Some(evals) => {
            println!("{}", table(&evals));
            println!(
                "the policy: {} (merged) and {}; per-iteration figures in {}",
                a.out.join("model.gguf").display(),
                a.out.join("adapter").display(),
                a.out.join("metrics.jsonl").display()
            );
        }
    }
    Ok(())
}

fn eval_line(e: &PpoEval) -> String {
    crate::cmd::rs::heldout_line(&format!("after {} iterations", e.iteration), &e.heldout)
}

/// The measurements as a Markdown table.
fn table(evals: &[PpoEval]) -> String {
    let mut out = String::from(
        "| iterations | held-out reward (mean ± std) | median | KL to reference | finished |\n|---:|---:|---:|---:|---:|\n",
    );
    for e in evals {
        let h = &e.heldout;
        out.push_str(&format!(
            "| {} | {:.3} ± {:.3} | {:.3} | {:.3} | {:.2} |\n",
            e.iteration, h.reward.mean, h.reward.std, h.reward.median, h.kl, h.finished
        ));
    }
    out
}
