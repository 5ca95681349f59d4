//! From a prompt to text: the decode loop with stop conditions and streaming that never
//! splits a UTF-8 character, the chat formats (Llama 2's and Jinja templates), and
//! opening a model with its tokenizer and template (`Bundle`).

pub mod batch;
pub mod bundle;
pub mod chat;
pub mod constrain;
pub mod decoding;
pub mod engine;
pub mod error;
pub mod generator;
pub mod stop;
pub mod utf8;

pub use batch::{generate_all, Completion};
pub use bundle::{Bundle, OpenOptions};
pub use chat::{ChatFormat, Message};
pub use constrain::{constraint, grammar_vocabulary, GrammarSource};
pub use decoding::{Decoding, Step, TokenLogprob};
pub use engine::{Engine, Event, Job, JobId, Observer, Usage};
pub use error::{Error, Result};
pub use generator::{FinishReason, GenerateParams, Generation, Generator};
