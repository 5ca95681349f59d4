//! CPU kernels that must be faster than candle's: quantized dot products with activations
//! quantized to 8 bits (as ggml does), chosen at run time by CPU features, each beside a
//! plain scalar reference that the tests compare it with.

pub mod attention;
pub mod matmul;
pub mod packed;
pub mod q4_0;
pub mod q4_1;
pub mod q8_0;
pub mod q8_1;

pub use matmul::{matmul, matmul_q4_1, WeightFormat};
pub use packed::PackedMatrix;
