//! The live market stream ("trade listener"): a sharded pool of CLOB market WebSocket
//! connections recording every trade, book, level change and lifecycle event.
//!
//! [`spawn`] starts it and returns the [`StreamHandle`], which owns every task; the data flows
//! through the modules in this order:
//!
//! - `mod.rs` (this file): the handle and the manager — the subscription set from the catalog,
//!   kept current; assets sharded over connections opened gradually; shards restarted (by the
//!   supervisor's decision, [`Restarts`]) when their task panics, their assets covered by a gap
//!   meanwhile; start and stop gaps.
//! - [`shard`]: one connection: protocol, PING, reconnects, per-connection gaps; the stall
//!   decisions are the state machines of [`watch`]; in-memory books in [`book`]; values
//!   outside their domain quarantined by [`domain`].
//! - [`sink`]: readers hand rows to it without waiting: a bounded queue, or the on-disk
//!   [`spool`] when the queue is full.
//! - [`writer`]: batches off the queue (and the spool) into `db::stream::write_batch`.
//! - [`gaps`]: gap rows (`db::gaps`) and the Data API backfill.

pub mod book;
pub mod domain;
pub mod gaps;
pub mod shard;
pub mod sink;
pub mod spool;
pub mod spool_format;
pub mod watch;
pub mod writer;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use self::gaps::{GapEvent, GapReason};
use self::shard::{Shard, ShardCmd, ShardShared};
use self::sink::Sink;
use self::spool::{Spool, SpoolError};
use self::writer::{Stop, Writer};
use super::Restarts;
use crate::config::StreamConfig;
use crate::db::catalog::{self, StreamScope};
use crate::db::partitions;
use crate::db::{DbError, Pool};
use crate::fault::{self, Fault};
use crate::polymarket::client::PolymarketClient;

/// The supervisor's name for the stream's tasks (shards, writer, gap recorder, backfill).
pub const TASK_NAME: &str = "stream";
/// The longest wait for the first connections before READY.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Counters of the stream.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub events_received: AtomicU64,
    pub trades_received: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_total: AtomicU64,
    pub assets_subscribed: AtomicU64,
    pub reconnects: AtomicU64,
    pub stalls: AtomicU64,
    pub quarantined: AtomicU64,
    pub gaps: AtomicU64,
    /// Level changes not applied because the asset had no fresh book since a reconnect.
    pub withheld: AtomicU64,
    /// Level changes after which the local book disagreed with upstream's top of book.
    pub book_divergences: AtomicU64,
    /// Stream tasks (shards, writer, gap recorder, backfill) restarted after a panic.
    pub task_restarts: AtomicU64,
    /// Gaps whose backfill completed (done or partial).
    pub gaps_backfilled: AtomicU64,
}

/// The stream's health at one instant (`trade_listener` in `collector status --json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TradeListenerHealth {
    pub trades_received: u64,
    pub trades_inserted: u64,
    pub connections_active: u64,
    pub connections_total: u64,
    pub queue_depth: u64,
    pub spool_bytes: u64,
    pub gaps: u64,
    pub reconnects: u64,
    pub stalls: u64,
    pub quarantined: u64,
    pub assets_subscribed: u64,
    pub events_received: u64,
    /// Level changes not stored: no fresh book since a reconnect.
    pub withheld_changes: u64,
    /// Level changes after which the local book disagreed with upstream's top of book.
    pub book_divergences: u64,
    pub rows_written: u64,
    pub write_errors: u64,
    /// Rows lost because the spool was full.
    pub dropped_rows: u64,
    /// Stream tasks restarted after a panic.
    #[serde(default)]
    pub task_restarts: u64,
    /// Rows that went to the spool (the queue was full).
    #[serde(default)]
    pub spooled_rows: u64,
    /// Rows replayed from the spool into the database.
    #[serde(default)]
    pub replayed_rows: u64,
    /// Failed writes since the last success: a stuck writer shows here at a glance.
    #[serde(default)]
    pub write_failures_in_a_row: u64,
    /// Rows the database refused for their content, quarantined instead.
    #[serde(default)]
    pub poisoned_rows: u64,
    /// Gaps whose backfill completed (done or partial).
    #[serde(default)]
    pub gaps_backfilled: u64,
    /// Frame received → row committed, median and 99th percentile since start (ms).
    #[serde(default)]
    pub commit_latency_p50_ms: Option<u64>,
    #[serde(default)]
    pub commit_latency_p99_ms: Option<u64>,
}

/// A market listed or resolved, seen on the stream.
#[derive(Debug, Clone)]
pub enum Lifecycle {
    Listed(Vec<String>),
    Resolved(Vec<String>),
}

/// What every shard shares.
pub struct StreamCtx {
    pub cfg: StreamConfig,
    pub ws_url: Url,
    /// Longest handshake `Retry-After` honoured.
    pub retry_after_max: Duration,
    pub sink: Arc<Sink>,
    pub stats: Arc<StreamStats>,
    gap_tx: mpsc::Sender<GapEvent>,
    lifecycle_tx: mpsc::Sender<Lifecycle>,
}

impl StreamCtx {
    fn send_gap(&self, e: GapEvent) {
        if let Err(e) = self.gap_tx.try_send(e) {
            tracing::error!(error = %e, "gap queue full: a gap event was not recorded");
        }
    }

    fn lifecycle(&self, l: Lifecycle) {
        let _ = self.lifecycle_tx.try_send(l);
    }
}

/// The stream's health and liveness, for the health loop and `collector status`.
pub struct StreamMonitor {
    pub stats: Arc<StreamStats>,
    pub sink: Arc<Sink>,
    /// The writer counts as stuck when rows wait longer than this.
    pub stall_timeout: Duration,
}

impl StreamMonitor {
    pub fn snapshot(&self) -> TradeListenerHealth {
        let s = &self.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TradeListenerHealth {
            trades_received: g(&s.trades_received),
            trades_inserted: g(&self.sink.stats.trades_inserted),
            connections_active: g(&s.connections_active),
            connections_total: g(&s.connections_total),
            queue_depth: self.sink.queue_depth(),
            spool_bytes: g(&self.sink.stats.spool_bytes),
            gaps: g(&s.gaps),
            reconnects: g(&s.reconnects),
            stalls: g(&s.stalls),
            quarantined: g(&s.quarantined),
            assets_subscribed: g(&s.assets_subscribed),
            events_received: g(&s.events_received),
            withheld_changes: g(&s.withheld),
            book_divergences: g(&s.book_divergences),
            rows_written: g(&self.sink.stats.rows_written),
            write_errors: g(&self.sink.stats.write_errors),
            dropped_rows: g(&self.sink.stats.dropped_rows),
            task_restarts: g(&s.task_restarts),
            spooled_rows: g(&self.sink.stats.spooled_rows),
            replayed_rows: g(&self.sink.stats.replayed_rows),
            write_failures_in_a_row: g(&self.sink.stats.write_failures_in_a_row),
            poisoned_rows: g(&self.sink.stats.poisoned_rows),
            gaps_backfilled: g(&s.gaps_backfilled),
            commit_latency_p50_ms: self.sink.stats.commit_latency.quantile(0.5),
            commit_latency_p99_ms: self.sink.stats.commit_latency.quantile(0.99),
        }
    }

    /// `Some(reason)` when the stream neither stores nor keeps what it receives: the writer
    /// has stored nothing for `stall_timeout` while rows wait, and the spool refuses rows. A
    /// database outage the queue and the spool absorb is not a stall: the daemon captures.
    pub fn stalled(&self) -> Option<String> {
        let stuck = self.sink.stalled_for().filter(|d| *d > self.stall_timeout)?;
        (!self.sink.capturing())
            .then(|| format!("stream writer has stored nothing for {}s and the spool refuses rows (data is being lost)", stuck.as_secs()))
    }
}

/// What the stream is started with.
pub struct StreamDeps {
    pub cfg: StreamConfig,
    pub ws_url: Url,
    pub retry_after_max: Duration,
    pub pool: Pool,
    pub client: Arc<PolymarketClient>,
    /// Decides restarts of panicked tasks (the daemon's supervisor).
    pub restarts: Arc<dyn Restarts>,
    /// How long the writer drains at the stop before spooling the rest.
    pub drain_grace: Duration,
    /// The writer counts as stuck when rows wait longer than this.
    pub stall_timeout: Duration,
    /// The test-only fault spec (see [`crate::fault`]).
    pub fault_spec: Option<String>,
}

/// The running stream. Dropping it ends every task.
pub struct StreamHandle {
    monitor: Arc<StreamMonitor>,
    /// The settings that apply live (scope, retention): see [`StreamHandle::reconfigure`].
    live: tokio::sync::watch::Sender<StreamConfig>,
    ready: Option<oneshot::Receiver<()>>,
    manager_cancel: CancellationToken,
    writer_stop: Stop,
    manager: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

/// Why the stream cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("stream spool: {0} (set stream.spool_dir to a writable directory)")]
    Spool(#[from] SpoolError),
    #[error("reading the database identity for the spool: {0}")]
    Db(#[from] DbError),
}

/// The days kept of each partitioned stream table.
fn retention(cfg: &StreamConfig) -> partitions::Retention {
    partitions::Retention { level_changes: cfg.retention_days, trades: cfg.trades_retention_days, quotes: cfg.quotes_retention_days }
}

/// Starts the stream: the writer (with the spool, bound to this database), the manager, its
/// shards and helpers.
pub async fn spawn(deps: StreamDeps) -> Result<StreamHandle, StartError> {
    let database = crate::db::identity(&deps.pool).await?;
    // Today's partitions (and the days around) exist before the first row.
    partitions::maintain(&deps.pool, retention(&deps.cfg)).await?;
    let spool = Spool::open(&deps.cfg.spool_dir, deps.cfg.spool_max_bytes, &database)?;
    let (sink, rx) = Sink::new(deps.cfg.queue_capacity, spool);
    let stats = Arc::new(StreamStats::default());
    let monitor = Arc::new(StreamMonitor { stats: stats.clone(), sink: sink.clone(), stall_timeout: deps.stall_timeout });
    let writer_stop = Stop::default();
    let writer = Writer {
        pool: deps.pool.clone(),
        rx: Arc::new(Mutex::new(rx)),
        sink: sink.clone(),
        batch_size: deps.cfg.batch_size,
        flush_interval: deps.cfg.flush_interval,
        poison_file: deps.cfg.spool_dir.join("poison.jsonl"),
        keys: Arc::default(),
    };
    let (grace, ws) = (deps.drain_grace, writer_stop.clone());
    let writer = tokio::spawn(supervised("writer", deps.restarts.clone(), stats.clone(), writer_stop.cancel.clone(), move || {
        writer.clone().run(ws.clone(), grace)
    }));
    let manager_cancel = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (live_tx, live_rx) = tokio::sync::watch::channel(deps.cfg.clone());
    let manager = Manager {
        live: live_rx,
        fault: fault::for_task(deps.fault_spec.as_deref(), "shard"),
        deps,
        sink,
        stats,
        shards: Vec::new(),
        owner: HashMap::new(),
        running: JoinSet::new(),
        running_ids: HashMap::new(),
    };
    let manager = tokio::spawn(manager.run(manager_cancel.clone(), ready_tx));
    Ok(StreamHandle {
        monitor,
        live: live_tx,
        ready: Some(ready_rx),
        manager_cancel,
        writer_stop,
        manager: Some(manager),
        writer: Some(writer),
    })
}

impl StreamHandle {
    /// Resolves once the first connections are up (at most 30 s after the subscription set is
    /// known, or at once when nothing is in scope yet).
    pub async fn ready(&mut self) {
        if let Some(r) = self.ready.take() {
            let _ = r.await;
        }
    }

    /// Applies the settings that can change live — the scope (`token_ids`, `tag_slugs`,
    /// `min_volume_24h`, `min_liquidity`) and the retentions (`retention_days`,
    /// `trades_retention_days`, `quotes_retention_days`) — at once (the subscription
    /// set is recomputed now). Other stream settings need a restart.
    pub fn reconfigure(&self, cfg: &StreamConfig) {
        self.live.send_modify(|live| {
            live.token_ids = cfg.token_ids.clone();
            live.tag_slugs = cfg.tag_slugs.clone();
            live.min_volume_24h = cfg.min_volume_24h;
            live.min_liquidity = cfg.min_liquidity;
            live.retention_days = cfg.retention_days;
            live.trades_retention_days = cfg.trades_retention_days;
            live.quotes_retention_days = cfg.quotes_retention_days;
        });
    }

    pub fn monitor(&self) -> Arc<StreamMonitor> {
        self.monitor.clone()
    }

    pub fn health(&self) -> TradeListenerHealth {
        self.monitor.snapshot()
    }

    /// `Some(reason)` when the writer makes no progress (see [`StreamMonitor::stalled`]).
    pub fn stalled(&self) -> Option<String> {
        self.monitor.stalled()
    }

    /// Resolves if the manager or the writer ends before [`StreamHandle::stop`] (a bug, or
    /// the restart budget spent): the reason.
    pub async fn failed(&mut self) -> String {
        tokio::select! {
            r = async { self.manager.as_mut().expect("guarded").await }, if self.manager.is_some() => {
                self.manager = None;
                format!("stream manager ended unexpectedly: {r:?}")
            }
            r = async { self.writer.as_mut().expect("guarded").await }, if self.writer.is_some() => {
                self.writer = None;
                format!("stream writer ended unexpectedly: {r:?}")
            }
            else => std::future::pending().await,
        }
    }

    /// The stop: the planned gap, connections closed, then the writer stores what the readers
    /// accepted until `deadline` and spools the rest. The writer's own deadline is the stop
    /// deadline, and spooling is local: this waits for it (a few seconds past `deadline` at
    /// most), so everything received is committed or spooled before it returns.
    pub async fn stop(mut self, deadline: Instant) {
        self.manager_cancel.cancel();
        if let Some(m) = self.manager.take() {
            // Leave the writer time of its own: the shards stop within seconds.
            let manager_deadline = deadline.min(Instant::now() + Duration::from_secs(10));
            let _ = tokio::time::timeout_at(manager_deadline, m).await;
        }
        self.writer_stop.stop_by(deadline);
        if let Some(w) = self.writer.take() {
            if tokio::time::timeout_at(deadline + SPOOL_TIME, w).await.is_err() {
                tracing::error!("the stream writer did not finish spooling in time: rows it held may be lost");
            }
        }
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.manager_cancel.cancel();
        self.writer_stop.cancel.cancel();
    }
}

/// How long past the stop deadline the writer may take to spool what it holds.
const SPOOL_TIME: Duration = Duration::from_secs(10);

/// Compacts the partitions of closed days (`partitions::compact_closed`): at start, then
/// hourly, beside the stream (a rebuild may take minutes and blocks no write).
async fn compact_partitions(pool: Pool, cancel: CancellationToken) {
    loop {
        let pass = partitions::compact_closed(&pool, Utc::now().date_naive());
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = pass => r,
        };
        match result {
            Ok(done) => {
                for c in done {
                    tracing::info!(partition = %c.partition, indexes = c.indexes, bytes_before = c.bytes_before, bytes_after = c.bytes_after,
                        "compacted the closed partition {}: its indexes {} → {} bytes", c.partition, c.bytes_before, c.bytes_after);
                }
            }
            Err(e) => tracing::warn!(error = %e, "partition compaction failed, retrying in an hour: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// Runs a helper task, restarting it after a panic for as long as the supervisor allows.
async fn supervised<F, Fut>(
    name: &'static str,
    restarts: Arc<dyn Restarts>,
    stats: Arc<StreamStats>,
    cancel: CancellationToken,
    mut make: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let err = match tokio::spawn(make()).await {
            Err(e) if e.is_panic() => panic_text(e),
            _ => return,
        };
        stats.task_restarts.fetch_add(1, Ordering::Relaxed);
        let Some(delay) = restarts.died(TASK_NAME, &format!("stream {name} panicked: {err}")) else { return };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into()),
        Err(e) => e.to_string(),
    }
}

/// The manager's view of one shard.
struct ShardHandle {
    tx: mpsc::Sender<ShardCmd>,
    assets: HashSet<String>,
    shared: Arc<ShardShared>,
}

/// The pool manager: owns the shards and the helper tasks.
struct Manager {
    deps: StreamDeps,
    /// The live settings (scope, retention), changed by a reload.
    live: tokio::sync::watch::Receiver<StreamConfig>,
    sink: Arc<Sink>,
    stats: Arc<StreamStats>,
    fault: Option<Fault>,
    shards: Vec<ShardHandle>,
    owner: HashMap<String, usize>,
    /// The shards' tasks, and which shard each task runs.
    running: JoinSet<()>,
    running_ids: HashMap<tokio::task::Id, usize>,
}

impl Manager {
    /// Runs until `cancel`; `ready` is told once the first connections are up (or after 30 s,
    /// or at once when nothing is in scope yet). Records the planned gap at the stop.
    async fn run(mut self, cancel: CancellationToken, ready: oneshot::Sender<()>) {
        let cfg = self.deps.cfg.clone();
        let (gap_tx, gap_rx) = mpsc::channel(10_000);
        let (lifecycle_tx, mut lifecycle_rx) = mpsc::channel(10_000);
        let ctx = Arc::new(StreamCtx {
            cfg: cfg.clone(),
            ws_url: self.deps.ws_url.clone(),
            retry_after_max: self.deps.retry_after_max,
            sink: self.sink.clone(),
            stats: self.stats.clone(),
            gap_tx,
            lifecycle_tx,
        });
        // Helpers: the gap recorder, the backfill and the partition compaction, each restarted
        // after a panic.
        let helpers = TaskTracker::new();
        let helpers_cancel = CancellationToken::new();
        let (pool, restarts, stats) = (self.deps.pool.clone(), self.deps.restarts.clone(), self.stats.clone());
        let backfill_tx = if cfg.backfill {
            let (tx, rx) = mpsc::channel(10_000);
            let rx = Arc::new(Mutex::new(rx));
            let backfiller = gaps::Backfiller {
                pool: pool.clone(),
                client: self.deps.client.clone(),
                sink: self.sink.clone(),
                stats: stats.clone(),
                max_pages: cfg.backfill_max_pages,
            };
            let (retry, c) = (tx.downgrade(), helpers_cancel.clone());
            helpers.spawn(supervised("backfill", restarts.clone(), stats.clone(), helpers_cancel.clone(), move || {
                gaps::backfill_loop(backfiller.clone(), rx.clone(), retry.clone(), c.clone())
            }));
            Some(tx)
        } else {
            None
        };
        let (p, c) = (pool.clone(), helpers_cancel.clone());
        helpers.spawn(supervised("partition compaction", restarts.clone(), stats.clone(), helpers_cancel.clone(), move || {
            compact_partitions(p.clone(), c.clone())
        }));
        let gap_rx = Arc::new(Mutex::new(gap_rx));
        let (p, btx, s) = (pool.clone(), backfill_tx.clone(), stats.clone());
        // The recorder ends when every sender is gone (after the shards), not on a token: the
        // last gap events of the stop are recorded.
        let recorder = tokio::spawn(supervised("gap recorder", restarts, stats, CancellationToken::new(), move || {
            gaps::record(p.clone(), gap_rx.clone(), btx.clone(), s.clone())
        }));

        let desired = self.desired_until_ok(&cancel).await;
        let started = Utc::now();
        let all: Vec<String> = desired.iter().flatten().cloned().collect();
        let resumed = match gaps::on_start(&pool, &all, started, cfg.backfill_planned_max).await {
            Ok((to_backfill, resumed)) => {
                for gap in to_backfill {
                    if let Some(tx) = &backfill_tx {
                        let _ = tx.try_send(gap);
                    }
                }
                resumed
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the start gap: {e}");
                true
            }
        };

        let shard_cancel = cancel.child_token();
        let mut ups = Vec::new();
        // After a previous capture, each connection's start is a gap until its own first data
        // (they open gradually).
        self.assign_with(&ctx, &shard_cancel, desired, &mut ups, resumed.then_some(started));
        let mut ready = Some(ready);
        let wait_ready = async move {
            let _ = tokio::time::timeout(READY_WAIT, futures_util::future::join_all(ups)).await;
        };
        tokio::pin!(wait_ready);
        let mut refresh = tokio::time::interval(cfg.refresh_interval);
        refresh.tick().await;
        // Until the catalog holds anything in scope (a first run), look every second, for the
        // first minutes.
        let mut first_fill = tokio::time::interval(Duration::from_secs(1));
        let first_fill_until = Instant::now() + Duration::from_secs(600);
        // Partitions ahead, and retention: hourly.
        let mut maintenance = tokio::time::interval_at(Instant::now() + Duration::from_secs(3600), Duration::from_secs(3600));
        let scope_is_everything = cfg.token_ids.is_empty() && cfg.tag_slugs.is_empty() && cfg.min_volume_24h == 0 && cfg.min_liquidity == 0;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = &mut wait_ready, if ready.is_some() => {
                    let _ = ready.take().expect("guarded").send(());
                }
                _ = refresh.tick() => self.refresh(&ctx, &shard_cancel).await,
                Ok(()) = self.live.changed() => {
                    tracing::info!("stream scope or retention reloaded: recomputing the subscription set");
                    self.refresh(&ctx, &shard_cancel).await;
                    self.maintain_partitions().await;
                }
                _ = maintenance.tick() => self.maintain_partitions().await,
                _ = first_fill.tick(), if self.owner.is_empty() && Instant::now() < first_fill_until => self.refresh(&ctx, &shard_cancel).await,
                Some(done) = self.running.join_next_with_id(), if !self.running.is_empty() => match done {
                    Ok((id, ())) => {
                        self.running_ids.remove(&id);
                    }
                    Err(e) => {
                        let idx = self.running_ids.remove(&e.id());
                        if let Some(idx) = idx.filter(|_| e.is_panic()) {
                            self.shard_died(&ctx, &shard_cancel, idx, panic_text(e));
                        }
                    }
                },
                l = lifecycle_rx.recv() => match l {
                    Some(Lifecycle::Listed(assets)) if scope_is_everything => {
                        let new: Vec<String> = assets.into_iter().filter(|a| !self.owner.contains_key(a)).collect();
                        if !new.is_empty() {
                            tracing::info!(assets = new.len(), "new market on the stream: subscribing");
                            self.assign(&ctx, &shard_cancel, vec![new], &mut Vec::new());
                        }
                    }
                    Some(Lifecycle::Resolved(assets)) => {
                        tracing::info!(assets = assets.len(), "market resolved on the stream: unsubscribing");
                        self.unassign(assets);
                    }
                    _ => {}
                },
            }
        }
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        // The stop: the planned gap first (its start is the moment capture ends), then close.
        let assets: Vec<String> = self.owner.keys().cloned().collect();
        if !assets.is_empty() {
            let stop = tokio::time::timeout(Duration::from_secs(5), gaps::on_stop(&pool, &assets, Utc::now()));
            if let Err(e) = stop.await.unwrap_or(Err(DbError::TimedOut { what: "recording the planned gap" })) {
                tracing::warn!(error = %e, "cannot record the planned gap of this stop: {e}");
            }
        }
        shard_cancel.cancel();
        while self.running.join_next().await.is_some() {}
        helpers_cancel.cancel();
        helpers.close();
        helpers.wait().await;
        drop(ctx);
        drop(backfill_tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), recorder).await;
    }

    /// Partitions ahead, and the retention in force (hourly, and after a reload).
    async fn maintain_partitions(&self) {
        let retention = retention(&self.live.borrow());
        match partitions::maintain(&self.deps.pool, retention).await {
            Ok((made, dropped)) if made > 0 || !dropped.is_empty() => {
                tracing::info!(created = made, dropped = %dropped.join(", "), "partitions maintained: {made} created, dropped [{}]", dropped.join(", "));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "partition maintenance failed, retrying in an hour: {e}"),
        }
    }

    /// Recomputes the subscription set: subscribes what is new, unsubscribes what is gone.
    async fn refresh(&mut self, ctx: &Arc<StreamCtx>, cancel: &CancellationToken) {
        let Ok(groups) = self.desired().await else { return };
        let want: HashSet<&String> = groups.iter().flatten().collect();
        let gone: Vec<String> = self.owner.keys().filter(|a| !want.contains(a)).cloned().collect();
        self.unassign(gone);
        self.assign(ctx, cancel, groups, &mut Vec::new());
    }

    /// A shard's task panicked: its assets are covered by a gap from its last data frame, and
    /// it is started again (same id and assets) after the supervisor's delay.
    fn shard_died(&mut self, ctx: &Arc<StreamCtx>, cancel: &CancellationToken, idx: usize, err: String) {
        self.stats.task_restarts.fetch_add(1, Ordering::Relaxed);
        let shard = &self.shards[idx];
        let assets: BTreeSet<String> = shard.assets.iter().cloned().collect();
        let since = shard.shared.last_data_at().unwrap_or_else(Utc::now);
        ctx.send_gap(GapEvent::Open {
            conn: idx as i32,
            assets: assets.iter().cloned().collect(),
            reason: GapReason::TaskPanicked,
            at: since,
        });
        let Some(delay) = self.deps.restarts.died(TASK_NAME, &format!("stream shard {idx} panicked: {err}")) else { return };
        let (tx, rx) = mpsc::channel(1024);
        self.shards[idx].tx = tx;
        let shard = Shard {
            id: idx as i32,
            assets,
            cmd_rx: rx,
            ctx: ctx.clone(),
            shared: self.shards[idx].shared.clone(),
            start_delay: delay,
            gap_open: true,
            first_up: None,
            fault: self.fault,
        };
        let handle = self.running.spawn(shard.run(cancel.clone()));
        self.running_ids.insert(handle.id(), idx);
    }

    /// Assigns the assets of `groups` (each the tokens of one market) not owned yet to shards,
    /// creating shards as needed.
    fn assign(&mut self, ctx: &Arc<StreamCtx>, cancel: &CancellationToken, groups: Vec<Vec<String>>, ups: &mut Vec<oneshot::Receiver<()>>) {
        self.assign_with(ctx, cancel, groups, ups, None);
    }

    /// The shard for `group` (the new tokens of one market): the shard already carrying a
    /// token of the market if it has room, else the first shard with room for all of them,
    /// else `None` (a new shard). The per-connection cap counts tokens; all tokens of a market
    /// on one connection means each `price_change` (sent for both tokens of a market in one
    /// message) arrives once.
    fn shard_for(&self, owned_sibling: Option<usize>, group_len: usize) -> Option<usize> {
        let max = self.deps.cfg.max_assets_per_connection;
        let fits = |i: usize| self.shards[i].assets.len() + group_len <= max;
        owned_sibling.filter(|i| fits(*i)).or_else(|| (0..self.shards.len()).find(|i| fits(*i)))
    }

    /// [`Manager::assign`]; with `start_gap`, each new shard's assets are covered by a gap from
    /// then until the shard's first data.
    fn assign_with(
        &mut self,
        ctx: &Arc<StreamCtx>,
        cancel: &CancellationToken,
        groups: Vec<Vec<String>>,
        ups: &mut Vec<oneshot::Receiver<()>>,
        start_gap: Option<chrono::DateTime<Utc>>,
    ) {
        let max = self.deps.cfg.max_assets_per_connection;
        let mut per_shard: HashMap<usize, Vec<String>> = HashMap::new();
        let mut fresh: Vec<(usize, BTreeSet<String>, mpsc::Receiver<ShardCmd>)> = Vec::new();
        // One placement per market (a market with more tokens than the cap is split).
        let mut placements: Vec<(Option<usize>, Vec<String>)> = Vec::new();
        for group in groups {
            let sibling = group.iter().find_map(|a| self.owner.get(a).copied());
            let new: Vec<String> = group.into_iter().filter(|a| !self.owner.contains_key(a)).collect();
            for chunk in new.chunks(max.max(1)) {
                placements.push((sibling, chunk.to_vec()));
            }
        }
        for (sibling, chunk) in placements {
            let chunk: Vec<String> = chunk.into_iter().filter(|a| !self.owner.contains_key(a)).collect();
            if chunk.is_empty() {
                continue;
            }
            let idx = match self.shard_for(sibling, chunk.len()) {
                Some(i) => i,
                None => {
                    let (tx, rx) = mpsc::channel(1024);
                    self.shards.push(ShardHandle { tx, assets: HashSet::new(), shared: Arc::default() });
                    let idx = self.shards.len() - 1;
                    fresh.push((idx, BTreeSet::new(), rx));
                    self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
                    idx
                }
            };
            for a in chunk {
                self.shards[idx].assets.insert(a.clone());
                self.owner.insert(a.clone(), idx);
                match fresh.iter_mut().find(|(i, _, _)| *i == idx) {
                    Some((_, set, _)) => {
                        set.insert(a);
                    }
                    None => per_shard.entry(idx).or_default().push(a),
                }
            }
        }
        // Running shards get the new assets as an `operation: subscribe`. A command that
        // cannot be delivered leaves its assets unowned: the next refresh assigns them again.
        for (idx, list) in per_shard {
            if let Err(e) = self.shards[idx].tx.try_send(ShardCmd::Subscribe(list)) {
                let ShardCmd::Subscribe(list) = e.into_inner() else { unreachable!("sent a subscribe") };
                tracing::warn!(conn = idx, assets = list.len(), "shard command queue full; assets picked up at the next refresh");
                for a in list {
                    self.shards[idx].assets.remove(&a);
                    self.owner.remove(&a);
                }
            }
        }
        // New shards open gradually.
        let already = self.shards.len() - fresh.len();
        for (n, (idx, set, rx)) in fresh.into_iter().enumerate() {
            if let Some(at) = start_gap {
                ctx.send_gap(GapEvent::Open { conn: idx as i32, assets: set.iter().cloned().collect(), reason: GapReason::Start, at });
            }
            let (up_tx, up_rx) = oneshot::channel();
            ups.push(up_rx);
            let shard = Shard {
                id: idx as i32,
                assets: set,
                cmd_rx: rx,
                ctx: ctx.clone(),
                shared: self.shards[idx].shared.clone(),
                start_delay: self.deps.cfg.connect_interval * (n as u32 + if already > 0 { 1 } else { 0 }),
                gap_open: start_gap.is_some(),
                first_up: Some(up_tx),
                fault: self.fault,
            };
            let handle = self.running.spawn(shard.run(cancel.clone()));
            self.running_ids.insert(handle.id(), idx);
        }
        self.stats.assets_subscribed.store(self.owner.len() as u64, Ordering::Relaxed);
    }

    fn unassign(&mut self, assets: Vec<String>) {
        let mut per_shard: HashMap<usize, Vec<String>> = HashMap::new();
        for a in assets {
            if let Some(idx) = self.owner.remove(&a) {
                self.shards[idx].assets.remove(&a);
                per_shard.entry(idx).or_default().push(a);
            }
        }
        for (idx, list) in per_shard {
            let _ = self.shards[idx].tx.try_send(ShardCmd::Unsubscribe(list));
        }
        self.stats.assets_subscribed.store(self.owner.len() as u64, Ordering::Relaxed);
    }

    async fn desired_until_ok(&self, cancel: &CancellationToken) -> Vec<Vec<String>> {
        loop {
            match self.desired().await {
                Ok(d) => return d,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the subscription set yet: {e}");
                    tokio::select! {
                        _ = cancel.cancelled() => return Vec::new(),
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        }
    }

    /// The subscription set: the explicit token list, or every token of every open market in
    /// scope (volume, liquidity, tags).
    async fn desired(&self) -> Result<Vec<Vec<String>>, DbError> {
        let cfg = self.live.borrow().clone();
        desired(&cfg, &self.deps.pool).await
    }
}

/// The subscription set for `cfg`, grouped by market: its explicit token list (one group
/// each), or the catalog's tokens in scope.
pub async fn desired(cfg: &StreamConfig, pool: &Pool) -> Result<Vec<Vec<String>>, DbError> {
    if !cfg.token_ids.is_empty() {
        return Ok(cfg.token_ids.iter().map(|t| vec![t.clone()]).collect());
    }
    let scope = StreamScope {
        min_volume_24h: rust_decimal::Decimal::from(cfg.min_volume_24h),
        min_liquidity: rust_decimal::Decimal::from(cfg.min_liquidity),
        tag_slugs: cfg.tag_slugs.clone(),
    };
    let conn = pool.get().await?;
    Ok(catalog::stream_token_ids(&*conn, &scope).await?)
}
