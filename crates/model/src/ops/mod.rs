//! Fused operations of the training path, each with its backward pass written out and
//! tested against the composed candle expressions: causal GQA attention that never keeps
//! the score matrices, the output projection fused with the cross-entropy, RMSNorm,
//! SwiGLU's gating, RoPE over split heads, and matrix products split between threads.

pub mod attention_gemm;
pub mod fused;
pub mod head_loss;
pub mod matmul;
pub mod norm;
pub mod rope_heads;
pub mod swiglu;
