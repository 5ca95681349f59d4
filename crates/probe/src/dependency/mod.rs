//! The seminar's dependency probe: ask a model for a sentence's analysis in the seminar's
//! format (zero- or two-shot), optionally held to that format by a grammar, read the
//! answer and score it against a treebank.

pub mod analysis;
pub mod labels;
pub mod prompt;
pub mod score;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ferrollama_generate::{generate_all, ChatFormat, FinishReason, GenerateParams, Job, Message};
use ferrollama_grammar::{parse, Constraint, Vocabulary};
use ferrollama_model::Llama;
use ferrollama_sampling::SamplingParams;
use ferrollama_tokenizer::Tokenizer;

use crate::conllu::Sentence;
use crate::error::{Error, Result};
pub use analysis::Analysis;
pub use prompt::Shots;
pub use score::Scores;

/// How to ask.
#[derive(Debug, Clone)]
pub struct Settings {
    pub shots: Shots,
    /// Hold answers to the format with a grammar (tokens fixed to the sentence's).
    pub constrained: bool,
    /// Sequences decoded at once.
    pub parallel: usize,
    /// Ask as a user message in this chat format (the answer is the assistant's); `None`:
    /// as text to continue after `Analysis:`.
    pub chat: Option<ChatFormat>,
}

/// One supervised example for teaching the format: the chat request for `gold` and its
/// gold analysis as the answer, relations as UD's universal ones (subtypes dropped), the
/// format the probe's grammar takes.
pub fn training_example(gold: &Sentence, shots: Shots) -> (String, String) {
    let mut a = Analysis::from_sentence(gold);
    for d in &mut a.deps {
        *d = labels::universal(d).map_or_else(|| "dep".to_string(), str::to_string);
    }
    (prompt::request(&gold.text, shots), a.to_python())
}

/// One sentence's answer.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The model's text after `Analysis:`.
    pub answer: String,
    pub finish: FinishReason,
    /// The analysis, or why the answer is not one.
    pub analysis: std::result::Result<Analysis, String>,
}

impl Outcome {
    /// The analysis as CoNLL-U words, when the answer parsed.
    pub fn predicted(&self, gold: &Sentence) -> Option<Sentence> {
        self.analysis
            .as_ref()
            .ok()
            .map(|a| a.to_sentence(&gold.id, &gold.text))
    }
}

/// Tokens an answer may take: the characters of the longest answer the grammar allows
/// (every token is at least one character), so a constrained answer is never cut off;
/// a free one gets the same room.
fn answer_budget(tokens: &[String]) -> usize {
    let longest_tag = labels::UPOS.iter().map(|t| t.len()).max().unwrap_or(0);
    let longest_label = labels::answer_labels()
        .iter()
        .map(|l| l.len())
        .max()
        .unwrap_or(0);
    let digits = tokens.len().to_string().len().max(4); // "None"
    let words: usize = tokens
        .iter()
        .map(|t| analysis::py_string(t).len() + 2)
        .sum();
    let per_token = (longest_tag + 4) + (longest_label + 4) + (digits + 2);
    words + tokens.len() * per_token + 80
}

/// Asks for every sentence's analysis (greedy) and reads the answers. `progress` is told
/// how many are done.
pub fn probe(
    model: &Llama,
    tok: &Tokenizer,
    vocab: &Arc<Vocabulary>,
    sentences: &[Sentence],
    settings: &Settings,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Outcome>> {
    let mut jobs = Vec::with_capacity(sentences.len());
    let mut longest = 0;
    for (i, s) in sentences.iter().enumerate() {
        if s.words.is_empty() {
            return Err(Error::Input(format!("sentence {} has no words", s.id)));
        }
        let tokens: Vec<String> = s.words.iter().map(|w| w.form.clone()).collect();
        let (prompt, lead) = match &settings.chat {
            Some(format) => {
                let request = Message::new("user", &prompt::request(&s.text, settings.shots));
                (format.encode(&[request], tok)?, "")
            }
            None => (
                tok.encode(&prompt::prompt(&s.text, settings.shots), true, true),
                " ",
            ),
        };
        let grammar = if settings.constrained {
            let g = Arc::new(parse(&prompt::grammar(&tokens, lead))?);
            Some(Constraint::new(g, Arc::clone(vocab))?)
        } else {
            None
        };
        let max_new_tokens = answer_budget(&tokens);
        longest = longest.max(prompt.len() + max_new_tokens);
        jobs.push(Job {
            id: i as u64,
            prompt,
            params: GenerateParams {
                max_new_tokens,
                // The format has no blank line; the next example would begin after one.
                stop: vec!["\n\n".into(), "\nSentence:".into()],
                sampling: SamplingParams::greedy(),
                ignore_eos: false,
                grammar,
            },
            top_logprobs: None,
            adapter: None,
        });
    }
    let n_ctx = longest.min(model.max_context());
    let stop = AtomicBool::new(false);
    let done = generate_all(
        model,
        tok,
        jobs,
        settings.parallel.max(1),
        n_ctx,
        &stop,
        progress,
    )?
    .ok_or_else(|| Error::Input("the probe was stopped".into()))?;
    Ok(done
        .into_iter()
        .map(|c| {
            let analysis = if c.finish == FinishReason::Length {
                Err(format!("cut off after {} tokens", c.ids.len()))
            } else {
                Analysis::parse(&c.text)
            };
            Outcome {
                answer: c.text,
                finish: c.finish,
                analysis,
            }
        })
        .collect())
}

/// Scores of answers against their gold sentences.
pub fn score(gold: &[Sentence], outcomes: &[Outcome]) -> Scores {
    let mut s = Scores::default();
    for (g, o) in gold.iter().zip(outcomes) {
        s.add(g, o.predicted(g).as_ref());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrollama_grammar::{matches, parse as parse_gbnf};

    #[test]
    fn the_budget_covers_the_longest_answer_the_grammar_allows() {
        let tokens: Vec<String> = (0..30).map(|i| format!("w\"{i}")).collect();
        let n = tokens.len();
        let longest = Analysis {
            tokens: tokens.clone(),
            pos: vec!["PROPN".into(); n],
            deps: vec!["reparandum".into(); n],
            heads: vec![None; n],
        };
        let answer = format!(" {}", longest.to_python());
        assert!(matches(
            &parse_gbnf(&prompt::grammar(&tokens, " ")).unwrap(),
            &answer
        )
        .unwrap());
        assert!(
            answer.len() <= answer_budget(&tokens),
            "{} > {}",
            answer.len(),
            answer_budget(&tokens)
        );
    }
}
