//! CPU kernels that must be faster than candle's: quantized matrix products on weights
//! repacked eight rows at a time with activations quantized to 8 bits (as ggml does), and
//! attention over the KV cache; chosen at run time by CPU features, each beside a plain
//! scalar reference that the tests compare it with.

pub mod attention;
pub mod error;
pub mod format;
pub mod packed;
pub mod packed_bf16;
pub mod packed_f16;
pub mod packed_k;
#[cfg(target_arch = "x86_64")]
mod packed_k_vnni;
#[cfg(target_arch = "x86_64")]
mod packed_vnni;
pub mod partial;
pub mod pool;
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
pub use packed_bf16::PackedBf16;
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

/// Whether the AVX-512 VNNI tiles can run here (checked once): the CPU has AVX-512 F, BW,
/// VL and VNNI besides AVX2, FMA and F16C, and `FERROLLAMA_NO_AVX512` is not set (it forces
/// the AVX2 tiles, to compare the two on one machine; both give the same bits).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_vnni_available() -> bool {
    use std::sync::OnceLock;
    static YES: OnceLock<bool> = OnceLock::new();
    let yes = *YES.get_or_init(|| {
        avx512_vnni_detected() && std::env::var_os("FERROLLAMA_NO_AVX512").is_none()
    });
    yes && !AVX2_TILES_ONLY.load(std::sync::atomic::Ordering::Relaxed)
}

static AVX2_TILES_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the quantized products use the AVX2 tiles even where AVX-512 VNNI ones would run
/// (or, with `false`, lets them run again): for benchmarks that compare both in one process.
pub fn use_avx2_tiles_only(yes: bool) {
    AVX2_TILES_ONLY.store(yes, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(target_arch = "x86_64")]
fn avx512_vnni_detected() -> bool {
    avx2_available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// Whether the 512-bit f16 tiles can run here: AVX-512 F (its 16-lane f16 conversion and
/// 32 vector registers) beside AVX2, FMA and F16C; off, as the VNNI tiles, under
/// `FERROLLAMA_NO_AVX512` or [`use_avx2_tiles_only`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512f_available() -> bool {
    use std::sync::OnceLock;
    static YES: OnceLock<bool> = OnceLock::new();
    let yes = *YES
        .get_or_init(|| avx512f_detected() && std::env::var_os("FERROLLAMA_NO_AVX512").is_none());
    yes && !AVX2_TILES_ONLY.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(target_arch = "x86_64")]
fn avx512f_detected() -> bool {
    avx2_available() && is_x86_feature_detected!("avx512f")
}

/// For the tests of the 512-bit f16 tiles: whether this machine has AVX-512 F (saying
/// SKIPPED when it does not).
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn avx512f_test_runs(test: &str) -> bool {
    if avx512f_detected() {
        return true;
    }
    eprintln!("SKIPPED {test}: no AVX-512 F on this machine");
    false
}

/// Whether the bf16 tiles can use `vdpbf16ps` here (AVX-512 F and BF16); off under
/// `FERROLLAMA_NO_AVX512` or [`use_avx2_tiles_only`], as the other 512-bit tiles.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_bf16_available() -> bool {
    use std::sync::OnceLock;
    static YES: OnceLock<bool> = OnceLock::new();
    let yes = *YES.get_or_init(|| {
        avx512_bf16_detected() && std::env::var_os("FERROLLAMA_NO_AVX512").is_none()
    });
    yes && !AVX2_TILES_ONLY.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(target_arch = "x86_64")]
fn avx512_bf16_detected() -> bool {
    avx512f_detected() && is_x86_feature_detected!("avx512bf16")
}

/// For the tests of the bf16 tiles: whether this machine has AVX-512 BF16 (saying SKIPPED
/// when it does not).
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn avx512_bf16_test_runs(test: &str) -> bool {
    if avx512_bf16_detected() {
        return true;
    }
    eprintln!("SKIPPED {test}: no AVX-512 BF16 on this machine");
    false
}

/// Which tiles the quantized products use on this machine, for benchmark reports.
pub fn kernel_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512_vnni_available() {
            if avx512_bf16_available() {
                return "avx512-vnni (4-, 5- and 8-bit and K-quant tiles), avx512-bf16 (bf16 \
                        tiles), avx512f (f16 tiles), avx2 (attention)";
            }
            return "avx512-vnni (4-, 5- and 8-bit and K-quant tiles), avx512f (f16 tiles), \
                    avx2 (bf16, attention)";
        }
        if avx512f_available() {
            return "avx512f (f16 tiles), avx2";
        }
        if avx2_available() {
            return "avx2";
        }
    }
    "portable"
}

/// For the tests of the AVX-512 VNNI kernels: whether this CPU has the features. Unlike
/// AVX2 many x86_64 CPUs lack them, so a test without them says that it skipped.
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn avx512_vnni_test_runs(test: &str) -> bool {
    if avx512_vnni_detected() {
        return true;
    }
    eprintln!("SKIPPED {test}: no AVX-512 F/BW/VL/VNNI on this machine");
    false
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
