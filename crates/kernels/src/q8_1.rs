//! Q8_1 activations (ggml `block_q8_1`): 32 values as i8 with a scale `d` and
//! `s = d * sum(qs)`, both rounded to f16 as ggml stores them, so dot products against
//! Q4_1 weights see the numbers llama.cpp sees.

use half::f16;

/// Values per block.
pub const QK: usize = 32;

/// One block of 32 quantized activations.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(4))]
pub struct BlockQ8_1 {
    /// Scale, already rounded through f16.
    pub d: f32,
    /// d * sum(qs), rounded through f16.
    pub s: f32,
    /// sum(qs), exact: the packed Q4_0 kernel subtracts 8 * sum from unsigned nibble sums.
    pub sum: i32,
    pub qs: [i8; QK],
}

impl Default for BlockQ8_1 {
    fn default() -> Self {
        Self {
            d: 0.0,
            s: 0.0,
            sum: 0,
            qs: [0; QK],
        }
    }
}

/// Rounds half to even for |x| <= 2^22 (here |x| <= 127): adding 1.5 * 2^23 leaves no
/// fraction bits, so the FPU's default rounding (to nearest, ties to even) does the work.
/// `f32::round_ties_even` compiles to a call to `rintf` without SSE4.1, which cost 7 % of
/// a batched decode step.
#[inline(always)]
fn round_ties_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Quantizes `x` (a multiple of 32 long) into `out` (x.len() / 32 blocks). Rounds half to
/// even, as ggml's AVX path does.
pub fn quantize_row_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in block.qs.iter_mut().zip(xs) {
            let r = round_ties_even_small(v * id) as i32;
            *q = r as i8;
            sum += r;
        }
        block.d = f16::from_f32(d).to_f32();
        block.s = f16::from_f32(d * sum as f32).to_f32();
        block.sum = sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_rounding_equals_round_ties_even() {
        let mut xs: Vec<f32> = (-2540..=2540).map(|i| i as f32 / 20.0).collect();
        xs.extend([
            0.5, -0.5, 1.5, -1.5, 2.5, 126.5, -126.5, 127.0, 0.49999997, -0.0,
        ]);
        xs.extend((0..1000).map(|i| ((i * 7919) % 25400) as f32 / 99.7 - 127.0));
        for x in xs {
            assert_eq!(round_ties_even_small(x), x.round_ties_even(), "{x}");
        }
        assert!(round_ties_even_small(f32::NAN).is_nan());
    }

    #[test]
    fn quantizes_to_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 7919) % 200) as f32 / 10.0 - 10.0)
            .collect();
        let mut q = vec![BlockQ8_1::default(); 2];
        quantize_row_q8_1(&x, &mut q);
        for (b, xs) in q.iter().zip(x.chunks(32)) {
            for (&qi, &v) in b.qs.iter().zip(xs) {
                assert!((qi as f32 * b.d - v).abs() <= b.d * 0.5 + 1e-2, "{qi} {v}");
            }
            let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
            assert!((b.s - b.d * sum as f32).abs() <= b.s.abs() * 1e-3 + 1e-3);
            assert_eq!(b.sum, sum);
        }
    }

    #[test]
    fn zeros_give_zero_scale() {
        let mut q = vec![BlockQ8_1::default(); 1];
        quantize_row_q8_1(&[0.0; 32], &mut q);
        assert_eq!((q[0].d, q[0].s, q[0].qs), (0.0, 0.0, [0; 32]));
    }
}
