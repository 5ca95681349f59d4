//! One module per subcommand.

pub mod bench;
pub mod chat;
pub mod convert;
pub mod data;
pub mod dpo;
pub mod embed;
pub mod encoder;
pub mod eval;
pub mod generate;
pub mod info;
pub mod logits;
pub mod merge;
pub mod perplexity;
pub mod ppo;
pub mod rag;
pub mod rag_ask;
pub mod rag_eval;
pub mod reward;
pub mod rs;
pub mod safety_eval;
pub mod serve;
pub mod sft;
pub mod similar;
pub mod tokenize;
pub mod train;
pub mod tuning;
