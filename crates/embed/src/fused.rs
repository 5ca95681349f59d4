//! The encoder's element-wise steps as single passes over plain slices, where candle would
//! run one operation (and allocate one tensor) per step: bias + residual + LayerNorm, and
//! bias + GELU with an erf that the compiler can vectorise. Each has a plain f64 reference
//! in the tests.

use rayon::prelude::*;

/// Rows at or above which the passes split rows over threads.
const PARALLEL_ROWS: usize = 64;

/// `x[r] = LayerNorm(x[r] + bias + residual[r]) * w + b` for each row of `w.len()` values:
/// the sublayer's output bias, the residual and the norm after it in one pass. The
/// variance about the mean (two passes), biased as `torch.layer_norm`'s; sums in eight f32
/// lanes (vectorised; a row of 384 adds 48 terms per lane).
pub fn bias_residual_layer_norm(
    x: &mut [f32],
    bias: &[f32],
    residual: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f64,
) {
    let dim = w.len();
    let row = |(xr, rr): (&mut [f32], &[f32])| {
        for ((v, &bi), &r) in xr.iter_mut().zip(bias).zip(rr) {
            *v = *v + bi + r;
        }
        let mean = lane_sum(xr, |v| v) / dim as f32;
        let var = lane_sum(xr, |v| (v - mean) * (v - mean)) / dim as f32;
        let inv = (1.0 / (var as f64 + eps).sqrt()) as f32;
        for ((v, &wi), &bi) in xr.iter_mut().zip(w).zip(b) {
            *v = (*v - mean) * inv * wi + bi;
        }
    };
    if x.len() / dim.max(1) >= PARALLEL_ROWS {
        x.par_chunks_mut(dim)
            .zip(residual.par_chunks(dim))
            .for_each(row);
    } else {
        x.chunks_mut(dim).zip(residual.chunks(dim)).for_each(row);
    }
}

/// The sum of `f` over `xs` in eight lanes, added pairwise at the end.
#[inline]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *l += f(v);
    }
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
}

/// `x[r] = gelu(x[r] + bias)` with GELU's exact (erf) form, rows of `bias.len()`.
pub fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    let dim = bias.len();
    let row = |xr: &mut [f32]| gelu_row(xr, bias);
    if x.len() / dim.max(1) >= PARALLEL_ROWS {
        x.par_chunks_mut(dim).for_each(row);
    } else {
        x.chunks_mut(dim).for_each(row);
    }
}

/// One row of [`bias_gelu`], 8 lanes wide where the CPU has AVX2 (the same IEEE
/// operations in the same order as the baseline's 4 lanes, so the same bits).
fn gelu_row(xr: &mut [f32], bias: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        return unsafe { gelu_row_avx2(xr, bias) };
    }
    gelu_row_plain(xr, bias)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gelu_row_avx2(xr: &mut [f32], bias: &[f32]) {
    gelu_row_plain(xr, bias)
}

#[inline(always)]
fn gelu_row_plain(xr: &mut [f32], bias: &[f32]) {
    for (v, &bi) in xr.iter_mut().zip(bias) {
        let y = *v + bi;
        *v = 0.5 * y * (1.0 + erf(y * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf in f32 by Abramowitz and Stegun's 7.1.26 (absolute error at most 1.5e-7 in exact
/// arithmetic, 5e-7 measured in f32): `1 - poly(t) exp(-x^2)`, `t = 1 / (1 + p|x|)`,
/// the sign restored; its Taylor series below 0.1.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_72,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp_neg(ax * ax);
    // Near 0 the formula's 1.2e-7 would be all of erf: its series there (error < 1e-12).
    let x2 = x * x;
    let series = std::f32::consts::FRAC_2_SQRT_PI * x * (1.0 - x2 / 3.0 + x2 * x2 / 10.0);
    if ax < 0.1 {
        series
    } else {
        y.copysign(x)
    }
}

/// `exp(-x)` for `x >= 0` in f32 without a library call (so loops of it vectorise):
/// `2^-n exp(-r)` with `x = n ln 2 + r`, `|r| <= ln 2 / 2`, `exp(-r)` by its Taylor series
/// to the 7th power (relative error below 2e-7); 0 past 87 (below f32's normal range,
/// where erf's product is 0 anyway).
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let x = x.min(87.0);
    // Rounded by truncation of a non-negative value (`round` would be a libm call on the
    // baseline x86-64 target, which stops the loop from vectorising).
    let n = (x * std::f32::consts::LOG2_E + 0.5) as i32 as f32;
    // ln 2 in two parts, so n ln 2 is exact enough for large n.
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let r = -r;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    // 2^-n through the exponent bits (n <= 126 here).
    p * f32::from_bits(((127 - n as i32) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series in f64 (exact to rounding for |x| <= 3) and 1 beyond 6.
    fn erf_reference(x: f64) -> f64 {
        if x.abs() > 6.0 {
            return x.signum();
        }
        if x.abs() > 3.0 {
            // The continued fraction of erfc, converged well past 3.
            let ax = x.abs();
            let mut f = 0.0;
            for n in (1..=60).rev() {
                f = (n as f64 / 2.0) / (ax + f);
            }
            let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / (ax + f);
            return x.signum() * (1.0 - erfc);
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn gelu_rows_are_the_same_bits_with_and_without_avx2() {
        let bias: Vec<f32> = (0..37).map(|i| (i as f32 * 0.3).sin()).collect();
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.71).cos() * 4.0).collect();
        let mut plain = x.clone();
        gelu_row_plain(&mut plain, &bias);
        let mut chosen = x.clone();
        gelu_row(&mut chosen, &bias);
        assert_eq!(
            plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            chosen.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        #[cfg(target_arch = "x86_64")]
        if !is_x86_feature_detected!("avx2") {
            eprintln!("AVX2 absent: the 8-lane GELU was not compared");
        }
    }

    #[test]
    fn exp_neg_within_2e_7_relative() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let x = i as f64 / 10_000.0;
            let want = (-x).exp();
            let got = exp_neg(x as f32) as f64;
            // Relative to the f32 input's own exp (the input was rounded to f32).
            let want_f32_input = (-(x as f32 as f64)).exp();
            if want > 1e-37 {
                worst = worst.max(((got - want_f32_input) / want_f32_input).abs());
            }
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(1000.0), exp_neg(87.0));
    }

    #[test]
    fn erf_within_its_bound_everywhere() {
        let mut worst = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f64 / 10_000.0;
            let e = (erf(x as f32) as f64 - erf_reference(x)).abs();
            worst = worst.max(e);
        }
        // 1.5e-7 of the formula, plus f32 rounding of its steps (measured: 5.0e-7).
        assert!(worst < 6e-7, "worst {worst}");
        assert_eq!(erf(0.0), 0.0);
        assert!((erf(1e-3) as f64 / erf_reference(1e-3) - 1.0).abs() < 1e-6);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
    }

    #[test]
    fn passes_equal_their_f64_references() {
        let dim = 24;
        let rows = 70; // above PARALLEL_ROWS: the threaded path
        let v = |i: usize, s: f64| ((i as f64 * 0.37 + s).sin() * 3.0) as f32;
        let x0: Vec<f32> = (0..rows * dim).map(|i| v(i, 0.1)).collect();
        let res: Vec<f32> = (0..rows * dim).map(|i| v(i, 1.3)).collect();
        let bias: Vec<f32> = (0..dim).map(|i| v(i, 2.0) * 0.1).collect();
        let w: Vec<f32> = (0..dim).map(|i| 1.0 + v(i, 3.0) * 0.1).collect();
        let b: Vec<f32> = (0..dim).map(|i| v(i, 4.0) * 0.1).collect();
        for rows in [rows, 3] {
            let n = rows * dim;
            let mut x = x0[..n].to_vec();
            bias_residual_layer_norm(&mut x, &bias, &res[..n], &w, &b, 1e-12);
            for r in 0..rows {
                let y: Vec<f64> = (0..dim)
                    .map(|j| x0[r * dim + j] as f64 + bias[j] as f64 + res[r * dim + j] as f64)
                    .collect();
                let mean = y.iter().sum::<f64>() / dim as f64;
                let var = y.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / dim as f64;
                for j in 0..dim {
                    let want = (y[j] - mean) / (var + 1e-12).sqrt() * w[j] as f64 + b[j] as f64;
                    assert!((x[r * dim + j] as f64 - want).abs() < 2e-6, "{r} {j}");
                }
            }
            let mut g = x0[..n].to_vec();
            bias_gelu(&mut g, &bias);
            for i in 0..n {
                let y = x0[i] as f64 + bias[i % dim] as f64;
                let want = 0.5 * y * (1.0 + erf_reference(y / 2f64.sqrt()));
                assert!((g[i] as f64 - want).abs() < 2e-6, "{i}: {} {want}", g[i]);
            }
        }
    }
}
