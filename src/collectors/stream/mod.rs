//! The live market stream ("trade listener"): a sharded pool of CLOB market WebSocket
//! connections recording every trade, book, level change and lifecycle event.
//!
//! [`spawn`] starts it and returns the [`StreamHandle`], which owns every task; the data flows
//! through the modules in this order:
//!
//! - [`handle`]: starting, live reconfiguration, the stop.
//! - [`manager`]: the subscription set from the catalog, kept current; assets placed on
//!   connections ([`placement`]) opened gradually; shards restarted (by the supervisor's
//!   decision, [`Restarts`]) when their task panics, their assets covered by a gap meanwhile;
//!   start and stop gaps; the helpers.
//! - [`shard`]: one connection: protocol, PING, reconnects, per-connection gaps; the stall
//!   decisions are the state machines of [`watch`]; in-memory books in [`book`]; values
//!   outside their domain quarantined by [`domain`].
//! - [`sink`]: readers hand rows to it without waiting: a queue bounded in rows and bytes, or
//!   the on-disk [`spool`] when the queue is full.
//! - [`writer`]: batches off the queue (and the spool) into `db::stream::write_batch`.
//! - [`gaps`]: gap rows (`db::gaps`); [`backfill`]: their trades from the Data API.
//! - [`maintenance`]: partitions made ahead, retention, compaction of closed days.
//! - [`stats`]: the counters and the health every view reads.

pub mod backfill;
pub mod book;
pub mod domain;
pub mod gaps;
pub mod gate;
pub mod handle;
pub mod latency;
pub mod maintenance;
pub mod manager;
pub mod placement;
pub mod shard;
pub mod sink;
pub mod spool;
pub mod spool_format;
pub mod spool_read;
pub mod spool_rows;
pub mod stats;
pub mod takeover;
pub mod watch;
pub mod writer;

pub use handle::{StartError, StreamHandle, spawn};
pub use manager::desired;
pub use stats::{ConnectionHealth, StreamMonitor, StreamStats, TradeListenerHealth};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use self::gaps::GapEvent;
use self::sink::Sink;
use super::Restarts;
use crate::backoff::rest;
use crate::config::StreamConfig;
use crate::db::Pool;
use crate::polymarket::client::PolymarketClient;

/// The supervisor's name for the stream's tasks (shards, writer, gap recorder, backfill,
/// maintenance).
pub const TASK_NAME: &str = "stream";

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
    /// The archive, when on: retention drops only days it has archived.
    pub archive: Option<crate::config::ArchiveConfig>,
    /// Partition maintenance runs only while this instance leads (`db::leader`); the slice
    /// role says which level changes it writes (`gate`, `takeover`).
    pub leadership: crate::db::leader::Leadership,
    /// This instance's name (`daemon.instance`): its gaps are its own.
    pub instance: Arc<str>,
}

/// A subscribed asset's token id, shared by every map that holds it (the manager's, the
/// shard's, its book and its first-book watch): one allocation per asset of the universe.
pub type AssetId = Arc<str>;

/// A market listed or resolved, seen on the stream.
#[derive(Debug, Clone)]
pub enum Lifecycle {
    /// A new market (its condition id, when upstream sent it) and its assets.
    Listed {
        condition: Option<String>,
        assets: Vec<String>,
    },
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
    /// The earliest time the next handshake may start ([`StreamCtx::handshake_slot`]).
    next_handshake: std::sync::Mutex<tokio::time::Instant>,
}

impl StreamCtx {
    /// Reserves the next handshake: connections open — first opens, new shards and reconnects
    /// alike — at most one per `connect_interval` across every shard (bursts of handshakes
    /// get HTTP 429, and 1,600 shards reconnecting after an outage would be one). Returns how
    /// long to wait for the reserved slot.
    fn handshake_slot(&self) -> Duration {
        let now = tokio::time::Instant::now();
        let mut next = self.next_handshake.lock().expect("not poisoned");
        let at = (*next).max(now);
        *next = at + self.cfg.connect_interval;
        at - now
    }

    fn send_gap(&self, e: GapEvent) {
        if let Err(e) = self.gap_tx.try_send(e) {
            tracing::error!(error = %e, "gap queue full: a gap event was not recorded");
        }
    }

    fn lifecycle(&self, l: Lifecycle) {
        let _ = self.lifecycle_tx.try_send(l);
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
        if !rest(&cancel, delay).await {
            return;
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
