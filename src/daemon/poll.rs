//! The polling loop every [`Collector`] runs in, and the stats it keeps (DESIGN §2).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::collectors::Collector;

/// Per-collector stats, updated by its polling loop.
#[derive(Debug, Default)]
pub struct CollectorStats {
    /// Set after each successful `collect_once` (UTC).
    last_collect_ts: Mutex<Option<DateTime<Utc>>>,
    /// Sum of the counts `collect_once` returned.
    total_items: AtomicU64,
    error_count: AtomicU64,
    /// Text of the last failure.
    last_error: Mutex<Option<String>>,
}

/// A copy of [`CollectorStats`] at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            last_collect_ts: *self.last_collect_ts.lock().expect("stats lock"),
            total_items: self.total_items.load(Ordering::Relaxed),
            error_count: self.error_count.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("stats lock").clone(),
        }
    }
}

/// Runs `collector` until `cancel` fires: `collect_once`, record, wait `interval`. A failed
/// pass is logged and counted and the loop goes on; cancellation is honoured between passes
/// and while waiting, and also interrupts a pass in progress (its transaction rolls back, and
/// every pass is idempotent).
pub async fn run<C: Collector>(mut collector: C, stats: &CollectorStats, cancel: CancellationToken) {
    let name = collector.name();
    let span = tracing::info_span!("collector", collector = name);
    async move {
        loop {
            let pass = tokio::select! {
                _ = cancel.cancelled() => return,
                r = collector.collect_once() => r,
            };
            match pass {
                Ok(items) => {
                    stats.record_success(items);
                    tracing::debug!(items, "pass done");
                }
                Err(e) => {
                    let text = crate::polymarket::client::error_chain(&e);
                    tracing::warn!(error = %text, "pass failed, retrying next interval");
                    stats.record_error(text);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(collector.interval()) => {}
            }
        }
    }
    .instrument(span)
    .await
}
