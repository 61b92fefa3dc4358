//! The manager: the subscription set from the catalog, kept current (refreshes, a reload's
//! new scope, markets listed and resolved on the stream); assets placed on shards
//! ([`placement`](super::placement)) opened gradually; shards restarted (by the supervisor's
//! decision) when their task panics, their assets covered by a gap meanwhile; the helpers
//! (gap recorder, backfill, partition maintenance); start and stop gaps.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::gaps::{self, GapEvent, GapReason};
use super::shard::{Shard, ShardCmd, ShardShared};
use super::sink::Sink;
use super::stats::StreamStats;
use super::takeover::Takeover;
use super::writer::Writer;
use super::{AssetId, Lifecycle, StreamCtx, StreamDeps, TASK_NAME, backfill, maintenance, panic_text, placement, supervised};
use crate::backoff::rest;
use crate::clock;
use crate::config::StreamConfig;
use crate::db::catalog::{self, StreamScope};
use crate::db::stream::Keys;
use crate::db::{DbError, Pool};
use crate::fault::{self, Fault};

/// The longest wait for the first connections before READY.
const READY_WAIT: Duration = Duration::from_secs(30);

/// The manager's view of one shard.
struct ShardHandle {
    tx: mpsc::Sender<ShardCmd>,
    assets: HashSet<AssetId>,
    shared: Arc<ShardShared>,
}

/// The pool manager: owns the shards and the helper tasks.
pub(super) struct Manager {
    deps: StreamDeps,
    /// The live settings (scope, retention), changed by a reload.
    live: watch::Receiver<StreamConfig>,
    sink: Arc<Sink>,
    stats: Arc<StreamStats>,
    /// The writer's dictionary keys, shared with the backfill.
    keys: Arc<Keys>,
    /// The writer, for a takeover's window (`takeover`).
    writer: Writer,
    fault: Option<Fault>,
    shards: Vec<ShardHandle>,
    /// Every subscribed asset and its shard (the ids shared with the shards: [`AssetId`]).
    owner: HashMap<AssetId, usize>,
    /// The shards' tasks, and which shard each task runs.
    running: JoinSet<()>,
    running_ids: HashMap<tokio::task::Id, usize>,
}

impl Manager {
    pub(super) fn new(
        deps: StreamDeps,
        live: watch::Receiver<StreamConfig>,
        sink: Arc<Sink>,
        stats: Arc<StreamStats>,
        keys: Arc<Keys>,
        writer: Writer,
    ) -> Self {
        Manager {
            live,
            writer,
            fault: fault::for_task(deps.fault_spec.as_deref(), "shard"),
            deps,
            sink,
            stats,
            keys,
            shards: Vec::new(),
            owner: HashMap::new(),
            running: JoinSet::new(),
            running_ids: HashMap::new(),
        }
    }

    /// Runs until `cancel`; `ready` is told once the first connections are up (or after 30 s,
    /// or at once when nothing is in scope yet). Records the planned gap at the stop.
    pub(super) async fn run(mut self, cancel: CancellationToken, ready: oneshot::Sender<()>) {
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
            next_handshake: std::sync::Mutex::new(Instant::now()),
        });
        // Helpers: the gap recorder, the backfill and the partition maintenance, each
        // restarted after a panic.
        let helpers = TaskTracker::new();
        let helpers_cancel = CancellationToken::new();
        let (pool, restarts, stats) = (self.deps.pool.clone(), self.deps.restarts.clone(), self.stats.clone());
        let backfill_tx = if cfg.backfill {
            let (tx, rx) = mpsc::channel(10_000);
            let backfiller = backfill::Backfiller {
                pool: pool.clone(),
                client: self.deps.client.clone(),
                sink: self.sink.clone(),
                stats: stats.clone(),
                keys: self.keys.clone(),
                max_pages: cfg.backfill_max_pages,
            };
            let queue = backfill::BackfillQueue::new(rx);
            let c = helpers_cancel.clone();
            helpers.spawn(supervised("backfill", restarts.clone(), stats.clone(), helpers_cancel.clone(), move || {
                backfill::backfill_loop(backfiller.clone(), queue.clone(), c.clone())
            }));
            Some(tx)
        } else {
            None
        };
        let (p, l, s, c, a) = (pool.clone(), self.live.clone(), stats.clone(), helpers_cancel.clone(), self.deps.archive.clone());
        let leader = self.deps.leadership.clone();
        helpers.spawn(supervised("partition maintenance", restarts.clone(), stats.clone(), helpers_cancel.clone(), move || {
            maintenance::run(p.clone(), l.clone(), a.clone(), s.clone(), c.clone(), leader.clone())
        }));
        let takeover = Takeover {
            leadership: self.deps.leadership.clone(),
            writer: self.writer.clone(),
            ctx: ctx.clone(),
            instance: self.deps.instance.to_string(),
        };
        let c = helpers_cancel.clone();
        helpers.spawn(supervised("takeover", restarts.clone(), stats.clone(), helpers_cancel.clone(), move || {
            takeover.clone().follow(c.clone())
        }));
        let gap_rx = Arc::new(Mutex::new(gap_rx));
        let (p, btx, s, i) = (pool.clone(), backfill_tx.clone(), stats.clone(), self.deps.instance.clone());
        // The recorder ends when every sender is gone (after the shards), not on a token: the
        // last gap events of the stop are recorded.
        let recorder = tokio::spawn(supervised("gap recorder", restarts, stats, CancellationToken::new(), move || {
            gaps::record(p.clone(), i.clone(), gap_rx.clone(), btx.clone(), s.clone())
        }));

        let desired = self.desired_until_ok(&cancel).await;
        let started = clock::now();
        let all: Vec<String> = desired.iter().flatten().cloned().collect();
        let resumed = match gaps::on_start(&pool, &self.deps.instance, &all, started, cfg.backfill_planned_max).await {
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
        drop(all);
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
        // Rows the sink lost become a gap (backfilled) within a second.
        let mut losses = tokio::time::interval(Duration::from_secs(1));
        let first_fill_until = Instant::now() + Duration::from_secs(600);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = &mut wait_ready, if ready.is_some() => {
                    let _ = ready.take().expect("guarded").send(());
                }
                _ = refresh.tick() => self.refresh(&ctx, &shard_cancel).await,
                _ = losses.tick() => {
                    // Rows lost since the last DATA LOST line are logged now (at most a second late).
                    self.sink.log_losses();
                    // (Lost rows of no asset, quarantined frames, need no gap.)
                    if let Some(w) = self.sink.take_losses().filter(|w| !w.assets.is_empty()) {
                        if let (Some(from), Some(to)) = (w.from, w.to) {
                            ctx.send_gap(GapEvent::Lost { assets: w.assets.into_iter().collect(), from, to, rows: w.rows });
                        }
                    }
                }
                Ok(()) = self.live.changed() => {
                    tracing::info!("stream scope or retention reloaded: recomputing the subscription set");
                    self.refresh(&ctx, &shard_cancel).await;
                }
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
                    // A new market joins at once only when everything is in scope (the scope in
                    // force now, a reload's included); a narrower scope's next refresh decides.
                    Some(Lifecycle::Listed { condition, assets })
                        if scope_is_everything(&self.live.borrow())
                            && self.live.borrow().shard.owns(condition.as_deref().or(assets.first().map(String::as_str)).unwrap_or("")) =>
                    {
                        let new: Vec<String> = assets.into_iter().filter(|a| !self.owner.contains_key(a.as_str())).collect();
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
        let assets: Vec<String> = self.owner.keys().map(|a| a.to_string()).collect();
        if !assets.is_empty() {
            let stop = tokio::time::timeout(Duration::from_secs(5), gaps::on_stop(&pool, &self.deps.instance, &assets, clock::now()));
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

    /// Recomputes the subscription set: subscribes what is new, unsubscribes what is gone.
    async fn refresh(&mut self, ctx: &Arc<StreamCtx>, cancel: &CancellationToken) {
        let Ok(groups) = self.desired().await else { return };
        let want: HashSet<&str> = groups.iter().flatten().map(String::as_str).collect();
        let gone: Vec<String> = self.owner.keys().filter(|a| !want.contains(&***a)).map(|a| a.to_string()).collect();
        drop(want);
        self.unassign(gone);
        self.assign(ctx, cancel, groups, &mut Vec::new());
    }

    /// A shard's task panicked: its assets are covered by a gap from its last data frame, and
    /// it is started again (same id and assets) after the supervisor's delay.
    fn shard_died(&mut self, ctx: &Arc<StreamCtx>, cancel: &CancellationToken, idx: usize, err: String) {
        self.stats.task_restarts.fetch_add(1, Ordering::Relaxed);
        let shard = &self.shards[idx];
        let assets: BTreeSet<AssetId> = shard.assets.iter().cloned().collect();
        let since = shard.shared.last_data_at().unwrap_or_else(clock::now);
        ctx.send_gap(GapEvent::Open {
            conn: idx as i32,
            assets: assets.iter().map(|a| a.to_string()).collect(),
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

    /// [`Manager::assign`]; with `start_gap`, each new shard's assets are covered by a gap from
    /// then until the shard's first data.
    fn assign_with(
        &mut self,
        ctx: &Arc<StreamCtx>,
        cancel: &CancellationToken,
        groups: Vec<Vec<String>>,
        ups: &mut Vec<oneshot::Receiver<()>>,
        start_gap: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        // Each asset's id allocated once, shared from here by every map that holds it.
        let groups: Vec<Vec<AssetId>> = groups
            .into_iter()
            .map(|g| {
                g.into_iter().map(|a| self.owner.get_key_value(a.as_str()).map_or_else(|| AssetId::from(a), |(k, _)| k.clone())).collect()
            })
            .collect();
        let sizes: Vec<usize> = self.shards.iter().map(|s| s.assets.len()).collect();
        let owner = &self.owner;
        let placed = placement::place(&sizes, |a| owner.get(a).copied(), groups, self.deps.cfg.max_assets_per_connection);
        // Running shards get the new assets as an `operation: subscribe`. A command that
        // cannot be delivered leaves its assets unowned: the next refresh assigns them again.
        for (idx, list) in placed.existing {
            for a in &list {
                self.shards[idx].assets.insert(a.clone());
                self.owner.insert(a.clone(), idx);
            }
            if let Err(e) = self.shards[idx].tx.try_send(ShardCmd::Subscribe(list)) {
                let ShardCmd::Subscribe(list) = e.into_inner() else { unreachable!("sent a subscribe") };
                tracing::warn!(conn = idx, assets = list.len(), "shard command queue full; assets picked up at the next refresh");
                for a in list {
                    self.shards[idx].assets.remove(&a);
                    self.owner.remove(&a);
                }
            }
        }
        // New shards (they open gradually: `StreamCtx::handshake_slot`).
        for (idx, set) in placed.fresh {
            debug_assert_eq!(idx, self.shards.len(), "fresh shards come in order");
            let (tx, rx) = mpsc::channel(1024);
            let shared = Arc::new(ShardShared::default());
            self.stats.shards.lock().expect("not poisoned").push(shared.clone());
            self.shards.push(ShardHandle { tx, assets: set.iter().cloned().collect(), shared });
            for a in &set {
                self.owner.insert(a.clone(), idx);
            }
            self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
            if let Some(at) = start_gap {
                ctx.send_gap(GapEvent::Open {
                    conn: idx as i32,
                    assets: set.iter().map(|a| a.to_string()).collect(),
                    reason: GapReason::Start,
                    at,
                });
            }
            let (up_tx, up_rx) = oneshot::channel();
            ups.push(up_rx);
            let shard = Shard {
                id: idx as i32,
                assets: set,
                cmd_rx: rx,
                ctx: ctx.clone(),
                shared: self.shards[idx].shared.clone(),
                // Handshakes are paced by the shards themselves (`StreamCtx::handshake_slot`).
                start_delay: Duration::ZERO,
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
        let mut per_shard: HashMap<usize, Vec<AssetId>> = HashMap::new();
        for a in assets {
            if let Some((a, idx)) = self.owner.remove_entry(a.as_str()) {
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
                    if !rest(cancel, Duration::from_secs(2)).await {
                        return Vec::new();
                    }
                }
            }
        }
    }

    /// The subscription set (see [`desired`]) for the settings in force now.
    async fn desired(&self) -> Result<Vec<Vec<String>>, DbError> {
        let cfg = self.live.borrow().clone();
        desired(&cfg, &self.deps.pool).await
    }
}

/// Whether the scope is every market (no token list, tags or thresholds).
fn scope_is_everything(cfg: &StreamConfig) -> bool {
    cfg.token_ids.is_empty() && cfg.tag_slugs.is_empty() && cfg.min_volume_24h == 0 && cfg.min_liquidity == 0
}

/// The subscription set for `cfg`, grouped by market: its explicit token list (one group
/// each), or the catalog's tokens in scope.
pub async fn desired(cfg: &StreamConfig, pool: &Pool) -> Result<Vec<Vec<String>>, DbError> {
    if !cfg.token_ids.is_empty() {
        return Ok(cfg.token_ids.iter().filter(|t| cfg.shard.owns(t)).map(|t| vec![t.clone()]).collect());
    }
    let scope = StreamScope {
        min_volume_24h: rust_decimal::Decimal::from(cfg.min_volume_24h),
        min_liquidity: rust_decimal::Decimal::from(cfg.min_liquidity),
        tag_slugs: cfg.tag_slugs.clone(),
    };
    let conn = pool.get().await?;
    Ok(catalog::stream_token_ids(&*conn, &scope, cfg.shard).await?)
}
