//! GGUF model files (the llama.cpp format): a reader that bounds every size and offset
//! before use, over a memory map, and a writer. No model logic lives here.
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>

pub mod error;
pub mod names;
pub mod reader;
pub mod safetensors;
pub mod types;
pub mod value;
pub mod writer;

pub use error::{Error, Result};
pub use reader::{Gguf, GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{Value, ValueType};
pub use writer::{GgufWriter, TensorToWrite};
