//! The writer: takes rows off the sink's queue in batches and stores each batch in one
//! transaction (`db::stream::write_batch`); when the queue is empty it replays the spool in
//! order. A batch that fails because the database is away is kept and retried with backoff. A
//! batch the database refuses for its content (SQLSTATE class 22 or 23: a NUL byte, a
//! `\u0000` in JSON, …) is split until the refused rows stand alone; those go to
//! `stream_quarantine` (or, if even that fails, to `poison.jsonl` in the spool directory) and
//! everything else is stored — never an endless retry. At the stop it writes what is queued
//! until the stop deadline and spools the rest for the next run.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::domain::printable;
use super::sink::{LatencyHistogram, Sink};
use crate::backoff::Backoff;
use crate::db::stream::{Keys, Row, write_batch};
use crate::db::{DbError, Pool};
use crate::errors::error_chain;
use crate::journal;

/// Delays between retries of a failed batch.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// When and how the writer stops: `cancel` fires, and `deadline` (set before it fires) is
/// when the drain must end — rows not written by then are spooled.
#[derive(Clone, Default)]
pub struct Stop {
    pub cancel: CancellationToken,
    pub deadline: Arc<Mutex<Option<Instant>>>,
}

impl Stop {
    /// Asks the writer to drain until `deadline`.
    pub fn stop_by(&self, deadline: Instant) {
        *self.deadline.lock().expect("deadline lock") = Some(deadline);
        self.cancel.cancel();
    }

    fn deadline(&self, default_grace: Duration) -> Instant {
        self.deadline.lock().expect("deadline lock").unwrap_or_else(|| Instant::now() + default_grace)
    }
}

/// Takes rows off the queue and stores them.
#[derive(Clone)]
pub struct Writer {
    pub pool: Pool,
    /// The queue's receiving end, shared so a writer restarted after a panic takes it over.
    pub rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Row>>>,
    pub sink: Arc<Sink>,
    /// Most rows per transaction. Default 20,000.
    pub batch_size: usize,
    /// Longest wait to fill a batch. Default 50 ms.
    pub flush_interval: Duration,
    /// Where rows go that neither the tables nor `stream_quarantine` take.
    pub poison_file: PathBuf,
    /// The dictionary keys known for this database.
    pub keys: Arc<Keys>,
}

impl Writer {
    /// Runs until `stop`, then drains the queue until the stop deadline (`grace` from the stop
    /// if none was given); rows still unwritten then are spooled for the next run.
    pub async fn run(self, stop: Stop, grace: Duration) {
        let mut rx = self.rx.clone().lock_owned().await;
        let mut batch: Vec<Row> = Vec::new();
        let mut from_spool: Option<super::spool::Position> = None;
        let mut retries = RETRY.start();
        let stats = &self.sink.stats;
        loop {
            if batch.is_empty() {
                if let Some((rows, at)) = self.sink.spool_chunk_if_idle(&mut rx, self.batch_size) {
                    batch = rows;
                    from_spool = Some(at);
                } else {
                    stats.writer_idle.store(true, Ordering::SeqCst);
                    let first = tokio::select! {
                        _ = stop.cancel.cancelled() => None,
                        r = rx.recv() => r,
                        _ = tokio::time::sleep(self.flush_interval) => continue,
                    };
                    let Some(row) = first else { break };
                    batch.push(row);
                    stats.writer_idle.store(false, Ordering::SeqCst);
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
            // A write in flight when the stop comes is abandoned (its transaction rolls back)
            // and the batch goes to the drain: a hung database cannot hold the stop.
            // A retried batch may have been committed by an attempt whose answer was lost:
            // it takes the idempotent path, like a spool replay.
            let replay = from_spool.is_some() || retries.attempts() > 0;
            let result = tokio::select! {
                r = self.store(&batch, replay) => r,
                _ = stop.cancel.cancelled() => break,
            };
            match result {
                Ok(trades) => {
                    if from_spool.is_none() {
                        record_latency(&stats.commit_latency, &batch);
                    } else {
                        stats.replayed_rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    self.sink.stored(batch.len(), trades, newest(&batch));
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
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    stats.write_failures_in_a_row.fetch_add(1, Ordering::Relaxed);
                    let delay = retries.next_delay();
                    let failures = retries.attempts();
                    if failures == 1 || failures.is_power_of_two() {
                        let sqlstate = e.sqlstate().map(|c| c.code().to_string()).unwrap_or_default();
                        tracing::warn!(error = %e, sqlstate, transient = e.is_transient(), rows = batch.len(), failures,
                            retry_in_ms = delay.as_millis() as u64, "stream write failed; batch kept, retrying: {e}");
                    }
                    tokio::select! {
                        _ = stop.cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        stats.writer_idle.store(false, Ordering::SeqCst);
        self.drain(&mut rx, batch, from_spool.is_some(), stop.deadline(grace)).await;
    }

    /// Stores `rows` in one transaction; when the database refuses their content, isolates
    /// the refused rows (see the module docs) and stores the rest. `Err` only for failures
    /// that may pass (the database away, busy, …): the caller retries the whole batch, which
    /// is idempotent.
    async fn store(&self, rows: &[Row], replay: bool) -> Result<u64, DbError> {
        match write_batch(&self.pool, &self.keys, rows, replay).await {
            Err(e) if e.is_content_error() => self.isolate(rows, replay).await,
            other => other,
        }
    }

    async fn isolate(&self, rows: &[Row], replay: bool) -> Result<u64, DbError> {
        let mut stored = 0;
        // Halves, first half on top: rows keep their order.
        let mut stack: Vec<&[Row]> = vec![rows];
        while let Some(part) = stack.pop() {
            match write_batch(&self.pool, &self.keys, part, replay).await {
                Ok(n) => stored += n,
                Err(e) if e.is_content_error() && part.len() == 1 => self.poison(&part[0], &e).await,
                Err(e) if e.is_content_error() => {
                    let (a, b) = part.split_at(part.len() / 2);
                    stack.push(b);
                    stack.push(a);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(stored)
    }

    /// A row the database refuses: into `stream_quarantine` with the reason, else to the
    /// poison file; never retried.
    async fn poison(&self, row: &Row, e: &DbError) {
        self.sink.stats.poisoned_rows.fetch_add(1, Ordering::Relaxed);
        let sqlstate = e.sqlstate().map(|c| c.code().to_string()).unwrap_or_default();
        let reason = printable(&format!("refused by the database (SQLSTATE {sqlstate}): {}", error_chain(e)));
        let frame = printable(&serde_json::to_string(row).unwrap_or_default());
        tracing::error!(message_id = journal::SPOOL, sqlstate, reason = %reason, "a stream row was refused by the database; quarantined: {reason}");
        let q = Row::Quarantine { connection: None, reason: reason.clone(), frame: frame.clone(), received_at: row.received_at() };
        if let Err(qe) = write_batch(&self.pool, &self.keys, std::slice::from_ref(&q), false).await {
            let line = serde_json::json!({"reason": reason, "row": frame, "quarantine_error": qe.to_string()});
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.poison_file)
                .and_then(|mut f| writeln!(f, "{line}"));
            match written {
                Ok(()) => tracing::error!(file = %self.poison_file.display(), "refused row written to the poison file"),
                Err(fe) => tracing::error!(error = %fe, "DATA LOST: cannot keep a refused row anywhere: {line}"),
            }
        }
    }

    /// The stop: write what is queued until `deadline`, spool the rest.
    async fn drain(&self, rx: &mut mpsc::Receiver<Row>, mut batch: Vec<Row>, batch_is_spooled: bool, deadline: Instant) {
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
            match tokio::time::timeout_at(deadline, self.store(chunk, false)).await {
                Ok(Ok(trades)) => {
                    self.sink.stored(chunk.len(), trades, newest(chunk));
                    written += chunk.len();
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "write failed during drain: {e}");
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
        self.sink.sync_spool();
        tracing::info!(written, total, "stream writer drained");
    }
}

/// The newest receive time in `rows`.
fn newest(rows: &[Row]) -> Option<DateTime<Utc>> {
    rows.iter().map(Row::received_at).max()
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
