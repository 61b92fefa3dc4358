//! The writer: takes rows off the sink's queue in batches and stores each batch in one
//! transaction (`db::stream::write_batch`), two batches at a time (while one commits, the next
//! streams in); when the queue is empty it replays the spool in order.
//!
//! No batch is retried forever:
//! - A batch that fails because the database is away, busy or locked (`DbError::is_transient`:
//!   connection errors, shutdown, lock timeouts, deadlocks) is kept and retried with backoff.
//! - A batch the database refuses for its content (SQLSTATE class 22 or 23: a NUL byte, a
//!   `\u0000` in JSON, …) is split at once until the refused rows stand alone.
//! - Any other error (a `statement_timeout`, an index row too large, a permission, …) is
//!   retried [`REPEATS`] times, then the batch is split the same way: the rows that still fail
//!   alone are set aside with the reason.
//!
//! Rows set aside go to `stream_quarantine` (or, if even that fails, to `poison.jsonl` in the
//! spool directory); everything else is stored. At the stop it writes what is queued until
//! the stop deadline and spools the rest for the next run.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::domain::printable;
use super::gate::Plan;
use super::sink::{LatencyHistogram, QueueRx, Sink};
use crate::backoff::{Backoff, rest};
use crate::db::stream::{Keys, Origin, Row, write_batch, write_batch_fenced};
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
    pub rx: Arc<tokio::sync::Mutex<QueueRx>>,
    pub sink: Arc<Sink>,
    /// Rows per transaction: a batch closes at this many (its last frame's rows may take it
    /// a little past). Default 10,000.
    pub batch_size: usize,
    /// Longest wait to fill a batch. Default 50 ms.
    pub flush_interval: Duration,
    /// Where rows go that neither the tables nor `stream_quarantine` take.
    pub poison_file: PathBuf,
    /// The dictionary keys known for this database.
    pub keys: Arc<Keys>,
}

/// Live batches written at once, each in its own transaction on its own connection: while one
/// commits, the next streams in, so the database is not left idle between batches (with one
/// it was idle a quarter of the time at the highest rates: BENCHMARKS.md).
const PIPELINE: usize = 2;

/// How often a filling batch looks at the queue.
const FILL_POLL: Duration = Duration::from_millis(5);

/// A batch written alone: a failed live batch (`at: None`), or a spool chunk and the spool
/// position that consumes it.
struct Alone {
    rows: Vec<Row>,
    at: Option<super::spool::Position>,
    /// Written idempotently: some of its rows may be stored already.
    maybe_stored: bool,
    /// Its failed attempts: after [`REPEATS`], an error that is not transient splits it.
    failures: u32,
}

/// Attempts of a batch failing with an error that is neither transient nor about its content
/// (a `statement_timeout`, an index row too large) before it is split to set aside the rows
/// that fail alone.
pub const REPEATS: u32 = 3;

/// A live batch being written by its own task.
type InFlight = (Arc<Vec<Row>>, JoinHandle<Result<u64, DbError>>);

impl Writer {
    /// Runs until `stop`, then drains the queue until the stop deadline (`grace` from the stop
    /// if none was given); rows still unwritten then are spooled for the next run.
    ///
    /// Live batches are written [`PIPELINE`] at a time. A batch whose write fails, and a spool
    /// chunk, are written alone before anything new is taken: a failed write may have committed
    /// without an answer (so it is retried idempotently), and the spool is replayed in order
    /// (idempotently where its rows may be stored: those a previous run left, see
    /// [`super::spool::Spool::reading_inherited`]; rows spilled by this run are new).
    pub async fn run(self, stop: Stop, grace: Duration) {
        let mut rx = self.rx.clone().lock_owned().await;
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut alone: VecDeque<Alone> = VecDeque::new();
        let mut held = Held::default();
        let mut retries = RETRY.start();
        let stats = &self.sink.stats;
        'run: loop {
            // Finished writes, oldest first; wait for the oldest when the pipeline is full, or
            // when batches wait to be written alone.
            while let Some((_, handle)) = inflight.front() {
                if !handle.is_finished() && inflight.len() < PIPELINE && alone.is_empty() {
                    break;
                }
                let (rows, mut handle) = inflight.pop_front().expect("front");
                let joined = tokio::select! {
                    r = &mut handle => r,
                    _ = stop.cancel.cancelled() => {
                        handle.abort();
                        inflight.push_front((rows, handle));
                        break 'run;
                    }
                };
                // A write task that panicked panics the writer, as an inline write would (its supervisor
                // restarts it); nothing aborts these tasks but the stop, which does not come here.
                match joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())) {
                    Ok(trades) => {
                        self.sink.stored(rows.len(), trades, held.through(newest(&rows), alone.iter().any(|a| a.at.is_none())));
                    }
                    Err(e) => {
                        self.failed(&e, rows.len(), &mut retries);
                        alone.push_back(Alone { rows: Arc::unwrap_or_clone(rows), at: None, maybe_stored: true, failures: 1 });
                    }
                }
            }
            // The spool is replayed once the election said whether this instance writes its
            // slice's level changes (they are in it).
            if alone.is_empty() && inflight.is_empty() && !self.sink.gate.starting() {
                if let Some((rows, at, maybe_stored)) = self.sink.spool_chunk_if_idle(&mut rx, self.batch_size) {
                    alone.push_back(Alone { rows, at: Some(at), maybe_stored, failures: 0 });
                }
            }
            if let Some(Alone { rows, at, maybe_stored, failures }) = alone.front() {
                // A write in flight when the stop comes is abandoned (its transaction rolls
                // back) and the batch goes to the drain: a hung database cannot hold the stop.
                let origin = if *maybe_stored { Origin::MaybeStored } else { Origin::Spilled };
                let result = tokio::select! {
                    r = self.store(rows, origin, *failures >= REPEATS) => r,
                    _ = stop.cancel.cancelled() => break 'run,
                };
                match result {
                    Ok(trades) => {
                        if at.is_none() {
                            record_latency(&stats.commit_latency, rows);
                        } else {
                            stats.replayed_rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
                        }
                        let through = held.through(newest(rows), alone.iter().skip(1).any(|a| a.at.is_none()));
                        self.sink.stored(rows.len(), trades, through);
                        if let Some(at) = at {
                            self.sink.spool_commit(*at);
                        }
                        alone.pop_front();
                        if retries.attempts() > 0 {
                            tracing::info!(message_id = journal::SPOOL, failures = retries.attempts(), "database writes resumed");
                            retries.reset();
                        }
                    }
                    Err(e) => {
                        let delay = self.failed(&e, rows.len(), &mut retries);
                        // It may have committed without an answer: idempotently from now on.
                        let front = alone.front_mut().expect("front");
                        front.maybe_stored = true;
                        front.failures += 1;
                        if !rest(&stop.cancel, delay).await {
                            break 'run;
                        }
                    }
                }
                continue;
            }
            // A new live batch: its first row, then what comes within the flush interval (or
            // until it is full). Every transaction costs the database CPU on top of its rows
            // (statements, partition routing, the commit), so batches filled for the interval
            // cost less per row than batches cut early (BENCHMARKS.md, issue 10, fourth part).
            stats.writer_idle.store(inflight.is_empty(), Ordering::SeqCst);
            let first = tokio::select! {
                _ = stop.cancel.cancelled() => None,
                r = rx.recv() => r,
                _ = tokio::time::sleep(self.flush_interval) => continue,
            };
            let Some(rows) = first else { break };
            stats.writer_idle.store(false, Ordering::SeqCst);
            // Room for a full default batch from the start (growing it copied every row
            // ~log2(batch) times), and for the last frame's rows that take it past
            // `batch_size`; a larger configured batch grows past that as it fills.
            let mut batch = Vec::with_capacity(self.batch_size.min(16_384) + 64);
            batch.extend(rows);
            let deadline = Instant::now() + self.flush_interval;
            loop {
                while batch.len() < self.batch_size {
                    match rx.try_recv() {
                        Some(rows) => batch.extend(rows),
                        None => break,
                    }
                }
                let now = Instant::now();
                if batch.len() >= self.batch_size || now >= deadline || (rx.is_closed() && rx.is_empty()) {
                    break;
                }
                // Looked at every few ms rather than woken per row: at the highest rates a wake
                // per row would cost more than the rows' encoding.
                tokio::select! {
                    _ = stop.cancel.cancelled() => break,
                    _ = tokio::time::sleep((deadline - now).min(FILL_POLL)) => {}
                }
            }
            let (rows, writer) = (Arc::new(batch), self.clone());
            let task_rows = rows.clone();
            inflight.push_back((
                rows,
                tokio::spawn(async move {
                    let stored = writer.store(&task_rows, Origin::Live, false).await;
                    // At the commit: the writer looks at finished writes only between batches.
                    if stored.is_ok() {
                        record_latency(&writer.sink.stats.commit_latency, &task_rows);
                    }
                    stored
                }),
            ));
        }
        stats.writer_idle.store(false, Ordering::SeqCst);
        // Abandoned writes may have committed: the drain writes them idempotently. Spool
        // chunks are still in the spool (not committed there): dropped here.
        let mut maybe_stored = Vec::new();
        for (rows, handle) in inflight {
            handle.abort();
            let _ = handle.await;
            maybe_stored.extend(Arc::unwrap_or_clone(rows));
        }
        for a in alone {
            if a.at.is_none() {
                maybe_stored.extend(a.rows);
            }
        }
        self.drain(&mut rx, maybe_stored, stop.deadline(grace)).await;
    }

    /// Counts and logs a failed write; returns the delay before the next attempt.
    fn failed(&self, e: &DbError, rows: usize, retries: &mut crate::backoff::Retries) -> Duration {
        let stats = &self.sink.stats;
        stats.write_errors.fetch_add(1, Ordering::Relaxed);
        stats.write_failures_in_a_row.fetch_add(1, Ordering::Relaxed);
        let delay = retries.next_delay();
        let failures = retries.attempts();
        if failures == 1 || failures.is_power_of_two() {
            let sqlstate = e.sqlstate().map(|c| c.code().to_string()).unwrap_or_default();
            tracing::warn!(error = %e, sqlstate, transient = e.is_transient(), rows, failures,
                retry_in_ms = delay.as_millis() as u64, "stream write failed; batch kept, retrying: {e}");
        }
        delay
    }

    /// Stores `rows` in one transaction; when the database refuses their content — or, with
    /// `split_any`, fails for any reason that is not transient — isolates the rows that fail
    /// alone (see the module docs) and stores the rest. `Err` for failures that may pass (the
    /// database away, busy, …) and, without `split_any`, for other errors: the caller retries
    /// the whole batch, which is idempotent.
    ///
    /// The gate says how (`gate::Plan`): a slice's writer checks its fence in the transaction;
    /// a standby — or a writer whose fence is gone — leaves the level changes out.
    pub(super) async fn store(&self, rows: &[Row], origin: Origin, split_any: bool) -> Result<u64, DbError> {
        loop {
            let plan = self.sink.gate.plan(origin);
            let stripped;
            let rows = if plan.strip && rows.iter().any(|r| matches!(r, Row::PriceChange { .. })) {
                stripped = self.strip(rows);
                &stripped[..]
            } else {
                rows
            };
            match self.store_as(rows, &plan, split_any).await? {
                Some(trades) => return Ok(trades),
                None => self.sink.gate.fenced_out(plan.fence.as_ref().expect("only a fenced write finds its fence gone")),
            }
        }
    }

    /// The rows but the level changes, which another instance writes now (counted).
    fn strip(&self, rows: &[Row]) -> Vec<Row> {
        let kept: Vec<Row> = rows.iter().filter(|r| !matches!(r, Row::PriceChange { .. })).cloned().collect();
        self.sink.gate.stats.handed_over.fetch_add((rows.len() - kept.len()) as u64, Ordering::Relaxed);
        kept
    }

    /// [`Writer::store`] as `plan` says; `Ok(None)` when the fence is gone.
    async fn store_as(&self, rows: &[Row], plan: &Plan, split_any: bool) -> Result<Option<u64>, DbError> {
        match write_batch_fenced(&self.pool, &self.keys, rows, plan.origin, plan.fence.as_ref()).await {
            Err(e) if e.is_content_error() => self.isolate(rows, plan).await,
            Err(e) if split_any && !e.is_transient() => {
                let sqlstate = e.sqlstate().map(|c| c.code().to_string()).unwrap_or_default();
                tracing::warn!(error = %e, sqlstate, rows = rows.len(), attempts = REPEATS,
                    "a stream batch keeps failing with an error that is not transient: setting aside the rows that fail alone: {e}");
                self.isolate(rows, plan).await
            }
            other => other,
        }
    }

    async fn isolate(&self, rows: &[Row], plan: &Plan) -> Result<Option<u64>, DbError> {
        let mut stored = 0;
        // Halves, first half on top: rows keep their order.
        let mut stack: Vec<&[Row]> = vec![rows];
        while let Some(part) = stack.pop() {
            match write_batch_fenced(&self.pool, &self.keys, part, plan.origin, plan.fence.as_ref()).await {
                Ok(Some(n)) => stored += n,
                Ok(None) => return Ok(None),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) if part.len() == 1 => self.poison(&part[0], &e).await,
                Err(_) => {
                    let (a, b) = part.split_at(part.len() / 2);
                    stack.push(b);
                    stack.push(a);
                }
            }
        }
        Ok(Some(stored))
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
        if let Err(qe) = write_batch(&self.pool, &self.keys, std::slice::from_ref(&q), Origin::Live).await {
            let line = serde_json::json!({"reason": reason, "row": frame, "quarantine_error": qe.to_string()});
            let written =
                std::fs::OpenOptions::new().create(true).append(true).open(&self.poison_file).and_then(|mut f| writeln!(f, "{line}"));
            match written {
                Ok(()) => tracing::error!(file = %self.poison_file.display(), "refused row written to the poison file"),
                Err(fe) => tracing::error!(error = %fe, "DATA LOST: cannot keep a refused row anywhere: {line}"),
            }
        }
    }

    /// The stop: write what may be stored already (idempotently) and what is queued until
    /// `deadline`, spool the rest.
    async fn drain(&self, rx: &mut QueueRx, maybe_stored: Vec<Row>, deadline: Instant) {
        rx.close();
        let replayed = maybe_stored.len();
        let mut batch = maybe_stored;
        while let Some(rows) = rx.try_recv() {
            batch.extend(rows);
        }
        let total = batch.len();
        let mut written = 0;
        while written < total {
            // Chunks do not mix rows that may be stored with queued ones.
            let end = if written < replayed {
                replayed.min(written + self.batch_size.max(1))
            } else {
                total.min(written + self.batch_size.max(1))
            };
            let chunk = &batch[written..end];
            if Instant::now() >= deadline {
                break;
            }
            let origin = if written < replayed { Origin::MaybeStored } else { Origin::Live };
            match tokio::time::timeout_at(deadline, self.store(chunk, origin, false)).await {
                Ok(Ok(trades)) => {
                    self.sink.stored(chunk.len(), trades, newest(chunk));
                    written = end;
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
                Ok(()) => {
                    tracing::warn!(message_id = journal::SPOOL, rows = n, "database unavailable at stop: rows spooled for the next start")
                }
                Err(e) => tracing::error!(message_id = journal::SPOOL, rows = n, error = %e, "DATA LOST at stop: cannot spool rows"),
            }
        }
        self.sink.sync_spool();
        tracing::info!(written, total, "stream writer drained");
    }
}

/// The newest receive time to report as committed through ([`Sink::stored`]): everything
/// received before it must be committed (a gap's backfill waits for it), so while a failed
/// batch waits to be written again, the batches committed after it are held back and reported
/// with it.
#[derive(Default)]
struct Held(Option<DateTime<Utc>>);

impl Held {
    /// `newest`: of a batch just committed; `waiting`: a failed batch still waits.
    fn through(&mut self, newest: Option<DateTime<Utc>>, waiting: bool) -> Option<DateTime<Utc>> {
        self.0 = self.0.max(newest);
        if waiting { None } else { self.0.take() }
    }
}

/// The newest receive time in `rows`.
fn newest(rows: &[Row]) -> Option<DateTime<Utc>> {
    rows.iter().map(Row::received_at).max()
}

/// Records, per row, the time from its frame's arrival to now (just committed).
fn record_latency(h: &LatencyHistogram, rows: &[Row]) {
    let now = crate::clock::now();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches committed while an earlier one waits to be written again do not move "committed
    /// through" past it; once it is written, the newest of them all is reported.
    #[test]
    fn committed_through_waits_for_a_failed_batch() {
        let t = |s: i64| DateTime::from_timestamp(s, 0);
        let mut held = Held::default();
        assert_eq!(held.through(t(10), false), t(10));
        assert_eq!(held.through(t(30), true), None, "a failed batch (received before 30) waits");
        assert_eq!(held.through(t(40), true), None);
        assert_eq!(held.through(t(20), false), t(40), "the failed batch is in: everything through 40 is");
        assert_eq!(held.through(None, false), None);
    }
}
