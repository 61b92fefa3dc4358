//! The readers' side of the write path. Socket readers hand rows to the [`Sink`], which never
//! waits: it puts them on a bounded queue for the [`super::writer::Writer`], or — when the
//! queue is full because the database is down or slow — appends them to the on-disk
//! [`Spool`]. Once rows went to the spool, later rows follow them there until it is replayed,
//! so the replay order is the arrival order. A full spool is an ERROR, counted; nothing is
//! dropped silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::spool::{Position, Spool, SpoolError};
use crate::db::stream::Row;
use crate::journal;

/// Counters of the write path (part of the stream's health).
#[derive(Debug, Default)]
pub struct WriteStats {
    pub trades_inserted: AtomicU64,
    pub rows_written: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spooled_rows: AtomicU64,
    /// Rows lost because the spool was full (each one logged at ERROR).
    pub dropped_rows: AtomicU64,
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
    /// Receive time (µs since the epoch) of the newest row committed; with the writer idle
    /// and nothing waiting, everything received is committed.
    pub committed_through_us: std::sync::atomic::AtomicI64,
    /// The writer waits for rows with nothing in hand.
    pub writer_idle: std::sync::atomic::AtomicBool,
    /// Frame received → row committed, per row, in 1 ms buckets (the last: 10 s or more).
    pub commit_latency: LatencyHistogram,
}

/// A fixed histogram of latencies in milliseconds, lock-free.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: (0..=10_000).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl LatencyHistogram {
    pub fn record(&self, ms: u64, count: u64) {
        let i = (ms as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(count, Ordering::Relaxed);
    }

    /// The latency (ms) under which `q` (0..=1) of the recorded rows fall; `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(ms as u64);
            }
        }
        Some(counts.len() as u64 - 1)
    }

    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }
}

struct SinkState {
    spool: Spool,
    /// Once rows went to the spool, later rows follow them there until it is replayed, so the
    /// replay order is the arrival order.
    spooling: bool,
}

/// The readers' side of the write path. Cheap to share; never blocks on the database.
pub struct Sink {
    tx: mpsc::Sender<Row>,
    state: Mutex<SinkState>,
    pub stats: WriteStats,
    epoch: Instant,
}

impl Sink {
    /// A sink with a queue of `capacity` rows and the spool at `spool`, and the receiving end
    /// for the [`Writer`].
    pub fn new(capacity: usize, spool: Spool) -> (std::sync::Arc<Sink>, mpsc::Receiver<Row>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let spooling = !spool.is_empty();
        let bytes = spool.pending_bytes();
        let sink = std::sync::Arc::new(Sink { tx, state: Mutex::new(SinkState { spool, spooling }), stats: WriteStats::default(), epoch: Instant::now() });
        sink.stats.spool_bytes.store(bytes, Ordering::Relaxed);
        (sink, rx)
    }

    /// Hands a row over; never waits.
    pub fn push(&self, row: Row) {
        let mut st = self.state.lock().expect("sink lock");
        let row = if st.spooling {
            row
        } else {
            match self.tx.try_send(row) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(row)) | Err(mpsc::error::TrySendError::Closed(row)) => {
                    st.spooling = true;
                    tracing::warn!(message_id = journal::SPOOL, capacity = self.tx.max_capacity(),
                        "write queue full (database down or slow): spooling rows to disk");
                    row
                }
            }
        };
        match st.spool.append(&row) {
            Ok(()) => {
                self.stats.spooled_rows.fetch_add(1, Ordering::Relaxed);
                self.stats.spool_bytes.store(st.spool.pending_bytes(), Ordering::Relaxed);
                self.stats.last_spooled_ms.store(self.now_ms(), Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.last_dropped_ms.store(self.now_ms(), Ordering::Relaxed);
                let n = self.stats.dropped_rows.fetch_add(1, Ordering::Relaxed) + 1;
                // Loud, but not once per row at 50k rows/s.
                if n.is_power_of_two() {
                    tracing::error!(message_id = journal::SPOOL, error = %e, dropped_rows = n, "DATA LOST: spool cannot take more rows");
                }
            }
        }
    }

    /// Rows waiting in the queue.
    pub fn queue_depth(&self) -> u64 {
        (self.tx.max_capacity() - self.tx.capacity()) as u64
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
        let idle = self.stats.writer_idle.load(Ordering::SeqCst)
            && self.queue_depth() == 0
            && self.stats.spool_bytes.load(Ordering::Relaxed) == 0;
        if idle {
            return chrono::Utc::now();
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

    /// Up to `max` spooled rows and the offset that consumes them; `None` when the spool is
    /// empty (and then new rows go to the queue again).
    pub(super) fn spool_chunk(&self, max: usize) -> Option<(Vec<Row>, Position)> {
        let mut st = self.state.lock().expect("sink lock");
        if st.spool.is_empty() {
            st.spooling = false;
            return None;
        }
        match st.spool.peek::<Row>(max) {
            Ok((rows, at, bad)) => {
                for b in bad {
                    tracing::error!(message_id = journal::SPOOL, line = %b, "undecodable spool line skipped");
                }
                Some((rows, at))
            }
            Err(e) => {
                tracing::error!(message_id = journal::SPOOL, error = %e, "cannot read the spool");
                None
            }
        }
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
        for r in &rows {
            st.spool.append(r)?;
        }
        self.stats.spool_bytes.store(st.spool.pending_bytes(), Ordering::Relaxed);
        Ok(())
    }
}

impl Sink {
    /// A spool chunk to replay, but only when the queue is empty (queued rows are older than
    /// spooled ones).
    pub(super) fn spool_chunk_if_idle(&self, rx: &mut mpsc::Receiver<Row>, max: usize) -> Option<(Vec<Row>, Position)> {
        if !rx.is_empty() {
            return None;
        }
        self.spool_chunk(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.99), None);
        h.record(5, 98);
        h.record(40, 1);
        h.record(20_000, 1);
        assert_eq!(h.quantile(0.5), Some(5));
        assert_eq!(h.quantile(0.99), Some(40));
        assert_eq!(h.quantile(1.0), Some(10_000));
    }
}

