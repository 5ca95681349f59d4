//! The quantized weight formats with their own kernels: 32-value blocks dotted with 8-bit
//! activations.

use crate::{q4_0, q4_1, q5, q8_0};

/// A weight format with 32-value blocks dotted with 8-bit activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl WeightFormat {
    /// Bytes per block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => q4_0::BLOCK_BYTES,
            Self::Q4_1 => q4_1::BLOCK_BYTES,
            Self::Q5_0 => q5::BLOCK_BYTES_Q5_0,
            Self::Q5_1 => q5::BLOCK_BYTES_Q5_1,
            Self::Q8_0 => q8_0::BLOCK_BYTES,
        }
    }
}
