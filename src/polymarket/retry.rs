//! Retry decisions for upstream requests, as pure functions: what a response means
//! ([`Outcome`]), how long to wait ([`retry_delay`], on the crate's one [`Backoff`]), and
//! `Retry-After` parsing.

use std::time::Duration;

pub use crate::backoff::Backoff;

/// What one response or failure means for the request that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// 429. `retry_after` from the header, when given.
    RateLimited {
        retry_after: Option<Duration>,
    },
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

/// The delay before retry `attempt` after `outcome`, `unit` being the jitter draw in `[0, 1)`:
/// the backoff's full-jitter delay; HTML pages are a block and wait 4× longer (still capped);
/// a `Retry-After` is a minimum and is honoured even above the cap (it was clamped when
/// parsed, see [`parse_retry_after`]).
pub fn retry_delay(backoff: &Backoff, attempt: u32, outcome: Outcome, unit: f64) -> Duration {
    let jittered = match outcome {
        Outcome::HtmlPage => backoff.ceiling(attempt).saturating_mul(4).min(backoff.max).mul_f64(unit.clamp(0.0, 1.0)),
        _ => backoff.delay_at(attempt, unit),
    };
    match outcome {
        Outcome::RateLimited { retry_after: Some(ra) } => jittered.max(ra),
        _ => jittered,
    }
}

/// Parses a `Retry-After` header — delta seconds (`"3"`, `"1.5"`) or an HTTP date — clamped
/// to `max` (a server asking for `1e20` seconds gets `max`, never a panic or a hang).
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>, max: Duration) -> Option<Duration> {
    let v = value.trim();
    let wait = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs.min(max.as_secs().saturating_add(1)))
    } else if let Ok(secs) = v.parse::<f64>() {
        if !(secs.is_finite() && secs >= 0.0) {
            return None;
        }
        Duration::try_from_secs_f64(secs.min(max.as_secs_f64())).unwrap_or(max)
    } else {
        let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        (when.with_timezone(&chrono::Utc) - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(wait.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    const MAX: Duration = Duration::from_secs(600);

    #[test]
    fn jitter_stays_under_the_ceiling_and_retry_after_is_a_floor() {
        assert_eq!(retry_delay(&B, 2, Outcome::ServerError, 0.5), Duration::from_secs(1));
        assert_eq!(retry_delay(&B, 2, Outcome::HtmlPage, 0.5), Duration::from_secs(4));
        let ra = Outcome::RateLimited { retry_after: Some(Duration::from_secs(90)) };
        assert_eq!(retry_delay(&B, 0, ra, 0.1), Duration::from_secs(90));
        let ra = Outcome::RateLimited { retry_after: None };
        assert!(retry_delay(&B, 0, ra, 0.99) < Duration::from_millis(500));
    }

    #[test]
    fn retry_after_forms() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T04:00:00Z").unwrap().into();
        assert_eq!(parse_retry_after("3", now, MAX), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("1.5", now, MAX), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("Sat, 28 Nov 2026 04:00:07 GMT", now, MAX), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("soon", now, MAX), None);
    }

    #[test]
    fn absurd_retry_after_is_clamped_not_a_panic() {
        let now = chrono::Utc::now();
        assert_eq!(parse_retry_after("1e20", now, MAX), Some(MAX));
        assert_eq!(parse_retry_after("18446744073709551615", now, MAX), Some(MAX));
        assert_eq!(parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now, MAX), Some(MAX));
        assert_eq!(parse_retry_after("-3", now, MAX), None);
        assert_eq!(parse_retry_after("NaN", now, MAX), None);
    }

    #[test]
    fn only_final_outcomes_stop_retrying() {
        assert!(!Outcome::ClientError.is_retryable());
        assert!(!Outcome::Success.is_retryable());
        assert!(Outcome::Transport.is_retryable());
        assert!(Outcome::Malformed.is_retryable());
    }
}
