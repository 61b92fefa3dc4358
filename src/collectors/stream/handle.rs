//! [`spawn`] starts the stream and returns the [`StreamHandle`], which owns every task: the
//! writer, and the manager with its shards and helpers. Live reconfiguration and the stop go
//! through the handle.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gate::{Gate, Mode as GateMode};
use super::manager::Manager;
use super::sink::Sink;
use super::spool::{Spool, SpoolError};
use super::stats::{StreamMonitor, StreamStats, TradeListenerHealth};
use super::writer::{Stop, Writer};
use super::{StreamDeps, maintenance, supervised};
use crate::config::StreamConfig;
use crate::db::DbError;
use crate::db::leader::SliceRole;
use crate::db::stream::Keys;

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

/// How long past the stop deadline the writer may take to spool what it holds.
const SPOOL_TIME: Duration = Duration::from_secs(10);

/// Starts the stream: the writer (with the spool, bound to this database), the manager, its
/// shards and helpers.
pub async fn spawn(deps: StreamDeps) -> Result<StreamHandle, StartError> {
    let database = crate::db::identity(&deps.pool).await?;
    // Today's partitions (and the days around) exist before the first row, if they can be
    // made at once (never a wait here: see `maintenance::before_start`).
    maintenance::before_start(&deps.pool).await;
    let spool = Spool::open(&deps.cfg.spool_dir, deps.cfg.spool_max_bytes, &database)?;
    // Several instances of a slice: level changes are held until the election says this one
    // writes them (`gate`); alone (no election), they pass unchecked.
    let mode = if deps.leadership.slice_role() == SliceRole::All { GateMode::All } else { GateMode::Starting };
    let gate = Gate::new(mode, deps.cfg.standby_window_bytes, deps.cfg.standby_window);
    let (sink, rx) = Sink::gated(deps.cfg.queue_capacity, deps.cfg.queue_max_bytes, spool, gate);
    let stats = Arc::new(StreamStats::default());
    let monitor = Arc::new(StreamMonitor {
        stats: stats.clone(),
        sink: sink.clone(),
        stall_timeout: deps.stall_timeout,
        started_us: crate::clock::now().timestamp_micros(),
        slice: deps.cfg.shard,
    });
    let keys = Arc::new(Keys::default());
    let writer_stop = Stop::default();
    let writer = Writer {
        pool: deps.pool.clone(),
        rx: Arc::new(Mutex::new(rx)),
        sink: sink.clone(),
        batch_size: deps.cfg.batch_size,
        flush_interval: deps.cfg.flush_interval,
        poison_file: deps.cfg.spool_dir.join("poison.jsonl"),
        keys: keys.clone(),
    };
    let (grace, ws, w) = (deps.drain_grace, writer_stop.clone(), writer.clone());
    let writer = tokio::spawn(supervised("writer", deps.restarts.clone(), stats.clone(), writer_stop.cancel.clone(), move || {
        writer.clone().run(ws.clone(), grace)
    }));
    let manager_cancel = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (live_tx, live_rx) = tokio::sync::watch::channel(deps.cfg.clone());
    let manager = Manager::new(deps, live_rx, sink, stats, keys, w);
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
    /// `min_volume_24h`, `min_liquidity`: the subscription set is recomputed now, and new
    /// markets seen on the stream are judged by it at once) and the retentions
    /// (`retention_days`, `trades_retention_days`, `quotes_retention_days`: the next
    /// maintenance pass applies them; what it will drop is logged now). Other stream settings
    /// need a restart.
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
