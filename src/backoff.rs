//! The one backoff: capped exponential growth with full jitter. Every place where a delay
//! grows after repeated failures (HTTP retries, stream reconnects, collector restarts,
//! database retries, gap recording, the stream writer) uses it; [`rest`] is the one pause that
//! a stop cuts short.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Waits `d`, or less if `cancel` fires first: `true` when the whole time passed, `false`
/// when cancelled (the caller stops). The one sleep-or-stop of every loop that pauses.
pub async fn rest(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Capped exponential backoff with full jitter: the delay before retry `attempt` (0-based) is
/// uniform in `[0, min(max, base · 2^attempt))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max }
    }

    /// Upper bound of the delay before retry `attempt`: `base · 2^attempt`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry `attempt` for a given `unit` in `[0, 1)` (the jitter draw).
    pub fn delay_at(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The delay before retry `attempt`, drawn at random (full jitter).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_at(attempt, fastrand::f64())
    }

    /// A fresh sequence of retries.
    pub fn start(self) -> Retries {
        Retries { backoff: self, attempt: 0 }
    }
}

/// A running sequence of retries: each [`Retries::next_delay`] is one attempt later.
#[derive(Debug, Clone)]
pub struct Retries {
    backoff: Backoff,
    attempt: u32,
}

impl Retries {
    /// The delay before the next retry (random, full jitter), counting the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Failures since the last [`Retries::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));

    #[test]
    fn ceiling_doubles_and_caps() {
        assert_eq!(B.ceiling(0), Duration::from_millis(500));
        assert_eq!(B.ceiling(3), Duration::from_secs(4));
        assert_eq!(B.ceiling(10), Duration::from_secs(60));
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        assert_eq!(B.delay_at(2, 0.0), Duration::ZERO);
        assert_eq!(B.delay_at(2, 0.5), Duration::from_secs(1));
        assert_eq!(B.delay_at(2, 7.0), Duration::from_secs(2));
        for _ in 0..100 {
            assert!(B.delay(3) < Duration::from_secs(4));
        }
    }

    #[test]
    fn retries_grow_and_reset() {
        let mut r = Backoff::new(Duration::from_millis(10), Duration::from_millis(40)).start();
        for _ in 0..5 {
            assert!(r.next_delay() <= Duration::from_millis(40));
        }
        assert_eq!(r.attempts(), 5);
        r.reset();
        assert_eq!(r.attempts(), 0);
        assert!(r.next_delay() < Duration::from_millis(10));
    }
}
