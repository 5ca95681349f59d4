//! Q8_K activations (ggml `block_q8_K`): 256 values as i8 with one f32 scale, and the
//! integer sums of every 16 values, which the K-quant kernels need for the weights'
//! minimums (Q4_K) and offset (Q6_K). Quantized as ggml's `quantize_row_q8_K_ref` does:
//! the scale maps the value of largest magnitude to -127, rounding half to even.

/// Values per block (ggml's QK_K).
pub const QK_K: usize = 256;

/// One block of 256 quantized activations.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct BlockQ8K {
    pub qs: [i8; QK_K],
    /// Sums of qs over each run of 16 values.
    pub bsums: [i16; QK_K / 16],
    /// Sums of qs over each run of 32 values (pairs of `bsums`).
    pub bsums32: [i16; QK_K / 32],
    pub d: f32,
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Self {
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
            bsums32: [0; QK_K / 32],
            d: 0.0,
        }
    }
}

/// Rounds half to even for |x| <= 2^22, as ggml's `nearest_int` (see `q8_1.rs`).
#[inline(always)]
fn round_ties_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Quantizes `x` (a multiple of 256 long) into `out` (x.len() / 256 blocks).
pub fn quantize_row_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                (amax, max) = (v.abs(), v);
            }
        }
        let iscale = -127.0 / max;
        if xs.iter().any(|v| !v.is_finite()) {
            // NaN or infinity: a NaN scale makes every product NaN, so the fault shows.
            *block = BlockQ8K {
                d: f32::NAN,
                ..BlockQ8K::default()
            };
            continue;
        }
        if amax == 0.0 || !iscale.is_finite() {
            // Zero, or too small to scale: zeros (ggml's zero block).
            *block = BlockQ8K::default();
            continue;
        }
        for (q, &v) in block.qs.iter_mut().zip(xs) {
            *q = round_ties_even_small(iscale * v).min(127.0) as i8;
        }
        for (s, run) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
            *s = run.iter().map(|&q| i16::from(q)).sum();
        }
        for (s, pair) in block.bsums32.iter_mut().zip(block.bsums.chunks_exact(2)) {
            *s = pair[0] + pair[1];
        }
        block.d = 1.0 / iscale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_extreme_value_to_minus_127_and_sums_runs() {
        let mut x: Vec<f32> = (0..QK_K).map(|i| (i as f32 - 100.0) / 50.0).collect();
        x[7] = -4.0;
        let mut q = [BlockQ8K::default()];
        quantize_row_q8_k(&x, &mut q);
        // The scale is -max / 127: the extreme value (here -4) always becomes -127.
        assert_eq!(q[0].qs[7], -127);
        assert!((q[0].d - 4.0 / 127.0).abs() < 1e-7);
        for (i, &v) in x.iter().enumerate() {
            assert!((q[0].d * f32::from(q[0].qs[i]) - v).abs() <= q[0].d.abs() / 2.0 + 1e-6);
        }
        for j in 0..16 {
            let s: i32 = q[0].qs[16 * j..16 * j + 16]
                .iter()
                .map(|&v| i32::from(v))
                .sum();
            assert_eq!(i32::from(q[0].bsums[j]), s);
        }
        for j in 0..8 {
            assert_eq!(q[0].bsums32[j], q[0].bsums[2 * j] + q[0].bsums[2 * j + 1]);
        }
    }

    #[test]
    fn degenerate_blocks() {
        let mut q = [BlockQ8K::default(); 3];
        let mut x = vec![0f32; 3 * QK_K];
        x[QK_K + 3] = 1e-40;
        x[2 * QK_K + 9] = f32::NAN;
        quantize_row_q8_k(&x, &mut q);
        assert_eq!((q[0].d, q[0].qs), (0.0, [0; QK_K]));
        assert_eq!((q[1].d, q[1].qs), (0.0, [0; QK_K]));
        assert!(q[2].d.is_nan());
    }
}
