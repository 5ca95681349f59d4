//! The learning-rate schedule of Llama 2: linear warm-up, then cosine decay to a fraction
//! of the peak (Touvron et al. 2023, 2.2: 2000 warm-up steps, decay to 10 %).

/// Linear warm-up over `warmup` steps, cosine decay to `peak * min_ratio` at `total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
    pub min_ratio: f64,
}

impl CosineSchedule {
    /// The rate for optimizer step `step` (0-based): (step + 1) / warmup of the peak while
    /// warming up, so the first step already moves; after `total` it stays at the floor.
    pub fn lr(&self, step: u64) -> f64 {
        let floor = self.peak * self.min_ratio;
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        if step >= self.total || self.total <= self.warmup {
            return floor;
        }
        let progress = (step - self.warmup) as f64 / (self.total - self.warmup) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        floor + cosine * (self.peak - floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_ten_percent() {
        let s = CosineSchedule {
            peak: 3e-4,
            warmup: 2000,
            total: 10000,
            min_ratio: 0.1,
        };
        assert!((s.lr(0) - 3e-4 / 2000.0).abs() < 1e-15);
        assert!((s.lr(999) - 1.5e-4).abs() < 1e-15);
        assert!((s.lr(2000) - 3e-4).abs() < 1e-15);
        // Half way through the decay: half way between the peak and the floor.
        assert!((s.lr(6000) - 1.65e-4).abs() < 1e-12);
        assert!((s.lr(10000) - 3e-5).abs() < 1e-15);
        assert!((s.lr(50000) - 3e-5).abs() < 1e-15);
        let mut prev = f64::INFINITY;
        for step in 2000..10000 {
            assert!(s.lr(step) <= prev);
            prev = s.lr(step);
        }
    }
}
