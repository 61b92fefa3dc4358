//! The polling loop every [`Collector`] runs in, and the stats it keeps (DESIGN §2).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::collectors::Collector;
use crate::fault::{self, Fault};

/// Per-collector stats, updated by its polling loop.
#[derive(Debug)]
pub struct CollectorStats {
    /// Set after each successful `collect_once` (UTC).
    last_collect_ts: Mutex<Option<DateTime<Utc>>>,
    /// Sum of the counts `collect_once` returned.
    total_items: AtomicU64,
    error_count: AtomicU64,
    /// Text of the last failure.
    last_error: Mutex<Option<String>>,
    /// When the pass in progress started (ms after `epoch`); 0 when idle.
    pass_started_ms: AtomicU64,
    /// How long the last finished pass took, ms (0: none yet).
    last_pass_ms: AtomicU64,
    epoch: Instant,
}

impl Default for CollectorStats {
    fn default() -> Self {
        CollectorStats {
            last_collect_ts: Mutex::new(None),
            total_items: AtomicU64::new(0),
            error_count: AtomicU64::new(0),
            last_error: Mutex::new(None),
            pass_started_ms: AtomicU64::new(0),
            last_pass_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// A copy of [`CollectorStats`] at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    pub last_collect_ts: Option<DateTime<Utc>>,
    pub total_items: u64,
    pub error_count: u64,
    pub last_error: Option<String>,
}

impl CollectorStats {
    pub fn record_success(&self, items: u64) {
        self.total_items.fetch_add(items, Ordering::Relaxed);
        *self.last_collect_ts.lock().expect("stats lock") = Some(Utc::now());
    }

    pub fn record_error(&self, error: String) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("stats lock") = Some(error);
    }

    fn pass_begins(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.pass_started_ms.store(ms.max(1), Ordering::Relaxed);
    }

    fn pass_ends(&self) {
        let started = self.pass_started_ms.swap(0, Ordering::Relaxed);
        if started > 0 {
            let took = (self.epoch.elapsed().as_millis() as u64).saturating_sub(started);
            self.last_pass_ms.store(took.max(1), Ordering::Relaxed);
        }
    }

    /// How long the last finished pass took (a catalog sweep, a books poll cycle).
    pub fn last_pass(&self) -> Option<Duration> {
        match self.last_pass_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// How long the pass in progress has been running, if one is.
    pub fn pass_running_for(&self) -> Option<Duration> {
        match self.pass_started_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.epoch.elapsed().saturating_sub(Duration::from_millis(ms))),
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            last_collect_ts: *self.last_collect_ts.lock().expect("stats lock"),
            total_items: self.total_items.load(Ordering::Relaxed),
            error_count: self.error_count.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("stats lock").clone(),
        }
    }
}

/// Runs `collector` until `cancel` fires: `collect_once`, record, wait `interval` (the
/// supervisor's live value, first the collector's own: when a reload changes it, the wait in
/// progress becomes the new interval from the end of the last pass). A failed pass is logged
/// and counted and the loop goes on; cancellation is honoured between passes and while
/// waiting, and also interrupts a pass in progress (its transaction rolls back, and every pass
/// is idempotent). `fault` is the test-only hook (see [`crate::fault`]).
pub async fn run<C: Collector>(
    mut collector: C,
    stats: &CollectorStats,
    cancel: CancellationToken,
    fault: Option<Fault>,
    mut interval: watch::Receiver<Duration>,
    mut leader: Option<crate::db::leader::Leadership>,
) {
    let name = collector.name();
    let span = tracing::info_span!("collector", collector = name);
    async move {
        let mut passes = 0u64;
        loop {
            // Shared work waits while another instance leads (docs/scaling.md).
            if let Some(l) = leader.as_mut().filter(|l| !l.is_leader()) {
                tracing::debug!("another instance leads: standing by");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = l.until_leader() => {}
                }
            }
            stats.pass_begins();
            passes += 1;
            if fault == Some(Fault::Stubborn) && passes > 1 {
                // Test hook: a pass that ignores the stop request.
                std::future::pending::<()>().await;
            }
            let pass = tokio::select! {
                _ = cancel.cancelled() => return,
                r = async {
                    match fault {
                        Some(Fault::Panic) => panic!("injected fault: {name} panics"),
                        Some(Fault::PanicOnce) if passes > 1 && fault::fire_once() => panic!("injected fault: {name} panics once"),
                        Some(Fault::Wedge) if passes > 1 => std::future::pending().await,
                        _ => collector.collect_once().await,
                    }
                } => r,
            };
            stats.pass_ends();
            match pass {
                Ok(items) => {
                    stats.record_success(items);
                    tracing::debug!(items, "pass done");
                }
                Err(e) => {
                    let text = crate::errors::error_chain(&e);
                    tracing::warn!(error = %text, "pass failed, retrying next interval: {text}");
                    stats.record_error(text);
                }
            }
            let rest_from = Instant::now();
            loop {
                let until = rest_from + *interval.borrow_and_update();
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(until) => break,
                    Ok(()) = interval.changed() => {}
                }
            }
        }
    }
    .instrument(span)
    .await
}
