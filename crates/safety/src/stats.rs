//! Rates and means with 95 % intervals: Wilson's score interval for a share (sound at 0
//! and 1 and for small counts), the normal interval for a mean.

use serde::Serialize;

const Z95: f64 = 1.959963984540054;

/// `k` of `n`, with its Wilson 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    pub k: usize,
    pub n: usize,
    pub rate: f64,
    pub ci95: [f64; 2],
}

impl Rate {
    pub fn new(k: usize, n: usize) -> Self {
        if n == 0 {
            return Self {
                k,
                n,
                rate: f64::NAN,
                ci95: [f64::NAN; 2],
            };
        }
        let (kf, nf) = (k as f64, n as f64);
        let p = kf / nf;
        let z2 = Z95 * Z95;
        let centre = (p + z2 / (2.0 * nf)) / (1.0 + z2 / nf);
        let half = Z95 / (1.0 + z2 / nf) * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
        Self {
            k,
            n,
            rate: p,
            ci95: [(centre - half).max(0.0), (centre + half).min(1.0)],
        }
    }

    /// Counts the `true`s.
    pub fn of(flags: impl IntoIterator<Item = bool>) -> Self {
        let (mut k, mut n) = (0, 0);
        for f in flags {
            k += f as usize;
            n += 1;
        }
        Self::new(k, n)
    }

    /// "0.123 [0.101, 0.147] (n=700)".
    pub fn show(&self) -> String {
        format!(
            "{:.3} [{:.3}, {:.3}] (n={})",
            self.rate, self.ci95[0], self.ci95[1], self.n
        )
    }
}

/// Student's t quantile at 0.975 for `df` degrees of freedom: a table to 30, then the
/// Cornish-Fisher expansion around the normal quantile (error below 1e-4 there).
pub fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => {
            let (z, n) = (Z95, df as f64);
            z + (z.powi(3) + z) / (4.0 * n)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
        }
    }
}

/// A sample mean with its standard deviation and Student-t 95 % interval (undefined
/// below two values).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Mean {
    pub mean: f64,
    pub sd: f64,
    pub n: usize,
    pub ci95: [f64; 2],
}

impl Mean {
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len();
        if n == 0 {
            return Self {
                mean: f64::NAN,
                sd: f64::NAN,
                n,
                ci95: [f64::NAN; 2],
            };
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64
        } else {
            f64::NAN
        };
        let sd = var.sqrt();
        let half = t975(n - 1) * sd / (n as f64).sqrt();
        Self {
            mean,
            sd,
            n,
            ci95: [mean - half, mean + half],
        }
    }

    pub fn show(&self) -> String {
        format!(
            "{:+.3} ± {:.3} (sd {:.3}, n={})",
            self.mean,
            self.ci95[1] - self.mean,
            self.sd,
            self.n
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_and_mean() {
        let r = Rate::new(0, 10);
        assert_eq!(r.rate, 0.0);
        assert!(r.ci95[0] == 0.0 && (r.ci95[1] - 0.2775).abs() < 1e-3);
        let r = Rate::new(50, 100);
        assert!((r.ci95[0] - 0.4038).abs() < 1e-3 && (r.ci95[1] - 0.5962).abs() < 1e-3);
        assert!(Rate::new(0, 0).rate.is_nan());
        let m = Mean::of(&[1.0, 2.0, 3.0]);
        assert_eq!((m.mean, m.sd, m.n), (2.0, 1.0, 3));
        assert!((m.ci95[1] - (2.0 + 4.303 / 3f64.sqrt())).abs() < 1e-9);
        assert!(Mean::of(&[1.0]).ci95[0].is_nan());
        // The expansion joins the table smoothly and tends to the normal quantile.
        assert!((t975(31) - 2.0395).abs() < 2e-4 && (t975(120) - 1.9799).abs() < 2e-4);
    }
}
