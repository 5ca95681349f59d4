//! The seminar's probes of what a model knows about language, as a tool: a sentence's
//! dependency analysis and a word's morphology tree, asked for in the seminar's prompts,
//! held to their formats by grammars, drawn, and scored against treebanks and spaCy.

pub mod conllu;
pub mod dependency;
pub mod draw;
pub mod error;
pub mod morphology;
pub mod report;

pub use error::{Error, Result};
