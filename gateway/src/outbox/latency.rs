//! How long the outbox's write transactions take (from the start of the transaction to
//! its commit on disk): a fixed-bucket histogram of atomics, recorded by the writer and
//! read on request (the status endpoint's `/metrics`), so reading it never waits for the
//! writer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bounds of the buckets, in seconds (an SD card commits in milliseconds to
/// about a second).
pub const BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The histogram.
#[derive(Debug, Default)]
pub struct CommitLatency {
    /// Transactions per bucket (not cumulative); the last one is past every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

/// A reading of the histogram.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencySnapshot {
    /// (upper bound in seconds, transactions at most that long), cumulative, ascending.
    pub buckets: Vec<(f64, u64)>,
    /// Transactions in all.
    pub count: u64,
    /// Their total duration in seconds.
    pub sum_seconds: f64,
}

impl CommitLatency {
    /// Records one transaction.
    pub fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The histogram now.
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BOUNDS.len());
        for (i, bound) in BOUNDS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.buckets[BOUNDS.len()].load(Ordering::Relaxed);
        LatencySnapshot {
            buckets,
            count,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_fall_into_cumulative_buckets() {
        let h = CommitLatency::default();
        h.record(Duration::from_micros(800));
        h.record(Duration::from_millis(30));
        h.record(Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.001, 1));
        assert_eq!(s.buckets[5], (0.05, 2));
        assert_eq!(s.buckets.last(), Some(&(10.0, 2)));
        assert!((s.sum_seconds - 20.0308).abs() < 1e-9);
    }
}
