//! The live market stream ("trade listener"): a sharded pool of CLOB market WebSocket
//! connections recording every trade, book, level change and lifecycle event.
//!
//! - `mod.rs` (this file): the pool manager — the subscription set from the catalog, kept
//!   current; assets sharded over connections opened gradually; start/stop gaps.
//! - [`connection`]: one shard's connection: protocol, PING, watchdogs, reconnects, gaps.
//! - [`book`]: in-memory books per asset, level changes withheld until a fresh book.
//! - [`gaps`]: gap rows and the Data API backfill.
//!
//! Readers hand rows to the [`Sink`]; the writer ([`crate::db::writer`]) stores them.

pub mod book;
pub mod connection;
pub mod gaps;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use self::connection::{Shard, ShardCmd};
use crate::config::StreamConfig;
use crate::daemon::health::{StreamHealth, TradeListenerHealth};
use crate::daemon::systemd::Liveness;
use crate::db::writer::Sink;
use crate::db::{DbError, Pool};
use crate::polymarket::client::PolymarketClient;

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
}

/// A connection's capture gap begins or ends.
#[derive(Debug, Clone)]
pub enum GapEvent {
    Open { conn: i32, assets: Vec<String>, reason: String, at: DateTime<Utc> },
    Close { conn: i32, at: DateTime<Utc> },
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

/// The stream's health and liveness, for the health loop, `collector status` and the
/// watchdog.
pub struct StreamMonitor {
    pub stats: Arc<StreamStats>,
    pub sink: Arc<Sink>,
    /// The writer counts as stuck when rows wait longer than this.
    pub stall_timeout: Duration,
}

impl StreamHealth for StreamMonitor {
    fn snapshot(&self) -> TradeListenerHealth {
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
        }
    }
}

impl Liveness for StreamMonitor {
    fn stalled(&self) -> Option<String> {
        self.sink
            .stalled_for()
            .filter(|d| *d > self.stall_timeout)
            .map(|d| format!("stream writer has stored nothing for {}s while rows wait", d.as_secs()))
    }
}

/// The pool manager.
pub struct StreamCollector {
    pub cfg: StreamConfig,
    pub ws_url: Url,
    pub pool: Pool,
    pub client: Arc<PolymarketClient>,
    pub sink: Arc<Sink>,
    pub stats: Arc<StreamStats>,
}

struct ShardHandle {
    tx: mpsc::Sender<ShardCmd>,
    assets: HashSet<String>,
}

impl StreamCollector {
    /// Runs until `cancel`; `ready` is told once the first connections are up (or after
    /// 30 s, or at once when nothing is in scope yet). Records the planned gap at the stop.
    pub async fn run(self, cancel: CancellationToken, ready: tokio::sync::oneshot::Sender<()>) {
        let cfg = self.cfg.clone();
        let (gap_tx, gap_rx) = mpsc::channel(10_000);
        let (lifecycle_tx, mut lifecycle_rx) = mpsc::channel(10_000);
        let ctx = Arc::new(StreamCtx {
            cfg: cfg.clone(),
            ws_url: self.ws_url.clone(),
            sink: self.sink.clone(),
            stats: self.stats.clone(),
            gap_tx,
            lifecycle_tx,
        });
        let tasks = TaskTracker::new();
        let shard_cancel = cancel.child_token();
        let backfill_cancel = CancellationToken::new();
        let backfill_tx = if cfg.backfill {
            let (tx, rx) = mpsc::channel(10_000);
            tasks.spawn(gaps::backfill_loop(self.pool.clone(), self.client.clone(), rx, backfill_cancel.clone()));
            Some(tx)
        } else {
            None
        };
        let gap_task = tokio::spawn(gaps::record(self.pool.clone(), gap_rx, backfill_tx.clone(), self.stats.clone()));

        let mut desired = self.desired_until_ok(&cancel).await;
        match gaps::on_start(&self.pool, &desired, Utc::now()).await {
            Ok(Some(gap)) => {
                if let Some(tx) = &backfill_tx {
                    let _ = tx.try_send(gap);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot record the start gap"),
        }

        let mut shards: Vec<ShardHandle> = Vec::new();
        let mut owner: HashMap<String, usize> = HashMap::new();
        let mut ups = Vec::new();
        self.assign(&ctx, &tasks, &shard_cancel, &mut shards, &mut owner, desired.drain(..).collect(), &mut ups);
        let mut ready = Some(ready);
        let wait_ready = async move {
            let all = futures_util::future::join_all(ups);
            let _ = tokio::time::timeout(Duration::from_secs(30), all).await;
        };
        tokio::pin!(wait_ready);
        let mut refresh = tokio::time::interval(cfg.refresh_interval);
        refresh.tick().await;
        let scope_is_everything = cfg.token_ids.is_empty() && cfg.tag_slugs.is_empty() && cfg.min_volume_24h == 0 && cfg.min_liquidity == 0;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = &mut wait_ready, if ready.is_some() => {
                    let _ = ready.take().expect("guarded").send(());
                }
                _ = refresh.tick() => {
                    let Ok(want) = self.desired().await else { continue };
                    let want: HashSet<String> = want.into_iter().collect();
                    let gone: Vec<String> = owner.keys().filter(|a| !want.contains(*a)).cloned().collect();
                    let new: Vec<String> = want.into_iter().filter(|a| !owner.contains_key(a)).collect();
                    self.unassign(&mut shards, &mut owner, gone);
                    let mut ups = Vec::new();
                    self.assign(&ctx, &tasks, &shard_cancel, &mut shards, &mut owner, new, &mut ups);
                }
                l = lifecycle_rx.recv() => match l {
                    Some(Lifecycle::Listed(assets)) if scope_is_everything => {
                        let new: Vec<String> = assets.into_iter().filter(|a| !owner.contains_key(a)).collect();
                        if !new.is_empty() {
                            tracing::info!(assets = new.len(), "new market on the stream: subscribing");
                            let mut ups = Vec::new();
                            self.assign(&ctx, &tasks, &shard_cancel, &mut shards, &mut owner, new, &mut ups);
                        }
                    }
                    Some(Lifecycle::Resolved(assets)) => {
                        tracing::info!(assets = assets.len(), "market resolved on the stream: unsubscribing");
                        self.unassign(&mut shards, &mut owner, assets);
                    }
                    _ => {}
                },
            }
        }
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        // The stop: the planned gap first (its start is the moment capture ends), then close.
        let assets: Vec<String> = owner.keys().cloned().collect();
        if !assets.is_empty() {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(5), gaps::on_stop(&self.pool, &assets, Utc::now())).await.unwrap_or(Err(DbError::Pool("timed out".into()))) {
                tracing::warn!(error = %e, "cannot record the planned gap of this stop");
            }
        }
        shard_cancel.cancel();
        backfill_cancel.cancel();
        tasks.close();
        tasks.wait().await;
        drop(ctx);
        drop(backfill_tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), gap_task).await;
    }

    /// Assigns `assets` to shards with room, creating shards as needed.
    #[allow(clippy::too_many_arguments)]
    fn assign(
        &self,
        ctx: &Arc<StreamCtx>,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
        shards: &mut Vec<ShardHandle>,
        owner: &mut HashMap<String, usize>,
        assets: Vec<String>,
        ups: &mut Vec<tokio::sync::oneshot::Receiver<()>>,
    ) {
        let max = self.cfg.max_assets_per_connection;
        let mut per_shard: HashMap<usize, Vec<String>> = HashMap::new();
        let mut fresh: Vec<(usize, BTreeSet<String>, mpsc::Receiver<ShardCmd>)> = Vec::new();
        for a in assets {
            if owner.contains_key(&a) {
                continue;
            }
            let slot = shards.iter().position(|s| s.assets.len() < max);
            let idx = match slot {
                Some(i) => i,
                None => {
                    let (tx, rx) = mpsc::channel(1024);
                    shards.push(ShardHandle { tx, assets: HashSet::new() });
                    let idx = shards.len() - 1;
                    fresh.push((idx, BTreeSet::new(), rx));
                    self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
                    idx
                }
            };
            shards[idx].assets.insert(a.clone());
            owner.insert(a.clone(), idx);
            match fresh.iter_mut().find(|(i, _, _)| *i == idx) {
                Some((_, set, _)) => {
                    set.insert(a);
                }
                None => per_shard.entry(idx).or_default().push(a),
            }
        }
        // Running shards get the new assets as an `operation: subscribe`.
        for (idx, list) in per_shard {
            if shards[idx].tx.try_send(ShardCmd::Subscribe(list)).is_err() {
                tracing::warn!(conn = idx, "shard command queue full; assets picked up at the next refresh");
            }
        }
        // New shards open gradually.
        let already = shards.len() - fresh.len();
        for (n, (idx, set, rx)) in fresh.into_iter().enumerate() {
            let (up_tx, up_rx) = tokio::sync::oneshot::channel();
            ups.push(up_rx);
            let shard = Shard {
                id: idx as i32,
                assets: set,
                cmd_rx: rx,
                ctx: ctx.clone(),
                start_delay: self.cfg.connect_interval * (n as u32 + if already > 0 { 1 } else { 0 }),
                first_up: Some(up_tx),
            };
            tasks.spawn(shard.run(cancel.clone()));
        }
        self.stats.assets_subscribed.store(owner.len() as u64, Ordering::Relaxed);
    }

    fn unassign(&self, shards: &mut [ShardHandle], owner: &mut HashMap<String, usize>, assets: Vec<String>) {
        let mut per_shard: HashMap<usize, Vec<String>> = HashMap::new();
        for a in assets {
            if let Some(idx) = owner.remove(&a) {
                shards[idx].assets.remove(&a);
                per_shard.entry(idx).or_default().push(a);
            }
        }
        for (idx, list) in per_shard {
            let _ = shards[idx].tx.try_send(ShardCmd::Unsubscribe(list));
        }
        self.stats.assets_subscribed.store(owner.len() as u64, Ordering::Relaxed);
    }

    async fn desired_until_ok(&self, cancel: &CancellationToken) -> Vec<String> {
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
    pub async fn desired(&self) -> Result<Vec<String>, DbError> {
        if !self.cfg.token_ids.is_empty() {
            return Ok(self.cfg.token_ids.clone());
        }
        let conn = self.pool.get().await?;
        let min_volume = rust_decimal::Decimal::from(self.cfg.min_volume_24h);
        let min_liquidity = rust_decimal::Decimal::from(self.cfg.min_liquidity);
        let rows = conn
            .query(
                "SELECT t.token_id FROM tokens t JOIN markets m ON m.id = t.market_id
                 LEFT JOIN events e ON e.id = m.event_id
                 WHERE m.closed IS NOT TRUE AND m.active IS NOT FALSE AND m.enable_order_book IS NOT FALSE
                   AND ($1::numeric = 0 OR COALESCE((m.raw->>'volume24hr')::numeric, 0) >= $1)
                   AND ($2::numeric = 0 OR COALESCE(m.liquidity, 0) >= $2)
                   AND (cardinality($3::text[]) = 0 OR EXISTS (
                        SELECT 1 FROM jsonb_array_elements(COALESCE(e.raw->'tags', '[]'::jsonb)) tag
                        WHERE tag->>'slug' = ANY($3)))
                 ORDER BY t.token_id",
                &[&min_volume, &min_liquidity, &self.cfg.tag_slugs],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
