//! Per-endpoint request budgets: at most `limit` requests per window, spread evenly (GCRA),
//! with a burst of a tenth of the window. Waiting happens before the request is sent, so
//! upstream never sees more than the budget from this process. A reload may change the limit
//! while requests are waiting ([`Budget::set_limit`]): requests reserved after it are spaced
//! by the new rate.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Budget {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Time one request "costs".
    interval: Duration,
    /// How far ahead of now the schedule may run (burst tolerance).
    burst: Duration,
    /// Theoretical arrival time of the next request.
    tat: Option<Instant>,
}

impl Budget {
    /// `limit` requests per `window`.
    pub fn new(limit: u32, window: Duration) -> Budget {
        let budget = Budget { state: Mutex::new(State { interval: Duration::ZERO, burst: Duration::ZERO, tat: None }) };
        budget.set_limit(limit, window);
        budget
    }

    /// From now on, `limit` requests per `window`.
    pub fn set_limit(&self, limit: u32, window: Duration) {
        let mut s = self.state.lock().expect("budget lock");
        s.interval = window / limit.max(1);
        s.burst = window / 10;
    }

    /// How long a request arriving at `now` must wait, reserving its slot. Pure apart from the
    /// reservation, so tests can drive it with any clock.
    pub fn reserve(&self, now: Instant) -> Duration {
        let mut s = self.state.lock().expect("budget lock");
        let current = s.tat.map_or(now, |t| t.max(now));
        s.tat = Some(current + s.interval);
        // The request may go once `current - burst <= now`.
        current.saturating_duration_since(now + s.burst)
    }

    /// Waits for this request's slot.
    pub async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_spaces_requests() {
        let b = Budget::new(100, Duration::from_secs(10)); // 100 ms each, 1 s burst
        let now = Instant::now();
        let waits: Vec<_> = (0..12).map(|_| b.reserve(now)).collect();
        assert!(waits[..11].iter().all(|w| w.is_zero()), "{waits:?}");
        assert_eq!(waits[11], Duration::from_millis(100));
        // After a quiet second the burst is available again.
        let later = now + Duration::from_secs(3);
        assert!(b.reserve(later).is_zero());
    }

    #[test]
    fn sustained_rate_is_the_limit() {
        let b = Budget::new(200, Duration::from_secs(10)); // 50 ms each
        let now = Instant::now();
        let last = (0..1000).map(|_| b.reserve(now)).last().unwrap();
        // 1000 requests at 50 ms each, less the 1 s burst: the last waits 49 s.
        assert_eq!(last, Duration::from_millis(49_950) - Duration::from_secs(1));
    }

    #[test]
    fn a_new_limit_spaces_the_requests_reserved_after_it() {
        let b = Budget::new(100, Duration::from_secs(10)); // 100 ms each, 1 s burst
        let now = Instant::now();
        for _ in 0..11 {
            b.reserve(now); // the burst spent: the schedule is 1.1 s ahead
        }
        b.set_limit(10, Duration::from_secs(10)); // 1 s each
        let waits: Vec<_> = (0..3).map(|_| b.reserve(now)).collect();
        assert_eq!(waits, [Duration::from_millis(100), Duration::from_millis(1100), Duration::from_millis(2100)]);
    }
}
