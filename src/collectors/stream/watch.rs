//! The stall decisions of one connection, as pure state machines over `tokio::time::Instant`
//! (so tests drive them with tokio's paused clock):
//!
//! - [`SilenceWatch`]: no data frame (PONG and `NO NEW ASSETS` do not count) for
//!   `silence_timeout` → the connection is rebuilt. It remembers the wall-clock time of the
//!   last data frame, which is where the capture gap starts.
//! - [`FirstBookWatch`]: an asset subscribed without its first `book` within
//!   `first_book_timeout` → the connection is rebuilt, once per asset (an asset that never
//!   gets a book must not cause a rebuild loop).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::AssetId;

/// Data silence on one connection.
#[derive(Debug, Clone)]
pub struct SilenceWatch {
    timeout: Duration,
    last_data: Instant,
    last_data_at: DateTime<Utc>,
}

impl SilenceWatch {
    /// A watch started at `now` (`at`: the same moment on the wall clock): silence is counted
    /// from the subscription, and a gap would start there.
    pub fn new(timeout: Duration, now: Instant, at: DateTime<Utc>) -> SilenceWatch {
        SilenceWatch { timeout, last_data: now, last_data_at: at }
    }

    /// A data frame arrived at `now` (`at` on the wall clock).
    pub fn data(&mut self, now: Instant, at: DateTime<Utc>) {
        self.last_data = now;
        self.last_data_at = at;
    }

    /// How long the connection has been silent, if longer than the timeout.
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        let silent = now.saturating_duration_since(self.last_data);
        (silent > self.timeout).then_some(silent)
    }

    /// The wall-clock time of the last data frame (or of the subscription, if none yet):
    /// capture is known good up to here.
    pub fn last_data_at(&self) -> DateTime<Utc> {
        self.last_data_at
    }
}

/// First books awaited on one connection.
#[derive(Debug, Clone, Default)]
pub struct FirstBookWatch {
    timeout: Duration,
    awaiting: HashMap<AssetId, Instant>,
    /// Assets that already cost one rebuild: not waited for again (kept across sessions).
    quiet: HashSet<AssetId>,
}

impl FirstBookWatch {
    pub fn new(timeout: Duration) -> FirstBookWatch {
        FirstBookWatch { timeout, ..FirstBookWatch::default() }
    }

    /// A new session: nothing awaited yet (the quiet set stays).
    pub fn reset(&mut self) {
        self.awaiting.clear();
    }

    /// `assets` were subscribed at `now`.
    pub fn subscribed<'a>(&mut self, assets: impl IntoIterator<Item = &'a AssetId>, now: Instant) {
        for a in assets {
            self.awaiting.insert(a.clone(), now);
        }
    }

    /// A book arrived for `asset`. Once every first book is in, the map's room goes back
    /// (a connection keeps it for its life otherwise: ~8 KB, over 1,600 connections).
    pub fn book(&mut self, asset: &str) {
        if self.awaiting.remove(asset).is_some() && self.awaiting.is_empty() {
            self.awaiting.shrink_to_fit();
        }
    }

    /// `asset` was unsubscribed.
    pub fn forget(&mut self, asset: &str) {
        self.awaiting.remove(asset);
    }

    /// Assets past the deadline that have not cost a rebuild yet; they are marked so that
    /// they never cost another. Empty: no rebuild.
    pub fn late(&mut self, now: Instant) -> Vec<AssetId> {
        let late: Vec<AssetId> = self
            .awaiting
            .iter()
            .filter(|(a, since)| now.saturating_duration_since(**since) > self.timeout && !self.quiet.contains(*a))
            .map(|(a, _)| a.clone())
            .collect();
        self.quiet.extend(late.iter().cloned());
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::time::advance;

    #[tokio::test(start_paused = true)]
    async fn silence_is_judged_from_the_last_data_frame() {
        let t0 = Utc::now();
        let mut w = SilenceWatch::new(Duration::from_secs(60), Instant::now(), t0);
        advance(Duration::from_secs(59)).await;
        assert_eq!(w.stalled(Instant::now()), None);
        let t1 = t0 + chrono::Duration::seconds(59);
        w.data(Instant::now(), t1);
        advance(Duration::from_secs(60)).await;
        assert_eq!(w.stalled(Instant::now()), None, "exactly the timeout is not yet a stall");
        advance(Duration::from_millis(1)).await;
        assert_eq!(w.stalled(Instant::now()), Some(Duration::from_millis(60_001)));
        assert_eq!(w.last_data_at(), t1, "the gap starts at the last data frame, not at detection");
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_first_book_costs_one_rebuild_per_asset() {
        let mut w = FirstBookWatch::new(Duration::from_secs(30));
        let (a, b, c) = (AssetId::from("a"), AssetId::from("b"), AssetId::from("c"));
        w.subscribed([&a, &b], Instant::now());
        advance(Duration::from_secs(10)).await;
        w.subscribed([&c], Instant::now());
        w.book("b");
        advance(Duration::from_secs(21)).await;
        assert_eq!(w.late(Instant::now()), vec![a.clone()]);
        // The next session: `a` is never waited for again, `c` still is.
        w.reset();
        w.subscribed([&a, &c], Instant::now());
        advance(Duration::from_secs(31)).await;
        assert_eq!(w.late(Instant::now()), vec![c.clone()]);
        w.reset();
        w.subscribed([&a, &c], Instant::now());
        advance(Duration::from_secs(31)).await;
        assert!(w.late(Instant::now()).is_empty(), "no rebuild loop");
    }

    #[tokio::test(start_paused = true)]
    async fn unsubscribed_assets_are_not_awaited() {
        let mut w = FirstBookWatch::new(Duration::from_secs(1));
        let a = AssetId::from("a");
        w.subscribed([&a], Instant::now());
        w.forget("a");
        advance(Duration::from_secs(5)).await;
        assert!(w.late(Instant::now()).is_empty());
    }
}
