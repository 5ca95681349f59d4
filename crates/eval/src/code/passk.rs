//! pass@k: the chance that at least one of k samples drawn from a problem's n passes,
//! estimated without bias from the c of n that passed (Chen et al. 2021, as HF `code_eval`
//! computes it: 1 - C(n-c, k) / C(n, k) as a product, which does not overflow).

/// pass@k of one problem with `c` of `n` samples passing; None when k > n.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> Option<f64> {
    if k == 0 || k > n || c > n {
        return None;
    }
    if n - c < k {
        return Some(1.0);
    }
    let miss: f64 = ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    Some(1.0 - miss)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The estimator against the binomial-coefficient definition.
    fn by_definition(n: u64, c: u64, k: u64) -> f64 {
        fn choose(n: u64, k: u64) -> f64 {
            if k > n {
                return 0.0;
            }
            (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
        }
        1.0 - choose(n - c, k) / choose(n, k)
    }

    #[test]
    fn agrees_with_the_definition() {
        for n in 1..=20u64 {
            for c in 0..=n {
                for k in 1..=n {
                    let got = pass_at_k(n as usize, c as usize, k as usize).unwrap();
                    assert!(
                        (got - by_definition(n, c, k)).abs() < 1e-12,
                        "n {n} c {c} k {k}"
                    );
                }
            }
        }
        assert_eq!(pass_at_k(1, 1, 1), Some(1.0));
        assert_eq!(pass_at_k(1, 0, 1), Some(0.0));
        assert!((pass_at_k(10, 3, 1).unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(pass_at_k(5, 1, 6), None);
    }
}
