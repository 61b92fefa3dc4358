//! Frame received → row committed: a fixed histogram of latencies in milliseconds.

use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed histogram of latencies in milliseconds, lock-free.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: (0..=10_000).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl LatencyHistogram {
    pub fn record(&self, ms: u64, count: u64) {
        let i = (ms as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(count, Ordering::Relaxed);
    }

    /// The latency (ms) under which `q` (0..=1) of the recorded rows fall; `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(ms as u64);
            }
        }
        Some(counts.len() as u64 - 1)
    }

    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.99), None);
        h.record(5, 98);
        h.record(40, 1);
        h.record(20_000, 1);
        assert_eq!(h.quantile(0.5), Some(5));
        assert_eq!(h.quantile(0.99), Some(40));
        assert_eq!(h.quantile(1.0), Some(10_000));
    }
}
