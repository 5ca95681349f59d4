//! CPU kernels that must be faster than candle's: quantized matrix products on weights
//! repacked eight rows at a time with activations quantized to 8 bits (as ggml does), and
//! attention over the KV cache; chosen at run time by CPU features, each beside a plain
//! scalar reference that the tests compare it with.

pub mod attention;
pub mod error;
pub mod format;
pub mod packed;
pub mod packed_f16;
pub mod packed_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;
pub mod storage;

pub use error::KernelError;
pub use format::WeightFormat;
pub use packed::PackedMatrix;
pub use packed_f16::PackedF16;
pub use packed_k::{KFormat, PackedKMatrix};
pub use storage::{SharedBytes, Storage};

/// Whether the AVX2 + FMA + F16C kernels can run here (checked once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_available() -> bool {
    use std::sync::OnceLock;
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// For the tests of the vector kernels: whether this machine runs them. On an x86_64 CPU
/// without AVX2, FMA and F16C such a test would silently compare the portable path with
/// the reference and pass as if the vector path were checked; it fails instead, unless
/// `FERROLLAMA_SKIP_SIMD_TESTS` is set, in which case it says that it skipped. Elsewhere
/// there is no vector path to test, and the test says so.
#[cfg(test)]
pub(crate) fn simd_test_runs(test: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2_available() {
            return true;
        }
        assert!(
            std::env::var_os("FERROLLAMA_SKIP_SIMD_TESTS").is_some(),
            "{test}: this x86_64 CPU lacks AVX2, FMA or F16C, so the vector kernels it tests \
             cannot run; set FERROLLAMA_SKIP_SIMD_TESTS=1 to skip such tests knowingly"
        );
    }
    eprintln!("SKIPPED {test}: no AVX2 + FMA + F16C on this machine");
    false
}
