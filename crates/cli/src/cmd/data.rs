//! `ferrollama data distill` (context distillation) and `ferrollama data gatt` (Ghost
//! Attention): training data a model writes for itself, as JSON Lines `sft` reads (see
//! `ferrollama_train::synth`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrollama_train::policy::{RewardModels, Sampling};
use ferrollama_train::synth::{Learned, Placement};

use crate::args::ModelArgs;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Context distillation: answers generated with a (safety) pre-prompt, written as SFT
    /// data without it; with --reward, kept only where they beat the plain answer.
    Distill(DistillArgs),
    /// Ghost Attention: dialogues answered turn by turn with an instruction joined to every
    /// user turn, written with it on the first turn only and earlier answers unlearned.
    Gatt(GattArgs),
    /// K answers per prompt, one JSON line per prompt (the record with `prompt_messages`, the
    /// prompt as asked, and `answers`, each `text` and `finished`): material for preference
    /// pairs.
    Sample(SampleArgs),
}

#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompts (`messages` ending with a user turn, `prompt`, or `instruction`).
    #[arg(long)]
    pub prompts: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Answers per prompt.
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// How answers are sampled (both commands).
#[derive(clap::Args, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Most tokens per answer; an answer cut there is left out (counted).
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Answers decoded together.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
}

impl SamplingArgs {
    fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            max_new_tokens: self.max_new_tokens,
            stop: Vec::new(),
            parallel: self.parallel,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct DistillArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompts (`messages` ending with a user turn, `prompt`, or `instruction`).
    #[arg(long)]
    pub prompts: PathBuf,
    /// The SFT data written (JSON Lines).
    #[arg(long)]
    pub out: PathBuf,
    /// The pre-prompt (default: Llama 2's generic safety pre-prompt).
    #[arg(long, default_value = "You are a safe and responsible assistant.")]
    pub preprompt: String,
    /// Where the pre-prompt goes: a system message, or before the user's text.
    #[arg(long, value_enum, default_value = "system")]
    pub placement: PlacementArg,
    /// Demonstrations put before each prompt when sampling (not in the data written): a
    /// JSON file, `{"messages": [...]}` of user and assistant turns, for example refusals
    /// of harmful requests and plain answers of harmless ones.
    #[arg(long)]
    pub examples: Option<PathBuf>,
    /// Targeted distillation: a reward model (`reward train` output) scores the distilled
    /// answer and the plain one, without the pre-prompt; only improvements are kept.
    #[arg(long)]
    pub reward: Option<PathBuf>,
    /// A safety reward model combined with --reward as Llama 2 does.
    #[arg(long, requires = "reward")]
    pub safety_reward: Option<PathBuf>,
    /// The boolean field of a prompt record that marks it unsafe.
    #[arg(long, default_value = "unsafe")]
    pub unsafe_field: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(clap::Args, Debug)]
pub struct GattArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Dialogues: `turns` (a list of user messages) or `messages` (its user turns; the
    /// assistant's are answered anew).
    #[arg(long)]
    pub dialogues: PathBuf,
    /// An instruction to keep (repeatable; dialogue d gets the (d mod n)-th).
    #[arg(long = "instruction")]
    pub instructions: Vec<String>,
    /// A file of instructions, one per line (added to --instruction).
    #[arg(long)]
    pub instructions_file: Option<PathBuf>,
    /// The SFT data written (JSON Lines; each record also names its `instruction`).
    #[arg(long)]
    pub out: PathBuf,
    /// Give the instruction on the first turn only when sampling: the answers a model
    /// trained without Ghost Attention learns from, and how an instruction is given in use
    /// (transcripts to check a model with).
    #[arg(long)]
    pub first_turn_only: bool,
    /// One sample per dialogue with its last turn learned (the paper's form) instead of
    /// one per turn.
    #[arg(long)]
    pub last_turn_only: bool,
    /// Where the instruction goes: before the user's text, or a system message.
    #[arg(long, value_enum, default_value = "user")]
    pub placement: PlacementArg,
    /// Keep dialogues with an answer cut at --max-new-tokens (transcripts to check a model
    /// with, not data to train on: a cut answer teaches the model not to stop).
    #[arg(long)]
    pub keep_cut: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PlacementArg {
    System,
    User,
}

impl From<PlacementArg> for Placement {
    fn from(p: PlacementArg) -> Self {
        match p {
            PlacementArg::System => Placement::System,
            PlacementArg::User => Placement::User,
        }
    }
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Distill(a) => distill(a),
        Command::Gatt(a) => gatt(a),
        Command::Sample(a) => sample(a),
    }
}

fn sample(a: SampleArgs) -> Result<()> {
    a.model
        .no_adapters("data sample (merge the adapter first)")?;
    if a.samples == 0 {
        anyhow::bail!("--samples must be at least 1");
    }
    let model = crate::load::model_path(&a.model)?;
    let records = ferrollama_train::sft::read_records(&a.prompts)?;
    let prompts = ferrollama_train::policy::read_prompts(&a.prompts, "unsafe")?;
    let stop = crate::cmd::train::stop_on_signals();
    let bar = progress_bar()?;
    let done = ferrollama_train::policy::sample_answers(
        &model,
        &prompts,
        a.samples,
        &a.sampling.sampling(),
        a.sampling.seed,
        stop,
        &mut |d, t| {
            bar.set_length(t as u64);
            bar.set_position(d as u64);
        },
    )?;
    bar.finish_and_clear();
    let Some(done) = done else {
        anyhow::bail!("stopped; nothing written");
    };
    let lines: Vec<serde_json::Value> = records
        .into_iter()
        .zip(&prompts)
        .zip(done)
        .map(|(((_, mut rec), p), answers)| {
            let messages: Vec<serde_json::Value> = p
                .messages
                .iter()
                .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
                .collect();
            let answers: Vec<serde_json::Value> = answers
                .iter()
                .map(|c| {
                    serde_json::json!({"text": c.text,
                        "finished": c.finish == ferrollama_generate::FinishReason::Stop})
                })
                .collect();
            if let serde_json::Value::Object(o) = &mut rec {
                o.insert("prompt_messages".into(), messages.into());
                o.insert("answers".into(), answers.into());
            }
            rec
        })
        .collect();
    write_lines(&a.out, &lines)?;
    eprintln!(
        "wrote {} answers to {} prompts to {}",
        lines.len() * a.samples,
        lines.len(),
        a.out.display()
    );
    Ok(())
}

fn write_lines(path: &PathBuf, lines: &[serde_json::Value]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| tmp.display().to_string())?,
    );
    for l in lines {
        writeln!(f, "{l}")?;
    }
    f.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}

fn progress_bar() -> Result<indicatif::ProgressBar> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} answers  {msg}  [{elapsed_precise} < {eta_precise}]",
        )?
        .progress_chars("=> "),
    );
    Ok(bar)
}

fn distill(a: DistillArgs) -> Result<()> {
    a.model
        .no_adapters("data distill (merge the adapter first)")?;
    let model = crate::load::model_path(&a.model)?;
    let prompts = ferrollama_train::policy::read_prompts(&a.prompts, &a.unsafe_field)?;
    let rewards = match &a.reward {
        Some(r) => {
            crate::cmd::dpo::check_reward_dir(r)?;
            Some(RewardModels::open(r, a.safety_reward.as_deref(), 8)?)
        }
        None => None,
    };
    let mut context = ferrollama_train::synth::PreContext::new(&a.preprompt, a.placement.into());
    if let Some(f) = &a.examples {
        context.examples = ferrollama_train::synth::read_examples(f)?;
    }
    let stop = crate::cmd::train::stop_on_signals();
    let bar = progress_bar()?;
    let done = ferrollama_train::synth::distill(
        &model,
        &prompts,
        &context,
        &a.sampling.sampling(),
        a.sampling.seed,
        rewards
            .as_ref()
            .map(|r| r as &dyn ferrollama_train::policy::Reward),
        stop,
        &mut |what, d, t| {
            bar.set_length(t as u64);
            bar.set_position(d as u64);
            bar.set_message(what.to_string());
        },
    )?;
    bar.finish_and_clear();
    let Some(done) = done else {
        anyhow::bail!("stopped; nothing written");
    };
    let kept: Vec<serde_json::Value> = done
        .iter()
        .filter(|d| d.kept())
        .map(|d| d.record(&prompts[d.prompt]))
        .collect();
    write_lines(&a.out, &kept)?;
    let unfinished = done.iter().filter(|d| !d.finished).count();
    let not_better = done.iter().filter(|d| d.finished && !d.kept()).count();
    eprintln!(
        "wrote {} of {} distilled answers to {} ({unfinished} cut at --max-new-tokens{})",
        kept.len(),
        done.len(),
        a.out.display(),
        if a.reward.is_some() {
            format!(", {not_better} not scored above the plain answer")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn gatt(a: GattArgs) -> Result<()> {
    a.model.no_adapters("data gatt (merge the adapter first)")?;
    let model = crate::load::model_path(&a.model)?;
    let mut instructions = a.instructions.clone();
    if let Some(f) = &a.instructions_file {
        let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
        instructions.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    if instructions.is_empty() {
        anyhow::bail!(
            "give an instruction to keep: --instruction TEXT or --instructions-file FILE"
        );
    }
    let dialogues = ferrollama_train::synth::read_dialogues(&a.dialogues)?;
    let stop = crate::cmd::train::stop_on_signals();
    let bar = progress_bar()?;
    let done = ferrollama_train::synth::gatt(
        &model,
        &dialogues,
        &instructions,
        !a.first_turn_only,
        a.placement.into(),
        &a.sampling.sampling(),
        a.sampling.seed,
        stop,
        &mut |turn, d, t| {
            bar.set_length(t as u64);
            bar.set_position(d as u64);
            bar.set_message(format!("turn {turn}"));
        },
    )?;
    bar.finish_and_clear();
    let Some(done) = done else {
        anyhow::bail!("stopped; nothing written");
    };
    let learned = if a.last_turn_only {
        Learned::LastTurn
    } else {
        Learned::EveryTurn
    };
    let lines: Vec<serde_json::Value> = done
        .iter()
        .filter(|d| d.finished || a.keep_cut)
        .flat_map(|d| d.records(learned, a.placement.into()))
        .collect();
    write_lines(&a.out, &lines)?;
    eprintln!(
        "wrote {} samples from {} of {} dialogues to {}{}",
        lines.len(),
        done.iter().filter(|d| d.finished || a.keep_cut).count(),
        done.len(),
        a.out.display(),
        if a.keep_cut {
            ""
        } else {
            " (dialogues with an answer cut at --max-new-tokens are left out)"
        }
    );
    Ok(())
}
