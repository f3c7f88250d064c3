//! How long fsyncs take: a fixed-bucket histogram kept in atomics, so that
//! the flusher records a duration without a lock and a metrics scrape reads
//! it without stopping anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: 100 µs to 1 s, as disks go.
pub const BOUNDS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Durations of one kind of operation.
#[derive(Debug, Default)]
pub struct Timings {
    /// One more than `BOUNDS`: the last counts what is above them all.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// What [`Timings`] held at one moment: counts per bucket (not cumulative),
/// their total and the sum of the durations.
#[derive(Debug, Clone, PartialEq)]
pub struct TimingsSnapshot {
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Timings {
    pub fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> TimingsSnapshot {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        TimingsSnapshot {
            count: buckets.iter().sum(),
            buckets,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_buckets() {
        let t = Timings::default();
        t.record(Duration::from_micros(50));
        t.record(Duration::from_micros(100));
        t.record(Duration::from_millis(3));
        t.record(Duration::from_secs(2));
        let s = t.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], 2, "up to 100 µs, bound included");
        assert_eq!(s.buckets[5], 1, "3 ms in (2.5 ms, 5 ms]");
        assert_eq!(s.buckets[BOUNDS.len()], 1, "above 1 s");
        assert!((s.sum_seconds - 2.00315).abs() < 1e-9);
    }
}
