//! Training data a model writes for itself (Llama 2-Chat, Touvron et al. 2023):
//!
//! - Context distillation (4.2.4): answers generated with a safety pre-prompt, written as
//!   SFT data without it, so the model learns to answer as if it had been told; optionally
//!   targeted, as the paper does, keeping a distilled answer only where the reward model
//!   scores it above the answer the model gives without the pre-prompt.
//! - Ghost Attention (3.3): a multi-turn dialogue's answers sampled with an instruction
//!   joined to every user turn, then written with the instruction on the first turn only
//!   and the earlier turns' answers unlearned (`"weight": 0`), so the model learns to keep
//!   an instruction it was given once.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use ferrollama_generate::{FinishReason, Message};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::policy::{sample_answers, Prompt, Reward, Sampling};
use crate::sft::Conversation;

/// Where a pre-prompt or instruction goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// A system message before the conversation (replacing none: a prompt's own system
    /// message follows it, joined).
    System,
    /// Before the user's text, on its own line.
    User,
}

/// `prompt` with `text` added as `placement` says (to its first user turn for `User`).
pub fn with_preprompt(prompt: &[Message], text: &str, placement: Placement) -> Vec<Message> {
    let mut out = prompt.to_vec();
    match placement {
        Placement::System => match out.first_mut() {
            Some(m) if m.role == "system" => m.content = format!("{text}\n{}", m.content),
            _ => out.insert(0, Message::new("system", text)),
        },
        Placement::User => {
            if let Some(m) = out.iter_mut().find(|m| m.role == "user") {
                m.content = format!("{text}\n{}", m.content);
            }
        }
    }
    out
}

/// The context an answer is distilled from: a pre-prompt placed as `placement`, and
/// optionally demonstrations (user and assistant turns, for example refusals of harmful
/// requests next to plain answers of harmless ones) put before the prompt's own turns.
/// Llama 2 adds answer templates to its pre-prompts; a small model follows demonstrations
/// far better than it follows an instruction.
#[derive(Debug, Clone, PartialEq)]
pub struct PreContext {
    pub preprompt: String,
    pub placement: Placement,
    pub examples: Vec<Message>,
}

impl PreContext {
    /// A pre-prompt alone.
    pub fn new(preprompt: &str, placement: Placement) -> Self {
        Self {
            preprompt: preprompt.into(),
            placement,
            examples: Vec::new(),
        }
    }

    /// `prompt` with the pre-prompt, then the demonstrations after its system message.
    pub fn apply(&self, prompt: &[Message]) -> Vec<Message> {
        let mut out = with_preprompt(prompt, &self.preprompt, self.placement);
        let at = out.iter().take_while(|m| m.role == "system").count();
        out.splice(at..at, self.examples.iter().cloned());
        out
    }
}

/// Demonstration turns from a JSON file: `{"messages": [...]}` or a bare list of
/// `{"role", "content"}`, user and assistant turns alternating, starting with a user turn
/// and ending with an answer.
pub fn read_examples(path: &Path) -> Result<Vec<Message>> {
    let err = |m: String| Error::Config(format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let list = match v.get("messages").unwrap_or(&v) {
        Value::Array(a) => a,
        _ => {
            return Err(err(
                "expected a list of messages or {\"messages\": [...]}".into()
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let field = |k: &str| m.get(k).and_then(Value::as_str);
        let (Some(role), Some(content)) = (field("role"), field("content")) else {
            return Err(err(format!(
                "message {i}: needs string `role` and `content`"
            )));
        };
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        if role != want {
            return Err(err(format!(
                "message {i}: role `{role}` where `{want}` was expected (user and assistant \
                 turns alternate; the pre-prompt is the system message)"
            )));
        }
        out.push(Message::new(role, content));
    }
    if out.is_empty() || out.len() % 2 != 0 {
        return Err(err(
            "the demonstrations must be whole exchanges (a user turn and its answer)".into(),
        ));
    }
    Ok(out)
}

/// One context-distillation record.
#[derive(Debug, Clone, PartialEq)]
pub struct Distilled {
    pub prompt: usize,
    /// The answer given with the pre-prompt, and whether it ended before the token limit.
    pub answer: String,
    pub finished: bool,
    /// With a reward: the answer without the pre-prompt and both scores (on the
    /// conversation without the pre-prompt, as it will be learned).
    pub plain: Option<(String, f64, f64)>,
}

impl Distilled {
    /// Whether the record is kept: finished, and (targeted) scored above the plain answer.
    pub fn kept(&self) -> bool {
        self.finished
            && self
                .plain
                .as_ref()
                .is_none_or(|(_, with, without)| with > without)
    }

    /// The SFT record: the prompt without the pre-prompt, the distilled answer, and what
    /// it was compared with.
    pub fn record(&self, p: &Prompt) -> Value {
        let mut rec = p.answered(&self.answer).to_record();
        if let Some((plain, with, without)) = &self.plain {
            rec["plain_answer"] = json!(plain);
            rec["reward"] = json!(with);
            rec["plain_reward"] = json!(without);
        }
        rec
    }
}

/// Context distillation of `prompts` by the model at `model`: an answer to each in
/// `context` (one sample at `sampling`'s temperature, seeded by
/// the prompt's index), and with `reward` also an answer without it and both scored.
/// `None` when `stop` was set.
#[allow(clippy::too_many_arguments)]
pub fn distill(
    model: &Path,
    prompts: &[Prompt],
    context: &PreContext,
    sampling: &Sampling,
    seed: u64,
    reward: Option<&dyn Reward>,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Option<Vec<Distilled>>> {
    if context.preprompt.trim().is_empty() {
        return Err(Error::Config("the pre-prompt is empty".into()));
    }
    let guided: Vec<Prompt> = prompts
        .iter()
        .map(|p| Prompt {
            messages: context.apply(&p.messages),
            unsafe_prompt: p.unsafe_prompt,
        })
        .collect();
    let Some(with) = sample_answers(model, &guided, 1, sampling, seed, stop, &mut |d, t| {
        progress("with the pre-prompt", d, t)
    })?
    else {
        return Ok(None);
    };
    let mut out: Vec<Distilled> = with
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let c = c.remove(0);
            Distilled {
                prompt: i,
                answer: c.text,
                finished: c.finish == FinishReason::Stop,
                plain: None,
            }
        })
        .collect();
    let Some(reward) = reward else {
        return Ok(Some(out));
    };
    let Some(plain) = sample_answers(model, prompts, 1, sampling, seed, stop, &mut |d, t| {
        progress("without it", d, t)
    })?
    else {
        return Ok(None);
    };
    let mut conversations = Vec::with_capacity(2 * prompts.len());
    let mut flags = Vec::with_capacity(2 * prompts.len());
    for ((p, d), c) in prompts.iter().zip(&out).zip(&plain) {
        conversations.push(p.answered(&d.answer));
        conversations.push(p.answered(&c[0].text));
        flags.extend([p.unsafe_prompt; 2]);
    }
    let scores = reward.scores(&conversations, &flags)?;
    if scores.len() != conversations.len() {
        return Err(Error::Internal(
            "the reward gave a score per answer short".into(),
        ));
    }
    for ((d, c), two) in out.iter_mut().zip(plain).zip(scores.chunks_exact(2)) {
        d.plain = Some((c[0].text.clone(), two[0], two[1]));
    }
    Ok(Some(out))
}

/// Which turns of a Ghost Attention dialogue are learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// One sample per turn k (turns 1..=k, turn k learned): the instruction is learned at
    /// every distance from where it was given.
    EveryTurn,
    /// One sample per dialogue, its last turn learned (the paper's form).
    LastTurn,
}

/// A dialogue answered for Ghost Attention.
#[derive(Debug, Clone, PartialEq)]
pub struct GattDialogue {
    pub instruction: String,
    /// The user turns as written (without the instruction) and the answers.
    pub turns: Vec<(String, String)>,
    /// Whether every answer ended before the token limit.
    pub finished: bool,
}

impl GattDialogue {
    /// The training records: the instruction on the first user turn only, earlier answers
    /// unlearned.
    pub fn records(&self, learned: Learned, placement: Placement) -> Vec<Value> {
        let ks: Vec<usize> = match learned {
            Learned::EveryTurn => (1..=self.turns.len()).collect(),
            Learned::LastTurn => vec![self.turns.len()],
        };
        ks.into_iter()
            .map(|k| {
                let mut messages = Vec::new();
                for (user, answer) in &self.turns[..k] {
                    messages.push(Message::new("user", user));
                    messages.push(Message::new("assistant", answer));
                }
                let messages = with_preprompt(&messages, &self.instruction, placement);
                let mut unlearned: Vec<usize> = (0..messages.len())
                    .filter(|&i| messages[i].role == "assistant")
                    .collect();
                unlearned.pop();
                let mut rec = Conversation {
                    messages,
                    unlearned,
                }
                .to_record();
                rec["instruction"] = json!(self.instruction);
                rec
            })
            .collect()
    }
}

/// Answers `dialogues` (user turns) turn by turn with the model at `model`, dialogue d
/// under `instructions[d % len]`: joined to every user turn with `every_turn` (Ghost
/// Attention's sampling), to the first only without (how the instruction is given in use,
/// and the answers a model trained without GAtt learns from). `None` when stopped.
#[allow(clippy::too_many_arguments)]
pub fn gatt(
    model: &Path,
    dialogues: &[Vec<String>],
    instructions: &[String],
    every_turn: bool,
    placement: Placement,
    sampling: &Sampling,
    seed: u64,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<Option<Vec<GattDialogue>>> {
    if instructions.is_empty() || instructions.iter().any(|i| i.trim().is_empty()) {
        return Err(Error::Config(
            "an instruction is empty, or none is given".into(),
        ));
    }
    let mut out: Vec<GattDialogue> = dialogues
        .iter()
        .enumerate()
        .map(|(d, _)| GattDialogue {
            instruction: instructions[d % instructions.len()].clone(),
            turns: Vec::new(),
            finished: true,
        })
        .collect();
    let longest = dialogues.iter().map(Vec::len).max().unwrap_or(0);
    for t in 0..longest {
        let live: Vec<usize> = (0..dialogues.len())
            .filter(|&d| dialogues[d].len() > t)
            .collect();
        let prompts: Vec<Prompt> = live
            .iter()
            .map(|&d| {
                let inst = &out[d].instruction;
                let mut messages = Vec::new();
                for (k, (user, answer)) in out[d].turns.iter().enumerate() {
                    messages.extend(user_turn(user, inst, k == 0 || every_turn, placement));
                    messages.push(Message::new("assistant", answer));
                }
                messages.extend(user_turn(
                    &dialogues[d][t],
                    inst,
                    t == 0 || every_turn,
                    placement,
                ));
                Prompt {
                    messages: merge_system(messages),
                    unsafe_prompt: false,
                }
            })
            .collect();
        let Some(answers) = sample_answers(
            model,
            &prompts,
            1,
            sampling,
            crate::finetune::mix(seed, t as u64, 3),
            stop,
            &mut |done, total| progress(t + 1, done, total),
        )?
        else {
            return Ok(None);
        };
        for (&d, mut a) in live.iter().zip(answers) {
            let c = a.remove(0);
            out[d].finished &= c.finish == FinishReason::Stop;
            out[d].turns.push((dialogues[d][t].clone(), c.text));
        }
    }
    Ok(Some(out))
}

/// A user turn, with the instruction when `instructed`.
fn user_turn(user: &str, inst: &str, instructed: bool, placement: Placement) -> Vec<Message> {
    let m = vec![Message::new("user", user)];
    if instructed {
        with_preprompt(&m, inst, placement)
    } else {
        m
    }
}

/// One system message at the start (the instruction given as a system message on
/// several turns is said once, as chat formats allow one).
fn merge_system(messages: Vec<Message>) -> Vec<Message> {
    let mut system: Option<Message> = None;
    let mut rest = Vec::with_capacity(messages.len());
    for m in messages {
        if m.role == "system" {
            if system.is_none() {
                system = Some(m);
            }
        } else {
            rest.push(m);
        }
    }
    system.into_iter().chain(rest).collect()
}

/// The user turns of each dialogue in a file: `messages` (the user messages; the
/// assistant's are dropped, to be answered anew) or `turns` (a list of strings).
pub fn read_dialogues(path: &Path) -> Result<Vec<Vec<String>>> {
    let err = |n: usize, m: &str| Error::Config(format!("{}: record {n}: {m}", path.display()));
    crate::sft::read_records(path)?
        .into_iter()
        .map(|(n, v)| {
            let turns: Vec<String> = if let Some(list) = v.get("turns") {
                list.as_array()
                    .ok_or_else(|| err(n, "`turns` must be a list of strings"))?
                    .iter()
                    .map(|t| t.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| err(n, "`turns` must be a list of strings"))?
            } else if let Some(list) = v.get("messages") {
                crate::sft::parse_messages(list, "messages")
                    .map_err(|m| err(n, &m))?
                    .into_iter()
                    .filter(|m| m.role == "user")
                    .map(|m| m.content)
                    .collect()
            } else {
                return Err(err(n, "a dialogue needs `turns` or `messages`"));
            };
            if turns.is_empty() {
                return Err(err(n, "the dialogue has no user turn"));
            }
            Ok(turns)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprompts_go_where_asked() {
        let p = vec![Message::new("user", "Hi")];
        assert_eq!(
            with_preprompt(&p, "Be safe.", Placement::System),
            [
                Message::new("system", "Be safe."),
                Message::new("user", "Hi")
            ]
        );
        assert_eq!(
            with_preprompt(&p, "Be safe.", Placement::User),
            [Message::new("user", "Be safe.\nHi")]
        );
        let s = vec![Message::new("system", "S"), Message::new("user", "Hi")];
        assert_eq!(
            with_preprompt(&s, "Be safe.", Placement::System)[0].content,
            "Be safe.\nS"
        );
    }

    #[test]
    fn demonstrations_go_between_the_system_message_and_the_prompt() {
        let mut c = PreContext::new("Be safe.", Placement::System);
        c.examples = vec![Message::new("user", "Q"), Message::new("assistant", "A")];
        let p = vec![Message::new("user", "Hi")];
        let roles = |m: Vec<Message>| m.into_iter().map(|m| m.content).collect::<Vec<_>>();
        assert_eq!(roles(c.apply(&p)), ["Be safe.", "Q", "A", "Hi"]);
        c.placement = Placement::User;
        assert_eq!(roles(c.apply(&p)), ["Q", "A", "Be safe.\nHi"]);
        let dir = std::env::temp_dir().join(format!("ferrollama-examples-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("e.json");
        std::fs::write(&f, r#"{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}"#).unwrap();
        assert_eq!(read_examples(&f).unwrap(), c.examples);
        std::fs::write(&f, r#"[{"role": "user", "content": "Q"}]"#).unwrap();
        assert!(read_examples(&f)
            .unwrap_err()
            .to_string()
            .contains("whole exchanges"));
        std::fs::write(
            &f,
            r#"[{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]"#,
        )
        .unwrap();
        assert!(read_examples(&f)
            .unwrap_err()
            .to_string()
            .contains("role `system`"));
        std::fs::write(&f, "[1").unwrap();
        assert!(read_examples(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gatt_records_keep_the_instruction_once_and_learn_one_turn() {
        let d = GattDialogue {
            instruction: "Start with Ahoy.".into(),
            turns: vec![("a".into(), "Ahoy A".into()), ("b".into(), "Ahoy B".into())],
            finished: true,
        };
        let all = d.records(Learned::EveryTurn, Placement::User);
        assert_eq!(all.len(), 2);
        let m = &all[1]["messages"];
        assert_eq!(m[0]["content"], "Start with Ahoy.\na");
        assert_eq!(m[2]["content"], "b");
        assert_eq!(m[1]["weight"], 0);
        assert!(m[3].get("weight").is_none());
        let c = crate::sft::conversation_from_record(&all[1]).unwrap();
        assert_eq!(c.unlearned, [1]);
        let last = d.records(Learned::LastTurn, Placement::System);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0]["messages"][0]["role"], "system");
        assert_eq!(last[0]["messages"][1]["content"], "a");
    }

    #[test]
    fn targeted_distillation_keeps_only_improvements() {
        let d = |finished, plain| Distilled {
            prompt: 0,
            answer: "x".into(),
            finished,
            plain,
        };
        assert!(d(true, None).kept());
        assert!(!d(false, None).kept());
        assert!(d(true, Some(("y".into(), 1.0, 0.5))).kept());
        assert!(!d(true, Some(("y".into(), 0.5, 0.5))).kept());
    }
}
