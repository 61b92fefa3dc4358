//! The writer: takes rows off the sink's queue in batches and stores each batch in one
//! transaction (`db::stream::write_batch`); when the queue is empty it replays the spool in
//! order. A failed batch is kept and retried with backoff. At the stop it writes what is
//! queued within its grace and spools the rest for the next run.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sink::{LatencyHistogram, Sink};
use crate::backoff::Backoff;
use crate::db::Pool;
use crate::db::stream::{Row, write_batch};
use crate::journal;

/// Delays between retries of a failed batch.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Takes rows off the queue and stores them.
#[derive(Clone)]
pub struct Writer {
    pub pool: Pool,
    /// The queue's receiving end, shared so a writer restarted after a panic takes it over.
    pub rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Row>>>,
    pub sink: Arc<Sink>,
    /// Rows per transaction. Default 5000.
    pub batch_size: usize,
    /// Longest wait to fill a batch. Default 50 ms.
    pub flush_interval: Duration,
}

impl Writer {
    /// Runs until `cancel`, then drains the queue (and spool) for at most `grace`; rows still
    /// unwritten then are spooled for the next run.
    pub async fn run(self, cancel: CancellationToken, grace: Duration) {
        let mut rx = self.rx.clone().lock_owned().await;
        let mut batch: Vec<Row> = Vec::new();
        let mut from_spool: Option<u64> = None;
        let mut retries = RETRY.start();
        loop {
            if batch.is_empty() {
                if let Some((rows, at)) = self.sink.spool_chunk_if_idle(&mut rx, self.batch_size) {
                    batch = rows;
                    from_spool = Some(at);
                } else {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        r = rx.recv() => match r {
                            Some(row) => batch.push(row),
                            None => break,
                        },
                        _ = tokio::time::sleep(self.flush_interval) => continue,
                    }
                    let deadline = Instant::now() + self.flush_interval;
                    while batch.len() < self.batch_size {
                        match rx.try_recv() {
                            Ok(row) => batch.push(row),
                            Err(_) if Instant::now() < deadline && batch.len() < self.batch_size / 10 => {
                                tokio::select! {
                                    _ = tokio::time::sleep_until(deadline) => break,
                                    r = rx.recv() => match r { Some(row) => batch.push(row), None => break },
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            match write_batch(&self.pool, &batch).await {
                Ok(trades) => {
                    if from_spool.is_none() {
                        record_latency(&self.sink.stats.commit_latency, &batch);
                    }
                    self.sink.stored(batch.len(), trades);
                    if let Some(at) = from_spool.take() {
                        self.sink.spool_commit(at);
                    }
                    batch.clear();
                    if retries.attempts() > 0 {
                        tracing::info!(message_id = journal::SPOOL, failures = retries.attempts(), "database writes resumed");
                        retries.reset();
                    }
                }
                Err(e) => {
                    self.sink.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    let delay = retries.next_delay();
                    let failures = retries.attempts();
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, rows = batch.len(), failures, retry_in_ms = delay.as_millis() as u64,
                            "stream write failed; batch kept, retrying: {e}");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.drain(&mut rx, batch, from_spool.is_some(), grace).await;
    }

    /// The stop: write what is queued within `grace`, spool the rest.
    async fn drain(&self, rx: &mut mpsc::Receiver<Row>, mut batch: Vec<Row>, batch_is_spooled: bool, grace: Duration) {
        let deadline = Instant::now() + grace;
        rx.close();
        if batch_is_spooled {
            // Those rows are still in the spool file (not committed): drop the copy.
            batch.clear();
        }
        while let Ok(row) = rx.try_recv() {
            batch.push(row);
        }
        let total = batch.len();
        let mut written = 0;
        for chunk in batch.chunks(self.batch_size.max(1)) {
            if Instant::now() >= deadline {
                break;
            }
            match tokio::time::timeout(deadline - Instant::now(), write_batch(&self.pool, chunk)).await {
                Ok(Ok(trades)) => {
                    self.sink.stored(chunk.len(), trades);
                    written += chunk.len();
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "write failed during drain");
                    break;
                }
                Err(_) => break,
            }
        }
        let rest: Vec<Row> = batch.into_iter().skip(written).collect();
        if !rest.is_empty() {
            let n = rest.len();
            match self.sink.spool_all(rest) {
                Ok(()) => tracing::warn!(message_id = journal::SPOOL, rows = n, "database unavailable at stop: rows spooled for the next start"),
                Err(e) => tracing::error!(message_id = journal::SPOOL, rows = n, error = %e, "DATA LOST at stop: cannot spool rows"),
            }
        }
        tracing::info!(written, total, "stream writer drained");
    }
}

/// Records, per row, the time from its frame's arrival to now (just committed).
fn record_latency(h: &LatencyHistogram, rows: &[Row]) {
    let now = Utc::now();
    let mut last: Option<(DateTime<Utc>, u64)> = None;
    for r in rows {
        let received = r.received_at();
        // Rows of one frame share a receive time: count runs at once.
        match &mut last {
            Some((t, n)) if *t == received => *n += 1,
            _ => {
                if let Some((t, n)) = last.take() {
                    h.record((now - t).num_milliseconds().max(0) as u64, n);
                }
                last = Some((received, 1));
            }
        }
    }
    if let Some((t, n)) = last {
        h.record((now - t).num_milliseconds().max(0) as u64, n);
    }
}

