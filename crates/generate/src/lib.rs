//! From a prompt to text: the decode loop with stop conditions and streaming that never
//! splits a UTF-8 character, and the chat formats (Llama 2's and Jinja templates).

pub mod chat;
pub mod decoding;
pub mod error;
pub mod generator;
pub mod stop;
pub mod utf8;

pub use chat::{ChatFormat, Message};
pub use decoding::{Decoding, Step, TokenLogprob};
pub use error::{Error, Result};
pub use generator::{FinishReason, GenerateParams, Generation, Generator};
