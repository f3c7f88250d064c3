//! A pacing rate limiter: how many sends are due by a given instant.
//!
//! The schedule is absolute (message `k` is due at `k / rate` after the start), so a
//! long run keeps its rate exactly however the timer wakes up. A sender that falls
//! behind may catch up by at most `burst` messages; past that, the backlog is dropped
//! rather than sent in one flood. Time is passed in, so the limiter is tested without
//! sleeping.

use std::time::Duration;

/// Rates are kept in thousandths per second so that a total rate split over several
/// senders (1000/s over 3) stays exact enough without floats.
const MILLI: u128 = 1_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;

#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// Messages per 1000 seconds; 0 means no limit.
    milli_rate: u128,
    /// Sends granted so far, including the backlog dropped by the burst cap.
    taken: u64,
    burst: u64,
}

impl RateLimiter {
    /// `per_sec` messages a second (0: unlimited), counted from time zero.
    pub fn new(per_sec: f64, burst: u64) -> RateLimiter {
        let milli_rate = if per_sec > 0.0 {
            ((per_sec * 1000.0).round() as u128).max(1)
        } else {
            0
        };
        RateLimiter {
            milli_rate,
            taken: 0,
            burst: burst.max(1),
        }
    }

    pub fn unlimited(&self) -> bool {
        self.milli_rate == 0
    }

    /// Sends due by `now` (time since the schedule started), in total: the first one
    /// at time zero.
    fn due(&self, now: Duration) -> u64 {
        let due = now.as_nanos() * self.milli_rate / (NANOS_PER_SEC * MILLI) + 1;
        u64::try_from(due).unwrap_or(u64::MAX)
    }

    /// Grants up to `want` sends at `now`.
    pub fn take(&mut self, now: Duration, want: u64) -> u64 {
        if self.unlimited() {
            return want;
        }
        let due = self.due(now);
        if due > self.taken + self.burst {
            self.taken = due - self.burst;
        }
        let granted = want.min(due - self.taken.min(due));
        self.taken += granted;
        granted
    }

    /// When the next send becomes due (time since the start); `None` when unlimited.
    pub fn next_due(&self) -> Option<Duration> {
        if self.unlimited() {
            return None;
        }
        // Send number `taken` (0-based) is due once now * rate >= taken.
        let nanos = (u128::from(self.taken) * NANOS_PER_SEC * MILLI).div_ceil(self.milli_rate);
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unlimited_grants_everything_and_never_waits() {
        let mut r = RateLimiter::new(0.0, 1);
        assert_eq!(r.take(ms(0), 1_000_000), 1_000_000);
        assert_eq!(r.next_due(), None);
    }

    #[test]
    fn paces_to_the_rate() {
        let mut r = RateLimiter::new(100.0, 1_000);
        assert_eq!(r.take(ms(0), 10), 1, "first send is due at once");
        assert_eq!(r.take(ms(5), 10), 0);
        assert_eq!(r.next_due(), Some(ms(10)));
        assert_eq!(r.take(ms(10), 10), 1);
        assert_eq!(r.take(ms(1_000), 1_000), 99, "a second holds 100 sends");
    }

    #[test]
    fn long_run_keeps_the_exact_rate_whatever_the_wakeups() {
        let mut r = RateLimiter::new(1_000.0, 1_000);
        let mut sent = 0;
        let mut now = ms(0);
        while now < Duration::from_secs(10) {
            sent += r.take(now, u64::MAX);
            // Irregular wake-ups, as a busy timer gives them.
            now += Duration::from_micros(700 + (sent % 7) * 300);
        }
        assert!((9_990..=10_001).contains(&sent), "sent {sent}");
    }

    #[test]
    fn backlog_beyond_burst_is_dropped() {
        let mut r = RateLimiter::new(1_000.0, 5);
        assert_eq!(r.take(ms(0), 1), 1);
        // A sender stalled for a second may only catch up by the burst.
        assert_eq!(r.take(ms(1_000), u64::MAX), 5);
        assert_eq!(r.take(ms(1_000), u64::MAX), 0);
        assert_eq!(r.take(ms(1_001), u64::MAX), 1);
    }

    #[test]
    fn fractional_rates_hold() {
        let mut r = RateLimiter::new(1000.0 / 3.0, 1_000);
        // 1000/3 a second for 3 s, plus the one due at time zero; rounding the rate to
        // thousandths may cost the last one.
        let granted = r.take(Duration::from_secs(3), u64::MAX);
        assert!((1_000..=1_001).contains(&granted), "granted {granted}");
    }
}
