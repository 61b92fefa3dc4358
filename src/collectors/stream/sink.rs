//! The readers' side of the write path. Socket readers hand rows to the [`Sink`], which never
//! waits: it puts them on a queue bounded in rows and in bytes for the
//! [`super::writer::Writer`], or — when the queue is full because the database is down or
//! slow — appends them to the on-disk [`Spool`]. A frame's rows travel together (one lock and
//! one queue entry per frame, not per row: the per-row hand-over was a measurable share of the
//! process's CPU, BENCHMARKS.md). Once rows went to the spool, later rows follow them there until it
//! is replayed, so the replay order is the arrival order.
//!
//! Nothing is dropped silently: a row the spool cannot take (full, or its disk failing) and
//! rows a failed spool write loses are counted (`dropped_rows`, in health, `STATUS=` and the
//! metrics) and logged at ERROR as DATA LOST — every loss, in lines at most a second apart
//! ([`Sink::log_losses`]). The replay reads the spool outside the lock the readers take.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::gate::{Gate, Mode as GateMode};
pub use super::latency::LatencyHistogram;
use super::spool::{Position, Spool, SpoolError};
use super::spool_format::{LossWindow, Record};
use super::spool_read::SpoolReader;
use crate::db::stream::Row;
use crate::journal;

/// Counters of the write path (part of the stream's health).
#[derive(Debug, Default)]
pub struct WriteStats {
    pub trades_inserted: AtomicU64,
    pub rows_written: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spooled_rows: AtomicU64,
    /// Bytes those rows took in the spool (the spool's size per row, for sizing
    /// `spool_max_bytes`).
    pub spooled_bytes: AtomicU64,
    /// Rows lost: the spool was full or its write failed (every loss logged at ERROR).
    pub dropped_rows: AtomicU64,
    /// Lost rows not yet in a DATA LOST line.
    pub dropped_unlogged: AtomicU64,
    /// Spool writes and reads that failed (a full disk, an I/O error).
    pub spool_errors: AtomicU64,
    /// Spool records that could not be read back (undecodable, or in a segment set aside).
    pub spool_unreadable: AtomicU64,
    pub write_errors: AtomicU64,
    /// Failed writes since the last success (0: writing).
    pub write_failures_in_a_row: AtomicU64,
    /// Rows the database refused for their content, quarantined instead.
    pub poisoned_rows: AtomicU64,
    /// Rows replayed from the spool into the database.
    pub replayed_rows: AtomicU64,
    /// Last successful write, ms since the sink was made (0: none yet).
    pub last_write_ms: AtomicU64,
    /// Last row the spool took, ms since the sink was made (0: none yet).
    pub last_spooled_ms: AtomicU64,
    /// Last row lost because the spool could not take it, ms since the sink was made.
    pub last_dropped_ms: AtomicU64,
    /// Last DATA LOST line, ms since the sink was made.
    pub last_loss_logged_ms: AtomicU64,
    /// Receive time (µs since the epoch) of the newest row committed; with the writer idle
    /// and nothing waiting, everything received is committed.
    pub committed_through_us: std::sync::atomic::AtomicI64,
    /// The writer waits for rows with nothing in hand.
    pub writer_idle: std::sync::atomic::AtomicBool,
    /// Frame received → row committed, per row, in 1 ms buckets (the last: 10 s or more).
    pub commit_latency: LatencyHistogram,
}

struct SinkState {
    spool: Spool,
    /// Once rows went to the spool, later rows follow them there until it is replayed, so the
    /// replay order is the arrival order.
    spooling: bool,
    /// The last spool error, for the next DATA LOST line.
    last_error: Option<String>,
    /// What the rows lost since the last [`Sink::take_losses`] covered.
    losses: LossWindow,
}

/// The queue's fill: rows and (about) bytes, each bounded.
#[derive(Debug, Default)]
struct Fill {
    rows: AtomicUsize,
    bytes: AtomicUsize,
}

impl Fill {
    fn add(&self, rows: usize, bytes: usize) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, rows: usize, bytes: usize) {
        self.rows.fetch_sub(rows, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The readers' side of the write path. Cheap to share; never blocks on the database.
pub struct Sink {
    tx: mpsc::UnboundedSender<(Vec<Row>, usize)>,
    /// Rows and bytes on the queue; at most `capacity` and `max_bytes` (a frame's rows go
    /// whole or not at all).
    fill: Arc<Fill>,
    capacity: usize,
    max_bytes: usize,
    state: Mutex<SinkState>,
    /// The replay's reader: taken by the writer only, never under `state`.
    reader: Mutex<SpoolReader>,
    pub stats: WriteStats,
    /// Which level changes go on (the others are held: `gate`).
    pub gate: Gate,
    epoch: Instant,
}

impl Sink {
    /// A sink with a queue of `capacity` rows and `max_bytes` bytes and the spool at `spool`,
    /// and the receiving end for the [`Writer`](super::writer::Writer).
    pub fn new(capacity: usize, max_bytes: usize, spool: Spool) -> (Arc<Sink>, QueueRx) {
        Sink::gated(capacity, max_bytes, spool, Gate::new(GateMode::All, 1, Duration::ZERO))
    }

    /// [`Sink::new`] with a `gate` that may hold level changes (several instances of a slice).
    pub fn gated(capacity: usize, max_bytes: usize, spool: Spool, gate: Gate) -> (Arc<Sink>, QueueRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let fill = Arc::new(Fill::default());
        let spooling = !spool.is_empty();
        let bytes = spool.pending_bytes();
        let sink = Arc::new(Sink {
            tx,
            fill: fill.clone(),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            state: Mutex::new(SinkState { spool, spooling, last_error: None, losses: LossWindow::default() }),
            reader: Mutex::new(SpoolReader::default()),
            stats: WriteStats::default(),
            gate,
            epoch: Instant::now(),
        });
        sink.stats.spool_bytes.store(bytes, Ordering::Relaxed);
        (sink, QueueRx { rx, fill })
    }

    /// Hands a row over; never waits.
    pub fn push(&self, row: Row) {
        self.push_all(vec![row]);
    }

    /// Hands rows over together (a frame's), in their order; never waits. They go to the
    /// queue if it has room for all of them (in rows and bytes), else to the spool.
    pub fn push_all(&self, rows: Vec<Row>) {
        let rows = self.gate.route(rows);
        if rows.is_empty() {
            return;
        }
        let mut st = self.state.lock().expect("sink lock");
        if st.spooling && st.spool.is_empty() {
            // Nothing waits in the spool (a failed write took what it held): the queue again.
            st.spooling = false;
        }
        let rows = if st.spooling {
            rows
        } else {
            let Err(rows) = self.try_queue(rows) else { return };
            st.spooling = true;
            tracing::warn!(
                message_id = journal::SPOOL,
                capacity = self.capacity,
                max_bytes = self.max_bytes,
                "write queue full (database down or slow): spooling rows to disk"
            );
            rows
        };
        let (mut lost, mut refused) = (0, Vec::new());
        for row in rows {
            match st.spool.append(&row) {
                Ok(bytes) => {
                    self.stats.spooled_rows.fetch_add(1, Ordering::Relaxed);
                    self.stats.spooled_bytes.fetch_add(bytes, Ordering::Relaxed);
                    self.stats.last_spooled_ms.store(self.now_ms(), Ordering::Relaxed);
                }
                Err(e) => {
                    // The rows a failed write took with it are lost; this one is still here.
                    lost += e.rows_lost() - 1;
                    refused.push(row);
                    if let SpoolError::Lost { window, .. } = &e {
                        st.losses.merge((**window).clone());
                    }
                    if matches!(e, SpoolError::Lost { .. } | SpoolError::Io { .. }) {
                        self.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    st.last_error = Some(e.to_string());
                }
            }
        }
        // Rows the spool refused take the queue if it has room now (ahead of older spooled
        // rows: the writes are idempotent and keep the last quote of a key by receive time);
        // else they are lost.
        if !refused.is_empty() {
            if let Err(rows) = self.try_queue(refused) {
                lost += rows.len() as u64;
                for r in &rows {
                    r.note_loss(&mut st.losses);
                }
            }
        }
        self.stats.spool_bytes.store(st.spool.pending_bytes(), Ordering::Relaxed);
        if lost > 0 {
            let error = st.last_error.clone().unwrap_or_default();
            drop(st);
            self.lost(lost, &error);
        }
    }

    /// What the rows lost since the last call covered (`None`: nothing lost): the manager
    /// records it as a gap, whose trades the backfill recovers.
    pub fn take_losses(&self) -> Option<LossWindow> {
        let mut st = self.state.lock().expect("sink lock");
        (!st.losses.is_empty()).then(|| std::mem::take(&mut st.losses))
    }

    /// Puts `rows` on the queue if it has room for all of them (in rows and bytes); gives them
    /// back otherwise.
    fn try_queue(&self, rows: Vec<Row>) -> Result<(), Vec<Row>> {
        let (n, bytes) = (rows.len(), rows.iter().map(Row::approx_bytes).sum::<usize>());
        let fits = self.fill.rows.load(Ordering::Relaxed) + n <= self.capacity
            && self.fill.bytes.load(Ordering::Relaxed) + bytes <= self.max_bytes;
        if !fits {
            return Err(rows);
        }
        self.fill.add(n, bytes);
        self.tx.send((rows, bytes)).map_err(|mpsc::error::SendError((rows, _))| {
            self.fill.sub(n, bytes);
            rows
        })
    }

    /// Counts `rows` lost rows and logs them (at most a line a second; the rest follow in
    /// [`Sink::log_losses`]).
    fn lost(&self, rows: u64, error: &str) {
        self.stats.last_dropped_ms.store(self.now_ms(), Ordering::Relaxed);
        self.stats.dropped_rows.fetch_add(rows, Ordering::Relaxed);
        self.stats.dropped_unlogged.fetch_add(rows, Ordering::Relaxed);
        self.log_losses_because(error);
    }

    /// Logs the lost rows not yet logged, if the last DATA LOST line is a second old (the
    /// manager calls it every second, so every loss is in the journal within a second or so).
    pub fn log_losses(&self) {
        if self.stats.dropped_unlogged.load(Ordering::Relaxed) > 0 {
            let error = self.state.lock().expect("sink lock").last_error.clone().unwrap_or_default();
            self.log_losses_because(&error);
        }
    }

    fn log_losses_because(&self, error: &str) {
        let now = self.now_ms();
        let last = self.stats.last_loss_logged_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000 {
            return;
        }
        if self.stats.last_loss_logged_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        let rows = self.stats.dropped_unlogged.swap(0, Ordering::Relaxed);
        if rows > 0 {
            let total = self.stats.dropped_rows.load(Ordering::Relaxed);
            tracing::error!(
                message_id = journal::SPOOL,
                rows,
                dropped_rows = total,
                error,
                "DATA LOST: {rows} rows could not be kept (the queue is full and the spool cannot take them: {error}); {total} lost since start"
            );
        }
    }

    /// Rows waiting in the queue.
    pub fn queue_depth(&self) -> u64 {
        self.fill.rows.load(Ordering::Relaxed) as u64
    }

    /// Bytes the rows waiting in the queue hold (about: [`Row::approx_bytes`]).
    pub fn queue_bytes(&self) -> u64 {
        self.fill.bytes.load(Ordering::Relaxed) as u64
    }

    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    /// Time since the last successful write, when rows are waiting (queue or spool).
    pub fn stalled_for(&self) -> Option<Duration> {
        let waiting = self.queue_depth() > 0 || self.stats.spool_bytes.load(Ordering::Relaxed) > 0;
        if !waiting {
            return None;
        }
        let last = Duration::from_millis(self.stats.last_write_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }

    /// Whether received rows are still kept: the last row the spool was offered went in (or
    /// none was refused yet). While the database is away the queue and then the spool keep
    /// capturing; only when the spool refuses rows is data being lost.
    pub fn capturing(&self) -> bool {
        let dropped = self.stats.last_dropped_ms.load(Ordering::Relaxed);
        dropped == 0 || self.stats.last_spooled_ms.load(Ordering::Relaxed) > dropped
    }

    /// Everything received before this moment is committed (the backfill of a gap waits for
    /// its end to be covered, so the stream's own copy of a trade always wins).
    pub fn committed_through(&self) -> chrono::DateTime<chrono::Utc> {
        let idle =
            self.stats.writer_idle.load(Ordering::SeqCst) && self.queue_depth() == 0 && self.stats.spool_bytes.load(Ordering::Relaxed) == 0;
        if idle {
            return crate::clock::now();
        }
        let us = self.stats.committed_through_us.load(Ordering::SeqCst);
        chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
    }

    /// Counts a committed batch of `rows` rows holding `trades` new trades; `through` is the
    /// newest receive time in it.
    pub(super) fn stored(&self, rows: usize, trades: u64, through: Option<chrono::DateTime<chrono::Utc>>) {
        self.stats.trades_inserted.fetch_add(trades, Ordering::Relaxed);
        self.stats.rows_written.fetch_add(rows as u64, Ordering::Relaxed);
        self.stats.last_write_ms.store(self.now_ms(), Ordering::Relaxed);
        self.stats.write_failures_in_a_row.store(0, Ordering::Relaxed);
        if let Some(t) = through {
            self.stats.committed_through_us.fetch_max(t.timestamp_micros(), Ordering::SeqCst);
        }
    }

    /// Up to `max` spooled rows, the offset that consumes them, and whether some of them may
    /// be stored already (a previous run's); `None` when the spool is empty (and then new rows
    /// go to the queue again). The lock the readers take is held only to write out the
    /// spool's buffer and note where to read: the reading is outside it.
    pub(super) fn spool_chunk(&self, max: usize) -> Option<(Vec<Row>, Position, bool)> {
        let mut reader = self.reader.lock().expect("spool reader lock");
        let (plan, maybe_stored, failed) = {
            let mut st = self.state.lock().expect("sink lock");
            if st.spool.is_empty() {
                st.spooling = false;
                return None;
            }
            let (plan, failed) = st.spool.plan();
            (plan, st.spool.reading_inherited(), failed)
        };
        if let Some(e) = failed {
            self.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
            {
                let mut st = self.state.lock().expect("sink lock");
                st.last_error = Some(e.to_string());
                if let SpoolError::Lost { window, .. } = &e {
                    st.losses.merge((**window).clone());
                }
            }
            self.lost(e.rows_lost(), &e.to_string());
        }
        let read = reader.read::<Row>(&plan, max);
        for b in &read.bad {
            tracing::error!(message_id = journal::SPOOL, record = %b, "undecodable spool record skipped");
        }
        self.stats.spool_unreadable.fetch_add(read.bad.len() as u64, Ordering::Relaxed);
        if let Some((segment, e)) = &read.unreadable {
            self.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
            let mut st = self.state.lock().expect("sink lock");
            let bytes = st.spool.set_aside_unreadable(*segment, &format!("segment {segment} cannot be read ({e})"));
            self.stats.spool_unreadable.fetch_add(1, Ordering::Relaxed);
            self.stats.spool_bytes.store(st.spool.pending_bytes(), Ordering::Relaxed);
            tracing::error!(message_id = journal::SPOOL, segment, bytes, error = %e,
                "DATA LOST unless recovered by hand: spool segment {segment} ({bytes} bytes) cannot be read ({e}); set aside, the replay goes on");
        }
        Some((read.rows, read.at, maybe_stored))
    }

    pub(super) fn spool_commit(&self, at: Position) {
        let mut st = self.state.lock().expect("sink lock");
        if let Err(e) = st.spool.commit(at) {
            tracing::error!(message_id = journal::SPOOL, error = %e, "cannot truncate the spool");
        }
        self.stats.spool_bytes.store(st.spool.pending_bytes(), Ordering::Relaxed);
        if st.spool.is_empty() {
            st.spooling = false;
            tracing::info!(message_id = journal::SPOOL, "spool replayed, writing from the queue again");
        }
    }

    /// Flushes the spool to disk (at the stop).
    pub(super) fn sync_spool(&self) {
        let mut st = self.state.lock().expect("sink lock");
        if let Err(e) = st.spool.sync() {
            tracing::error!(message_id = journal::SPOOL, error = %e, "cannot flush the spool to disk: {e}");
        }
    }

    /// Persists rows that could not be written before the process stops.
    pub(super) fn spool_all(&self, rows: Vec<Row>) -> Result<(), SpoolError> {
        let mut st = self.state.lock().expect("sink lock");
        st.spooling = true;
        let result = rows.iter().try_for_each(|r| st.spool.append(r).map(|_| ()));
        self.stats.spool_bytes.store(st.spool.pending_bytes(), Ordering::Relaxed);
        result
    }
}

/// The writer's end of the queue: rows in the groups the readers handed over, counted out of
/// the queue's fill as they are taken.
pub struct QueueRx {
    rx: mpsc::UnboundedReceiver<(Vec<Row>, usize)>,
    fill: Arc<Fill>,
}

impl QueueRx {
    /// The next group of rows; `None` once the queue is closed and empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Vec<Row>> {
        let rows = self.rx.recv().await;
        self.taken(rows)
    }

    /// The next group of rows if one is waiting.
    pub fn try_recv(&mut self) -> Option<Vec<Row>> {
        let rows = self.rx.try_recv().ok();
        self.taken(rows)
    }

    fn taken(&self, rows: Option<(Vec<Row>, usize)>) -> Option<Vec<Row>> {
        let (rows, bytes) = rows?;
        self.fill.sub(rows.len(), bytes);
        Some(rows)
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }

    /// No more rows are taken: the sink spools what comes after.
    pub fn close(&mut self) {
        self.rx.close();
    }
}

impl Sink {
    /// A spool chunk to replay, but only when the queue is empty (queued rows are older than
    /// spooled ones).
    pub(super) fn spool_chunk_if_idle(&self, rx: &mut QueueRx, max: usize) -> Option<(Vec<Row>, Position, bool)> {
        if !rx.is_empty() {
            return None;
        }
        self.spool_chunk(max)
    }
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
