//! The stream's write path. Socket readers hand rows to a [`Sink`], which never waits: it
//! puts them on a bounded queue, or — when the queue is full because the database is down or
//! slow — appends them to the on-disk [`Spool`]. One [`Writer`] takes rows off the queue in
//! batches and stores each batch in one transaction with binary `COPY` into temporary tables
//! and `INSERT … ON CONFLICT DO NOTHING` (so a row written twice is stored once); when the
//! queue is empty it replays the spool in order. A failed batch is kept and retried; nothing is
//! dropped silently (a full spool is an ERROR, counted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_util::sync::CancellationToken;

use super::books::{self, BookSource};
use super::spool::{Spool, SpoolError};
use super::Pool;
use crate::daemon::journal;
use crate::polymarket::clob::Book;
use crate::polymarket::client::error_chain;
use crate::polymarket::ws::{Lifecycle, LevelChange, Quote, TickSizeChange, Trade};

/// Where a trade row came from (`trades.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TradeSource {
    Ws,
    Backfill,
}

/// One row for the database, with its local receive time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Row {
    Trade { trade: Trade, received_at: DateTime<Utc>, source: TradeSource },
    Book { book: Book, received_at: DateTime<Utc> },
    PriceChange { change: LevelChange, condition_id: Option<String>, source_ts: DateTime<Utc>, received_at: DateTime<Utc> },
    Quote { quote: Quote, received_at: DateTime<Utc> },
    TickSize { change: TickSizeChange, received_at: DateTime<Utc> },
    Lifecycle { event: Lifecycle, received_at: DateTime<Utc> },
    Quarantine { connection: Option<i32>, reason: String, frame: String, received_at: DateTime<Utc> },
}

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
    /// Last successful write, ms since the sink was made (0: none yet).
    pub last_write_ms: AtomicU64,
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
    pub fn new(capacity: usize, spool: Spool) -> (Arc<Sink>, mpsc::Receiver<Row>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let spooling = !spool.is_empty();
        let bytes = spool.pending_bytes();
        let sink = Arc::new(Sink { tx, state: Mutex::new(SinkState { spool, spooling }), stats: WriteStats::default(), epoch: Instant::now() });
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
            }
            Err(e) => {
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

    /// Time since the last successful write, when rows are waiting (queue or spool).
    pub fn stalled_for(&self) -> Option<Duration> {
        let waiting = self.queue_depth() > 0 || self.stats.spool_bytes.load(Ordering::Relaxed) > 0;
        if !waiting {
            return None;
        }
        let last = Duration::from_millis(self.stats.last_write_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }

    /// Counts a committed batch of `rows` rows holding `trades` new trades.
    fn stored(&self, rows: usize, trades: u64) {
        self.stats.trades_inserted.fetch_add(trades, Ordering::Relaxed);
        self.stats.rows_written.fetch_add(rows as u64, Ordering::Relaxed);
        self.stats.last_write_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Up to `max` spooled rows and the offset that consumes them; `None` when the spool is
    /// empty (and then new rows go to the queue again).
    fn spool_chunk(&self, max: usize) -> Option<(Vec<Row>, u64)> {
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

    fn spool_commit(&self, at: u64) {
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

    /// Persists rows that could not be written before the process stops.
    fn spool_all(&self, rows: Vec<Row>) -> Result<(), SpoolError> {
        let mut st = self.state.lock().expect("sink lock");
        st.spooling = true;
        for r in &rows {
            st.spool.append(r)?;
        }
        self.stats.spool_bytes.store(st.spool.pending_bytes(), Ordering::Relaxed);
        Ok(())
    }
}

/// Takes rows off the queue and stores them.
pub struct Writer {
    pub pool: Pool,
    pub rx: mpsc::Receiver<Row>,
    pub sink: Arc<Sink>,
    /// Rows per transaction. Default 5000.
    pub batch_size: usize,
    /// Longest wait to fill a batch. Default 50 ms.
    pub flush_interval: Duration,
}

impl Writer {
    /// Runs until `cancel`, then drains the queue (and spool) for at most `grace`; rows still
    /// unwritten then are spooled for the next run.
    pub async fn run(mut self, cancel: CancellationToken, grace: Duration) {
        let mut batch: Vec<Row> = Vec::new();
        let mut from_spool: Option<u64> = None;
        let mut failures = 0u32;
        loop {
            if batch.is_empty() {
                if let Some((rows, at)) = self.sink.spool_chunk_if_idle(&mut self.rx, self.batch_size) {
                    batch = rows;
                    from_spool = Some(at);
                } else {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        r = self.rx.recv() => match r {
                            Some(row) => batch.push(row),
                            None => break,
                        },
                        _ = tokio::time::sleep(self.flush_interval) => continue,
                    }
                    let deadline = Instant::now() + self.flush_interval;
                    while batch.len() < self.batch_size {
                        match self.rx.try_recv() {
                            Ok(row) => batch.push(row),
                            Err(_) if Instant::now() < deadline && batch.len() < self.batch_size / 10 => {
                                tokio::select! {
                                    _ = tokio::time::sleep_until(deadline) => break,
                                    r = self.rx.recv() => match r { Some(row) => batch.push(row), None => break },
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
                    if failures > 0 {
                        tracing::info!(message_id = journal::SPOOL, failures, "database writes resumed");
                        failures = 0;
                    }
                }
                Err(e) => {
                    self.sink.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5));
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
        self.drain(batch, from_spool.is_some(), grace).await;
    }

    /// The stop: write what is queued within `grace`, spool the rest.
    async fn drain(mut self, mut batch: Vec<Row>, batch_is_spooled: bool, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.rx.close();
        if batch_is_spooled {
            // Those rows are still in the spool file (not committed): drop the copy.
            batch.clear();
        }
        while let Ok(row) = self.rx.try_recv() {
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

impl Sink {
    /// A spool chunk to replay, but only when the queue is empty (queued rows are older than
    /// spooled ones).
    fn spool_chunk_if_idle(&self, rx: &mut mpsc::Receiver<Row>, max: usize) -> Option<(Vec<Row>, u64)> {
        if !rx.is_empty() {
            return None;
        }
        self.spool_chunk(max)
    }
}

/// Records, per row, the time from its frame's arrival to now (just committed).
fn record_latency(h: &LatencyHistogram, rows: &[Row]) {
    let now = Utc::now();
    let mut last: Option<(DateTime<Utc>, u64)> = None;
    for r in rows {
        let received = match r {
            Row::Trade { received_at, .. }
            | Row::Book { received_at, .. }
            | Row::PriceChange { received_at, .. }
            | Row::Quote { received_at, .. }
            | Row::TickSize { received_at, .. }
            | Row::Lifecycle { received_at, .. }
            | Row::Quarantine { received_at, .. } => *received_at,
        };
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

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}", error_chain(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("timed out waiting for a database connection")]
    PoolTimeout,
}

impl From<bb8::RunError<tokio_postgres::Error>> for WriteError {
    fn from(e: bb8::RunError<tokio_postgres::Error>) -> Self {
        match e {
            bb8::RunError::User(e) => WriteError::Db(e),
            bb8::RunError::TimedOut => WriteError::PoolTimeout,
        }
    }
}

/// Stores one batch in one transaction; returns the number of new trades.
pub async fn write_batch(pool: &Pool, rows: &[Row]) -> Result<u64, WriteError> {
    let mut trades = Vec::new();
    let mut changes = Vec::new();
    let mut books_ = Vec::new();
    let mut quotes = Vec::new();
    let mut ticks = Vec::new();
    let mut lifecycle = Vec::new();
    let mut quarantine = Vec::new();
    for r in rows {
        match r {
            Row::Trade { .. } => trades.push(r),
            Row::PriceChange { .. } => changes.push(r),
            Row::Book { book, received_at } => books_.push((book.clone(), *received_at)),
            Row::Quote { .. } => quotes.push(r),
            Row::TickSize { .. } => ticks.push(r),
            Row::Lifecycle { .. } => lifecycle.push(r),
            Row::Quarantine { .. } => quarantine.push(r),
        }
    }
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let mut new_trades = 0;
    if !trades.is_empty() {
        new_trades = write_trades(&tx, &trades).await?;
    }
    if !changes.is_empty() {
        copy_rows(&tx, &PRICE_CHANGES, &changes).await?;
    }
    if !quotes.is_empty() {
        copy_rows(&tx, &QUOTES, &quotes).await?;
    }
    if !ticks.is_empty() {
        copy_rows(&tx, &TICKS, &ticks).await?;
    }
    if !quarantine.is_empty() {
        copy_rows(&tx, &QUARANTINE, &quarantine).await?;
    }
    if !lifecycle.is_empty() {
        copy_rows(&tx, &LIFECYCLE, &lifecycle).await?;
        apply_lifecycle(&tx, &lifecycle).await?;
    }
    for chunk in books_.chunks(500) {
        books::insert_snapshots(&tx, chunk, BookSource::Ws).await?;
    }
    tx.commit().await?;
    Ok(new_trades)
}

/// Trades: stream rows are almost never duplicates, so they are copied straight into
/// `trades` under a savepoint; a unique violation (a replayed row) falls back to the
/// idempotent path through the temporary table, as do backfilled rows always.
async fn write_trades(tx: &tokio_postgres::Transaction<'_>, rows: &[&Row]) -> Result<u64, tokio_postgres::Error> {
    let all_ws = rows.iter().all(|r| matches!(r, Row::Trade { source: TradeSource::Ws, .. }));
    if all_ws {
        tx.batch_execute("SAVEPOINT direct_trades").await?;
        let sink = tx.copy_in(&format!("COPY trades ({}) FROM STDIN (FORMAT binary)", TRADES.columns)).await?;
        let result = async {
            let writer = BinaryCopyInWriter::new(sink, TRADES.types);
            pin_mut!(writer);
            // The hot path: fields borrowed straight from the rows, no allocation per row.
            for r in rows {
                let Row::Trade { trade: t, received_at, source } = r else { continue };
                let src = match source { TradeSource::Ws => "ws", TradeSource::Backfill => "backfill" };
                writer
                    .as_mut()
                    .write(&[&t.asset_id, &t.condition_id, &t.price, &t.size, &t.side, &t.source_ts, received_at, &src, &t.tx_hash, &t.fee_rate_bps])
                    .await?;
            }
            writer.finish().await
        }
        .await;
        match result {
            Ok(n) => {
                tx.batch_execute("RELEASE SAVEPOINT direct_trades").await?;
                return Ok(n);
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT direct_trades").await?;
            }
            Err(e) => return Err(e),
        }
    }
    copy_rows(tx, &TRADES, rows).await
}

/// A table written through a temporary table: binary COPY in, then insert what is new.
struct CopyTarget {
    temp: &'static str,
    create: &'static str,
    columns: &'static str,
    types: &'static [Type],
    insert: &'static str,
    fields: fn(&Row) -> Vec<Box<dyn ToSql + Sync + Send>>,
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

async fn copy_rows(tx: &tokio_postgres::Transaction<'_>, target: &CopyTarget, rows: &[&Row]) -> Result<u64, tokio_postgres::Error> {
    tx.batch_execute(target.create).await?;
    let sink = tx.copy_in(&format!("COPY {} ({}) FROM STDIN (FORMAT binary)", target.temp, target.columns)).await?;
    let writer = BinaryCopyInWriter::new(sink, target.types);
    pin_mut!(writer);
    for r in rows {
        let values = (target.fields)(r);
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect();
        writer.as_mut().write(&refs).await?;
    }
    writer.finish().await?;
    tx.execute(target.insert, &[]).await
}

fn boxed<T: ToSql + Sync + Send + 'static>(v: T) -> Box<dyn ToSql + Sync + Send> {
    Box::new(v)
}

const TRADES: CopyTarget = CopyTarget {
    temp: "t_trades",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_trades (asset_id text, condition_id text, price numeric,
        size numeric, side text, source_ts timestamptz, received_at timestamptz, source text,
        tx_hash text, fee_rate_bps numeric) ON COMMIT DELETE ROWS",
    columns: "asset_id, condition_id, price, size, side, source_ts, received_at, source, tx_hash, fee_rate_bps",
    types: &[Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC, Type::TEXT, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT, Type::NUMERIC],
    // Backfilled rows also skip fills the stream already holds under its own timestamp
    // (the Data API reports block time in seconds, the stream match time in milliseconds).
    insert: "INSERT INTO trades (asset_id, condition_id, price, size, side, source_ts, received_at, source, tx_hash, fee_rate_bps)
        SELECT DISTINCT ON (asset_id, source_ts, side, price, size, COALESCE(tx_hash, '')) * FROM t_trades n
        WHERE n.source = 'ws' OR n.tx_hash IS NULL OR NOT EXISTS (
            SELECT 1 FROM trades o WHERE o.tx_hash = n.tx_hash AND o.asset_id = n.asset_id
              AND o.side = n.side AND o.size = n.size)
        ON CONFLICT DO NOTHING",
    fields: |r| match r {
        Row::Trade { trade: t, received_at, source } => vec![
            boxed(t.asset_id.clone()), boxed(t.condition_id.clone()), boxed(t.price), boxed(t.size),
            boxed(t.side.clone()), boxed(t.source_ts), boxed(*received_at),
            boxed(match source { TradeSource::Ws => "ws", TradeSource::Backfill => "backfill" }.to_string()),
            boxed(t.tx_hash.clone()), boxed(t.fee_rate_bps),
        ],
        _ => unreachable!("grouped by kind"),
    },
};

const PRICE_CHANGES: CopyTarget = CopyTarget {
    temp: "t_price_changes",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_price_changes (asset_id text, condition_id text,
        price numeric, size numeric, side text, hash text, best_bid numeric, best_ask numeric,
        source_ts timestamptz, received_at timestamptz) ON COMMIT DELETE ROWS",
    columns: "asset_id, condition_id, price, size, side, hash, best_bid, best_ask, source_ts, received_at",
    types: &[Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC, Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ],
    insert: "INSERT INTO price_changes SELECT * FROM t_price_changes ON CONFLICT DO NOTHING",
    fields: |r| match r {
        Row::PriceChange { change: c, condition_id, source_ts, received_at } => vec![
            boxed(c.asset_id.clone()), boxed(condition_id.clone()), boxed(c.price), boxed(c.size),
            boxed(c.side.clone()), boxed(c.hash.clone()), boxed(c.best_bid), boxed(c.best_ask),
            boxed(*source_ts), boxed(*received_at),
        ],
        _ => unreachable!("grouped by kind"),
    },
};

const QUOTES: CopyTarget = CopyTarget {
    temp: "t_quotes",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_quotes (asset_id text, condition_id text, best_bid numeric,
        best_ask numeric, spread numeric, source_ts timestamptz, received_at timestamptz) ON COMMIT DELETE ROWS",
    columns: "asset_id, condition_id, best_bid, best_ask, spread, source_ts, received_at",
    types: &[Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC, Type::NUMERIC, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ],
    insert: "INSERT INTO quotes SELECT DISTINCT ON (asset_id, source_ts) * FROM t_quotes ON CONFLICT DO NOTHING",
    fields: |r| match r {
        Row::Quote { quote: q, received_at } => vec![
            boxed(q.asset_id.clone()), boxed(q.condition_id.clone()), boxed(q.best_bid), boxed(q.best_ask),
            boxed(q.spread), boxed(q.source_ts), boxed(*received_at),
        ],
        _ => unreachable!("grouped by kind"),
    },
};

const TICKS: CopyTarget = CopyTarget {
    temp: "t_ticks",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_ticks (asset_id text, condition_id text, old_tick_size numeric,
        new_tick_size numeric, source_ts timestamptz, received_at timestamptz) ON COMMIT DELETE ROWS",
    columns: "asset_id, condition_id, old_tick_size, new_tick_size, source_ts, received_at",
    types: &[Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ],
    insert: "INSERT INTO tick_size_changes SELECT DISTINCT ON (asset_id, source_ts) * FROM t_ticks ON CONFLICT DO NOTHING",
    fields: |r| match r {
        Row::TickSize { change: c, received_at } => vec![
            boxed(c.asset_id.clone()), boxed(c.condition_id.clone()), boxed(c.old_tick_size),
            boxed(c.new_tick_size), boxed(c.source_ts), boxed(*received_at),
        ],
        _ => unreachable!("grouped by kind"),
    },
};

const LIFECYCLE: CopyTarget = CopyTarget {
    temp: "t_market_events",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_market_events (kind text, condition_id text, market_id text,
        source_ts timestamptz, received_at timestamptz, payload jsonb) ON COMMIT DELETE ROWS",
    columns: "kind, condition_id, market_id, source_ts, received_at, payload",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::JSONB],
    insert: "INSERT INTO market_events SELECT DISTINCT ON (kind, condition_id, source_ts) * FROM t_market_events
        WHERE condition_id IS NOT NULL ON CONFLICT DO NOTHING",
    fields: |r| match r {
        Row::Lifecycle { event: e, received_at } => vec![
            boxed(e.kind.clone()), boxed(e.condition_id.clone()), boxed(e.market_id.clone()),
            boxed(e.source_ts), boxed(*received_at), boxed(e.payload.clone()),
        ],
        _ => unreachable!("grouped by kind"),
    },
};

const QUARANTINE: CopyTarget = CopyTarget {
    temp: "t_quarantine",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_quarantine (received_at timestamptz, connection int4,
        reason text, frame text) ON COMMIT DELETE ROWS",
    columns: "received_at, connection, reason, frame",
    types: &[Type::TIMESTAMPTZ, Type::INT4, Type::TEXT, Type::TEXT],
    insert: "INSERT INTO stream_quarantine (received_at, connection, reason, frame) SELECT * FROM t_quarantine",
    fields: |r| match r {
        Row::Quarantine { connection, reason, frame, received_at } => vec![
            boxed(*received_at), boxed(*connection), boxed(reason.clone()), boxed(frame.clone()),
        ],
        _ => unreachable!("grouped by kind"),
    },
};

/// `new_market` registers the market and its tokens (so the stream and the books poller see
/// them before the next catalog pass); `market_resolved` closes and resolves the market.
async fn apply_lifecycle(tx: &tokio_postgres::Transaction<'_>, rows: &[&Row]) -> Result<(), tokio_postgres::Error> {
    for r in rows {
        let Row::Lifecycle { event: e, .. } = r else { continue };
        let Some(cond) = &e.condition_id else { continue };
        match e.kind.as_str() {
            "new_market" => {
                let Some(id) = &e.market_id else { continue };
                let question = crate::polymarket::decode::string(&e.payload, "question");
                let slug = crate::polymarket::decode::string(&e.payload, "slug");
                tx.execute(
                    "INSERT INTO markets (id, condition_id, question, slug, active, closed) VALUES ($1, $2, $3, $4, true, false)
                     ON CONFLICT (id) DO NOTHING",
                    &[id, cond, &question, &slug],
                )
                .await?;
                let outcomes = crate::polymarket::decode::string_array(&e.payload, "outcomes").ok().flatten().unwrap_or_default();
                for (i, token) in e.assets.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO tokens (token_id, condition_id, market_id, outcome, outcome_index) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (token_id) DO NOTHING",
                        &[token, cond, id, &outcomes.get(i), &(i as i32)],
                    )
                    .await?;
                }
            }
            "market_resolved" => {
                tx.execute(
                    "UPDATE markets SET resolved = true, closed = true,
                        winning_outcome_index = COALESCE((SELECT outcome_index FROM tokens WHERE token_id = $2), winning_outcome_index)
                     WHERE condition_id = $1",
                    &[cond, &e.winning_asset_id],
                )
                .await?;
            }
            _ => {}
        }
    }
    Ok(())
}

