//! Retry decisions and backoff, as pure functions.

use std::time::Duration;

/// What one response or failure means for the request that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// 429. `retry_after` from the header, when given.
    RateLimited { retry_after: Option<Duration> },
    /// 500–599.
    ServerError,
    /// A Cloudflare (or other) HTML page instead of JSON, e.g. `403 Attention Required`.
    HtmlPage,
    /// Connection refused or reset, TLS failure, timeout.
    Transport,
    /// A 2xx whose body is not the JSON expected (truncated, garbled).
    Malformed,
    /// Any other 4xx: retrying will not help.
    ClientError,
}

impl Outcome {
    pub fn is_retryable(self) -> bool {
        !matches!(self, Outcome::Success | Outcome::ClientError)
    }
}

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Upper bound of the delay before retry number `attempt` (0-based): `base * 2^attempt`,
    /// capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry `attempt` given `outcome`: a uniformly random fraction of the
    /// ceiling (full jitter; `unit` is in `[0, 1)`). HTML pages are a block and wait 4× longer.
    /// A `Retry-After` is a minimum and is honoured even above `max`.
    pub fn delay(&self, attempt: u32, outcome: Outcome, unit: f64) -> Duration {
        let ceiling = match outcome {
            Outcome::HtmlPage => self.ceiling(attempt).saturating_mul(4).min(self.max),
            _ => self.ceiling(attempt),
        };
        let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        match outcome {
            Outcome::RateLimited { retry_after: Some(ra) } => jittered.max(ra),
            _ => jittered,
        }
    }
}

/// Parses a `Retry-After` header: delta seconds (`"3"`) or an HTTP date.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some((when.with_timezone(&chrono::Utc) - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff { base: Duration::from_millis(500), max: Duration::from_secs(60) };

    #[test]
    fn ceiling_doubles_and_caps() {
        assert_eq!(B.ceiling(0), Duration::from_millis(500));
        assert_eq!(B.ceiling(3), Duration::from_secs(4));
        assert_eq!(B.ceiling(10), Duration::from_secs(60));
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_under_the_ceiling_and_retry_after_is_a_floor() {
        assert_eq!(B.delay(2, Outcome::ServerError, 0.5), Duration::from_secs(1));
        assert_eq!(B.delay(2, Outcome::HtmlPage, 0.5), Duration::from_secs(4));
        let ra = Outcome::RateLimited { retry_after: Some(Duration::from_secs(90)) };
        assert_eq!(B.delay(0, ra, 0.1), Duration::from_secs(90));
        let ra = Outcome::RateLimited { retry_after: None };
        assert!(B.delay(0, ra, 0.99) < Duration::from_millis(500));
    }

    #[test]
    fn retry_after_forms() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T04:00:00Z").unwrap().into();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("1.5", now), Some(Duration::from_millis(1500)));
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 04:00:07 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn only_final_outcomes_stop_retrying() {
        assert!(!Outcome::ClientError.is_retryable());
        assert!(!Outcome::Success.is_retryable());
        assert!(Outcome::Transport.is_retryable());
        assert!(Outcome::Malformed.is_retryable());
    }
}
