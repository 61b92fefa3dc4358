//! The wall clock as the daemon reads it: [`now`] (receive times, gaps, the day of a
//! partition) and [`today`] (the UTC day maintenance works from). In production both are the
//! system clock.
//!
//! Tests of what years of running do (days rolling over, retention, compaction, a lock held
//! over midnight) run the daemon on a moved or faster clock: `COLLECTOR_TEST_CLOCK` =
//! `<real ms>=<clock ms>*<speed>` makes the clock read `<clock ms>` at the real (Unix, ms)
//! instant `<real ms>` and advance `<speed>` times as fast as real time (a whole number ≥ 1).
//! A test's fake computes the same times from the same value ([`Accelerated::at`]). Only the
//! calendar moves: timeouts, pings and backoffs stay in real time, and cadences tied to the
//! calendar (hourly maintenance) wait [`real`] time. Unset in production; read once.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

/// The environment variable of a moved or faster clock (tests only).
pub const TEST_CLOCK_ENV: &str = "COLLECTOR_TEST_CLOCK";

/// A clock that read `clock_ms` at the real instant `real_ms` and runs `speed` times as fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accelerated {
    pub real_ms: i64,
    pub clock_ms: i64,
    pub speed: u32,
}

impl Accelerated {
    /// Parses `<real ms>=<clock ms>*<speed>`.
    pub fn parse(text: &str) -> Option<Accelerated> {
        let (real, rest) = text.trim().split_once('=')?;
        let (clock, speed) = rest.split_once('*')?;
        let speed: u32 = speed.parse().ok().filter(|s| *s >= 1)?;
        Some(Accelerated { real_ms: real.parse().ok()?, clock_ms: clock.parse().ok()?, speed })
    }

    /// The text [`Accelerated::parse`] reads.
    pub fn to_env(&self) -> String {
        format!("{}={}*{}", self.real_ms, self.clock_ms, self.speed)
    }

    /// What this clock reads at the real instant `real`.
    pub fn at(&self, real: DateTime<Utc>) -> DateTime<Utc> {
        let elapsed_us = real.timestamp_micros() - self.real_ms * 1000;
        DateTime::from_timestamp_micros(self.clock_ms * 1000 + elapsed_us * self.speed as i64).unwrap_or(real)
    }
}

fn accelerated() -> Option<Accelerated> {
    static CLOCK: OnceLock<Option<Accelerated>> = OnceLock::new();
    *CLOCK.get_or_init(|| {
        let text = std::env::var(TEST_CLOCK_ENV).ok().filter(|s| !s.is_empty())?;
        let parsed = Accelerated::parse(&text);
        if parsed.is_none() {
            eprintln!("{TEST_CLOCK_ENV}={text} is not <real ms>=<clock ms>*<speed>: the system clock is used");
        }
        parsed
    })
}

/// Now, UTC.
pub fn now() -> DateTime<Utc> {
    let real = Utc::now();
    match accelerated() {
        None => real,
        Some(a) => a.at(real),
    }
}

/// Today's UTC date.
pub fn today() -> NaiveDate {
    now().date_naive()
}

/// The real time that `calendar` of clock time takes (the same in production).
pub fn real(calendar: Duration) -> Duration {
    match accelerated() {
        None => calendar,
        Some(a) => calendar / a.speed,
    }
}

/// The real time until the clock reads `t` (zero if it is past).
pub fn real_until(t: DateTime<Utc>) -> Duration {
    real((t - now()).to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accelerated_clock_reads_from_its_anchor_at_its_speed() {
        let a = Accelerated::parse("1000000=5000000*60").unwrap();
        assert_eq!(a, Accelerated { real_ms: 1_000_000, clock_ms: 5_000_000, speed: 60 });
        assert_eq!(Accelerated::parse(&a.to_env()), Some(a));
        let real = DateTime::from_timestamp_millis(1_000_000 + 1_500).unwrap();
        assert_eq!(a.at(real).timestamp_millis(), 5_000_000 + 90_000, "1.5 s real is 90 s at 60×");
        for bad in ["", "1=2", "1=2*0", "x=2*3", "1=2*-1"] {
            assert_eq!(Accelerated::parse(bad), None, "{bad}");
        }
    }
}
