//! silu(g) * u = g / (1 + e^-g) * u for the inference paths (the candle path's fused op and
//! the decode path), one function so the two give the same bits. libm's scalar `expf` was
//! 4 % of a 512-token prompt; [`exp_in_place`]'s polynomial runs 8 lanes at a time.

use crate::ops::fused::exp_in_place;

/// Elements per pass: the exponentials of one block sit in a stack buffer.
const BLOCK: usize = 64;

/// `g_out[i] = g_out[i] / (1 + e^-g_out[i]) * up[i]` (`g_out` holds the gate on entry), with
/// e^x within 2 ulp of `f32::exp` for x in [-87.3, 88.3]. Past that range the exponential is
/// clamped (finite), so a gate below -88 gives about 0 where `expf` would give -0 (or NaN
/// for -inf); NaN stays NaN. Extra elements of the longer slice are left alone.
pub fn silu_gate_in_place(g_out: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            let n = g_out.len().min(up.len()) / 8 * 8;
            // SAFETY: the CPU has AVX2 (checked above); both slices hold n values.
            unsafe { avx2::silu_gate(&mut g_out[..n], &up[..n]) };
            silu_gate(&mut g_out[n..], &up[n..]);
            return;
        }
    }
    silu_gate(g_out, up);
}

fn silu_gate(g_out: &mut [f32], up: &[f32]) {
    let mut e = [0f32; BLOCK];
    for (g, u) in g_out.chunks_mut(BLOCK).zip(up.chunks(BLOCK)) {
        let n = g.len().min(u.len());
        let e = &mut e[..n];
        for (e, &g) in e.iter_mut().zip(g.iter()) {
            *e = -g;
        }
        exp_in_place(e);
        for ((g, &u), &e) in g.iter_mut().zip(u).zip(e.iter()) {
            *g = *g / (1.0 + e) * u;
        }
    }
}

/// [`silu_gate`] in 8 lanes, written out: the compiler's version of [`exp_in_place`] checked
/// each lane's float-to-int conversion one at a time (16 % of a prompt). The same operations
/// in the same order (no fused multiply-adds), so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2; `g_out` and `up` hold the same number of values, a multiple of 8.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn silu_gate(g_out: &mut [f32], up: &[f32]) {
        debug_assert!(g_out.len() == up.len() && g_out.len().is_multiple_of(8));
        let c = |x: f32| _mm256_set1_ps(x);
        for (g, u) in g_out.chunks_exact_mut(8).zip(up.chunks_exact(8)) {
            // SAFETY: each chunk holds 8 values.
            let (gv, uv) = unsafe { (_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())) };
            let x = _mm256_xor_ps(gv, c(-0.0));
            // f32::clamp: max and min return their second operand when one is NaN.
            let x = _mm256_min_ps(c(88.3), _mm256_max_ps(c(-87.3), x));
            let n = _mm256_sub_ps(
                _mm256_add_ps(
                    _mm256_mul_ps(x, c(std::f32::consts::LOG2_E)),
                    c(12_582_912.0),
                ),
                c(12_582_912.0),
            );
            let r = _mm256_sub_ps(
                _mm256_sub_ps(x, _mm256_mul_ps(n, c(0.693_359_4))),
                _mm256_mul_ps(n, c(-2.121_944_4e-4)),
            );
            let mut y = c(1.987_569_1e-4);
            for k in [
                1.398_2e-3,
                8.333_452e-3,
                4.166_579_6e-2,
                1.666_666_5e-1,
                0.5,
            ] {
                y = _mm256_add_ps(_mm256_mul_ps(y, r), c(k));
            }
            let y = _mm256_add_ps(
                _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(y, r), r), r),
                c(1.0),
            );
            let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
                23,
            ));
            let e = _mm256_mul_ps(y, pow2);
            let out = _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(c(1.0), e)), uv);
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(g.as_mut_ptr(), out) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libm(g: f32, u: f32) -> f32 {
        g / (1.0 + (-g).exp()) * u
    }

    #[test]
    fn matches_the_libm_formula_within_a_few_ulp() {
        let gs: Vec<f32> = (0..200_001)
            .map(|i| (i as f32 - 100_000.0) * 8.5e-4)
            .collect();
        let us: Vec<f32> = (0..gs.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut got = gs.clone();
        silu_gate_in_place(&mut got, &us);
        let mut portable = gs.clone();
        silu_gate(&mut portable, &us);
        // Dispatched (8 lanes) and portable agree bit for bit.
        for ((&g, &u), (&a, &p)) in gs.iter().zip(&us).zip(got.iter().zip(&portable)) {
            assert_eq!(a.to_bits(), p.to_bits(), "dispatched vs portable at {g}");
            let want = libm(g, u);
            let ulps = (a.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 4, "silu({g}) * {u} = {a}, want {want}");
        }
    }

    #[test]
    fn extremes_stay_finite_or_nan_as_the_input_says() {
        let mut g = [
            f32::NAN,
            1e30,
            -1e30,
            -100.0,
            100.0,
            0.0,
            -0.0,
            f32::INFINITY,
        ];
        silu_gate_in_place(&mut g, &[2.0; 8]);
        assert!(g[0].is_nan());
        assert_eq!(g[1], 2e30);
        assert!(g[2].abs() < 1e-6 && g[3].abs() < 1e-30, "{g:?}");
        assert_eq!(g[4], 200.0);
        assert_eq!(g[5], 0.0);
        assert_eq!(g[6], 0.0);
        assert_eq!(g[7], f32::INFINITY);
    }

    #[test]
    fn unequal_lengths_touch_only_the_common_part() {
        let mut g = vec![1.0f32; 70];
        silu_gate_in_place(&mut g, &[1.0; 65]);
        assert!((g[64] - libm(1.0, 1.0)).abs() < 1e-6);
        assert_eq!(g[65..], [1.0; 5]);
    }
}
