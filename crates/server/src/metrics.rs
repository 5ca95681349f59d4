//! Counters and latency histograms, exposed at `/metrics` in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (c, &b) in self.counts.iter_mut().zip(&BUCKETS) {
            if seconds <= b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(&BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// Everything `/metrics` reports.
#[derive(Default)]
pub struct Metrics {
    queue_depth: AtomicI64,
    active: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    cancelled: AtomicU64,
    /// (endpoint, status) -> count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<Histogram>,
    first_token: Mutex<Histogram>,
}

impl Metrics {
    pub fn queued(&self, delta: i64) {
        self.queue_depth.fetch_add(delta, Relaxed);
    }

    pub fn set_active(&self, n: usize) {
        self.active.store(n as u64, Relaxed);
    }

    /// A prompt admitted: `total` tokens of which `cached` were already in the cache.
    pub fn prompt_tokens(&self, total: usize, cached: usize) {
        self.prompt_tokens.fetch_add(total as u64, Relaxed);
        self.cached_tokens.fetch_add(cached as u64, Relaxed);
    }

    pub fn generated(&self, n: usize) {
        self.generated_tokens.fetch_add(n as u64, Relaxed);
    }

    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Relaxed);
    }

    /// Time from a request's admission to its first token.
    pub fn first_token(&self, d: Duration) {
        if let Ok(mut h) = self.first_token.lock() {
            h.observe(d.as_secs_f64());
        }
    }

    /// A finished HTTP request.
    pub fn request(&self, endpoint: &str, status: u16, d: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_string(), status)).or_default() += 1;
        }
        if let Ok(mut h) = self.latency.lock() {
            h.observe(d.as_secs_f64());
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "ferrollama_queue_depth",
            "Requests waiting for a slot.",
            self.queue_depth.load(Relaxed).max(0),
        );
        gauge(
            &mut out,
            "ferrollama_active_slots",
            "Sequences being generated.",
            self.active.load(Relaxed) as i64,
        );
        counter(
            &mut out,
            "ferrollama_prompt_tokens_total",
            "Prompt tokens received.",
            self.prompt_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "ferrollama_prompt_tokens_cached_total",
            "Prompt tokens reused from the prefix cache.",
            self.cached_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "ferrollama_generated_tokens_total",
            "Tokens generated.",
            self.generated_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "ferrollama_cancelled_total",
            "Generations abandoned by their client.",
            self.cancelled.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP ferrollama_requests_total HTTP requests by endpoint and status.\n# TYPE ferrollama_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for ((endpoint, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "ferrollama_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
                );
            }
        }
        if let Ok(h) = self.latency.lock() {
            h.render(
                &mut out,
                "ferrollama_request_duration_seconds",
                "HTTP request latency (until the last byte of a stream).",
            );
        }
        if let Ok(h) = self.first_token.lock() {
            h.render(
                &mut out,
                "ferrollama_time_to_first_token_seconds",
                "Time from admission to the first generated token.",
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request("/v1/completions", 200, Duration::from_millis(30));
        m.request("/v1/completions", 400, Duration::from_millis(3));
        m.generated(5);
        let text = m.render();
        assert!(text.contains("ferrollama_generated_tokens_total 5"));
        assert!(text
            .contains("ferrollama_requests_total{endpoint=\"/v1/completions\",status=\"400\"} 1"));
        assert!(text.contains("ferrollama_request_duration_seconds_bucket{le=\"0.01\"} 1"));
        assert!(text.contains("ferrollama_request_duration_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("ferrollama_request_duration_seconds_count 2"));
    }
}
