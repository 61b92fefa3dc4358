//! Gaps as data: every interval in which subscribed assets were not captured becomes a
//! `stream_gaps` row (SQL in `db::gaps`); after an unplanned gap the trades of its markets
//! are backfilled from the Data API for the gap window and the gap is marked.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::StreamStats;
use super::sink::Sink;
use crate::backoff::{Backoff, rest};
use crate::clock;
use crate::db::gaps::{self as db_gaps, GapRow};
use crate::db::stream::{self, Row, TradeSource};
use crate::db::{DbError, Pool, catalog};
use crate::journal;
use crate::polymarket::client::{ClientError, PolymarketClient, Route};
use crate::polymarket::data;

/// Why assets were not captured (`stream_gaps.reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GapReason {
    /// No data frame for the silence timeout.
    Stall,
    /// Assets without a first `book` past the deadline.
    MissingBooks(usize),
    /// The server closed the connection.
    Closed(String),
    /// The connection failed (read/write error).
    Error(String),
    /// Connecting failed or the handshake was refused.
    Connect(String),
    /// The shard's task panicked; it is restarted by the supervisor.
    TaskPanicked,
    /// A clean stop (planned).
    Shutdown,
    /// The daemon started after a stop that recorded no planned gap (a crash, kill -9).
    UncleanRestart,
    /// From the daemon's start until this connection's first data (connections open
    /// gradually).
    Start,
}

impl std::fmt::Display for GapReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GapReason::Stall => write!(f, "stall"),
            GapReason::MissingBooks(n) => write!(f, "no first book for {n} assets"),
            GapReason::Closed(r) => write!(f, "closed: {r}"),
            GapReason::Error(e) => write!(f, "error: {e}"),
            GapReason::Connect(e) => write!(f, "{e}"),
            GapReason::TaskPanicked => write!(f, "task panicked"),
            GapReason::Shutdown => write!(f, "shutdown"),
            GapReason::UncleanRestart => write!(f, "restart after an unclean stop"),
            GapReason::Start => write!(f, "start: until the first data"),
        }
    }
}

/// A connection's capture gap begins or ends.
#[derive(Debug, Clone)]
pub enum GapEvent {
    Open {
        conn: i32,
        assets: Vec<String>,
        reason: GapReason,
        at: DateTime<Utc>,
    },
    Close {
        conn: i32,
        at: DateTime<Utc>,
    },
    /// Rows received but lost (the queue full and the spool unable to take them): a closed gap
    /// over their assets and receive times, backfilled like any other.
    Lost {
        assets: Vec<String>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        rows: u64,
    },
    /// Level changes no writer stored: a takeover's standby window did not reach back to the
    /// previous writer's last commit (`takeover`).
    Takeover {
        assets: Vec<String>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

/// Delays between attempts to record a gap while the database is away.
const RECORD_RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// Records gap events in order, retrying each while the database is away; hands closed
/// unplanned gaps to the backfill. Keeps no state of its own (the database does), so a
/// restart after a panic takes over the queue where it stood.
pub async fn record(
    pool: Pool,
    instance: Arc<str>,
    rx: Arc<Mutex<mpsc::Receiver<GapEvent>>>,
    backfill_tx: Option<mpsc::Sender<GapRow>>,
    stats: Arc<StreamStats>,
) {
    let mut rx = rx.lock_owned().await;
    while let Some(event) = rx.recv().await {
        let mut retries = RECORD_RETRY.start();
        loop {
            match apply(&pool, &instance, &event, &stats).await {
                Ok(Some(closed)) => {
                    if let Some(tx) = &backfill_tx {
                        if tx.try_send(closed).is_err() {
                            tracing::error!(message_id = journal::BACKFILL, "backfill queue full: a gap will not be backfilled");
                        }
                    }
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a gap yet, retrying: {e}");
                    tokio::time::sleep(retries.next_delay()).await;
                }
            }
        }
    }
}

async fn apply(pool: &Pool, instance: &str, event: &GapEvent, stats: &StreamStats) -> Result<Option<GapRow>, DbError> {
    match event {
        GapEvent::Open { conn, assets, reason, at } => {
            let reason = reason.to_string();
            if let Some(id) = db_gaps::open(pool, instance, *conn, assets, *at, &reason).await? {
                stats.gaps.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(message_id = journal::GAP_OPENED, gap_id = id, conn, assets = assets.len(), reason = %reason, since = %at,
                    "capture gap opened on connection {conn} ({} assets): {reason}", assets.len());
            }
            Ok(None)
        }
        GapEvent::Lost { assets, from, to, rows } => {
            let reason = format!("{rows} rows lost: the write queue was full and the spool could not keep them");
            let gap = db_gaps::insert_closed(pool, instance, assets, *from, *to, &reason).await?;
            stats.gaps.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(message_id = journal::GAP_OPENED, gap_id = gap.id, assets = assets.len(), rows, since = %from, until = %to,
                "capture gap recorded for {rows} lost rows ({} assets): their trades will be backfilled", assets.len());
            Ok(Some(gap))
        }
        GapEvent::Takeover { assets, from, to } => {
            let reason = "takeover: no instance of the slice kept these level changes";
            let gap = db_gaps::insert_closed(pool, instance, assets, *from, *to, reason).await?;
            stats.gaps.fetch_add(1, Ordering::Relaxed);
            Ok(Some(gap))
        }
        GapEvent::Close { conn, at } => {
            let closed = db_gaps::close(pool, instance, *conn, *at).await?;
            if let Some(g) = &closed {
                tracing::info!(
                    message_id = journal::GAP_CLOSED,
                    gap_id = g.id,
                    conn,
                    secs = (g.ended_at - g.started_at).num_milliseconds() as f64 / 1000.0,
                    "capture gap closed"
                );
            }
            Ok(closed)
        }
    }
}

/// At start: closes the planned gap a clean stop left open, and the per-connection gaps a
/// crash left open; when no planned gap was open (a crash), records the interval since the
/// last captured frame as an unplanned gap. Returns the gaps to backfill — every unplanned
/// one, and planned ones no longer than `planned_max` (an upgrade's restart; not a week off)
/// — and whether the stream captured before (then each connection's start is a gap too,
/// until its first data).
pub async fn on_start(
    pool: &Pool,
    instance: &str,
    assets: &[String],
    now: DateTime<Utc>,
    planned_max: Duration,
) -> Result<(Vec<GapRow>, bool), DbError> {
    let (planned, crashed) = db_gaps::close_at_start(pool, instance, now).await?;
    let resumed = if !planned.is_empty() {
        tracing::info!(message_id = journal::GAP_CLOSED, gaps = planned.len(), "planned gap of the last stop closed");
        true
    } else if let Some(last) = db_gaps::last_captured(pool, instance).await?.filter(|l| *l < now) {
        let gap = db_gaps::insert_closed(pool, instance, assets, last, now, &GapReason::UncleanRestart.to_string()).await?;
        tracing::warn!(message_id = journal::GAP_OPENED, gap_id = gap.id, since = %last, "stream restarted after an unclean stop: gap recorded");
        true
    } else {
        !crashed.is_empty()
    };
    // Everything still owed: the gaps just closed, and earlier backfills that failed or were
    // interrupted by the stop.
    Ok((db_gaps::owed(pool, instance, planned_max).await?, resumed))
}

/// At a clean stop: one planned gap for every subscribed asset, closed at the next start.
pub async fn on_stop(pool: &Pool, instance: &str, assets: &[String], now: DateTime<Utc>) -> Result<(), DbError> {
    db_gaps::insert_planned(pool, instance, assets, now, &GapReason::Shutdown.to_string()).await?;
    tracing::info!(message_id = journal::GAP_OPENED, assets = assets.len(), "planned gap recorded for the stop");
    Ok(())
}

/// Delays between attempts at one gap's backfill (Data API away, database away).
const BACKFILL_RETRY: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(600));

/// What the backfill works with.
#[derive(Clone)]
pub struct Backfiller {
    pub pool: Pool,
    pub client: Arc<PolymarketClient>,
    pub sink: Arc<Sink>,
    pub stats: Arc<StreamStats>,
    /// The writer's dictionary keys (one cache, and one lock for making a day's partitions).
    pub keys: Arc<stream::Keys>,
    /// Data API pages per group of markets before a backfill stops short (partial).
    pub max_pages: usize,
}

/// The gaps waiting for a backfill: new ones from the gap recorder, and failed ones waiting
/// for their retry time. Shared, so a backfill task restarted after a panic takes it over with
/// the retries it scheduled.
#[derive(Clone)]
pub struct BackfillQueue {
    rx: Arc<Mutex<mpsc::Receiver<GapRow>>>,
    retries: Arc<std::sync::Mutex<Vec<(tokio::time::Instant, GapRow)>>>,
}

impl BackfillQueue {
    pub fn new(rx: mpsc::Receiver<GapRow>) -> Self {
        BackfillQueue { rx: Arc::new(Mutex::new(rx)), retries: Arc::default() }
    }

    /// The gap whose retry time came first, if it has come.
    fn due(&self) -> Option<GapRow> {
        let mut retries = self.retries.lock().expect("retries lock");
        let now = tokio::time::Instant::now();
        let i = retries.iter().enumerate().filter(|(_, (at, _))| *at <= now).min_by_key(|(_, (at, _))| *at).map(|(i, _)| i)?;
        Some(retries.swap_remove(i).1)
    }

    fn next_retry(&self) -> Option<tokio::time::Instant> {
        self.retries.lock().expect("retries lock").iter().map(|(at, _)| *at).min()
    }

    fn retry_at(&self, at: tokio::time::Instant, gap: GapRow) {
        self.retries.lock().expect("retries lock").push((at, gap));
    }
}

/// Backfills gaps one at a time, within the Data API budget, each only once the writer has
/// committed every row received before the gap's end (so the stream's own copy of a trade is
/// always stored first). A failed attempt is retried with backoff (the queue holds it until
/// its time, in this task: no timer of its own); the attempts and the outcome are on the
/// gap's row, so a restart picks up what is still owed ([`db_gaps::owed`]). Restartable like
/// [`record`].
pub async fn backfill_loop(b: Backfiller, queue: BackfillQueue, cancel: CancellationToken) {
    let Backfiller { pool, client, sink, stats, keys, max_pages } = b;
    let mut rx = queue.rx.clone().lock_owned().await;
    loop {
        let gap = match queue.due() {
            Some(g) => g,
            None => {
                let next_retry = queue.next_retry();
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    g = rx.recv() => match g { Some(g) => g, None => return },
                    _ = tokio::time::sleep_until(next_retry.unwrap_or_else(tokio::time::Instant::now)), if next_retry.is_some() => continue,
                }
            }
        };
        // The window reaches past the gap's end by the slack: rows received live in it must
        // be committed first too, or a late live copy would follow its backfilled twin.
        let window_end = gap.ended_at + chrono::Duration::seconds(SLACK_SECS);
        while sink.committed_through() < window_end {
            if !rest(&cancel, Duration::from_millis(200)).await {
                return;
            }
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = backfill(&pool, &keys, &client, &gap, max_pages) => r,
        };
        if let Ok(b) = &result {
            // Counted where the documentation says: new trades stored, and the backfill's part.
            sink.stats.trades_inserted.fetch_add(b.inserted, Ordering::Relaxed);
            stats.trades_backfilled.fetch_add(b.inserted, Ordering::Relaxed);
        }
        let outcome = match &result {
            Ok(b) => match b.covered_from {
                None => BackfillOutcome::Done(b.inserted),
                Some(from) => BackfillOutcome::Partial(b.inserted, from),
            },
            Err(e) if e.is_final() => BackfillOutcome::Failed(e.to_string()),
            Err(e) => BackfillOutcome::Retrying(e.to_string()),
        };
        if matches!(outcome, BackfillOutcome::Done(_) | BackfillOutcome::Partial(..)) {
            stats.gaps_backfilled.fetch_add(1, Ordering::Relaxed);
        }
        match &outcome {
            BackfillOutcome::Done(n) => tracing::info!(message_id = journal::BACKFILL, gap_id = gap.id, trades = n, "gap backfilled"),
            BackfillOutcome::Partial(n, from) => {
                tracing::warn!(message_id = journal::BACKFILL, gap_id = gap.id, trades = n, covered_from = %from,
                "gap {} backfilled only from {from} (a page cap cut it short): trades before may be missing", gap.id)
            }
            BackfillOutcome::Failed(e) => tracing::error!(message_id = journal::BACKFILL, gap_id = gap.id, error = %e,
                "gap {} backfill failed, trades of the gap may be missing: {e}", gap.id),
            BackfillOutcome::Retrying(e) => tracing::warn!(message_id = journal::BACKFILL, gap_id = gap.id, error = %e,
                "gap {} backfill failed, will retry: {e}", gap.id),
        }
        let attempts = match db_gaps::set_backfill(&pool, gap.id, &outcome.status(), outcome.trades(), outcome.covered_from()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(gap_id = gap.id, error = %e, "cannot record the backfill result: {e}");
                1
            }
        };
        if matches!(outcome, BackfillOutcome::Retrying(_)) {
            let delay = BACKFILL_RETRY.delay(attempts.saturating_sub(1) as u32);
            queue.retry_at(tokio::time::Instant::now() + delay, gap);
        }
    }
}

/// How one backfill attempt ended (`stream_gaps.backfill_status`).
#[derive(Debug, Clone, PartialEq)]
pub enum BackfillOutcome {
    Done(u64),
    Partial(u64, DateTime<Utc>),
    /// Retrying will not help (a request upstream refuses).
    Failed(String),
    /// Retried later, also after a restart.
    Retrying(String),
}

impl BackfillOutcome {
    pub fn status(&self) -> String {
        match self {
            BackfillOutcome::Done(_) => "done".into(),
            BackfillOutcome::Partial(..) => "partial".into(),
            BackfillOutcome::Failed(e) => format!("failed: {e}"),
            BackfillOutcome::Retrying(e) => format!("retrying: {e}"),
        }
    }

    fn trades(&self) -> Option<i32> {
        match self {
            BackfillOutcome::Done(n) | BackfillOutcome::Partial(n, _) => Some(*n as i32),
            _ => None,
        }
    }

    fn covered_from(&self) -> Option<DateTime<Utc>> {
        match self {
            BackfillOutcome::Partial(_, from) => Some(*from),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("data api: {0}")]
    Upstream(#[from] ClientError),
    #[error("data api payload: {0}")]
    Payload(String),
}

impl BackfillError {
    /// Retrying will not help: upstream refuses the request itself.
    pub fn is_final(&self) -> bool {
        matches!(self, BackfillError::Upstream(ClientError::Rejected { .. }))
    }
}

/// Condition ids per Data API request (the v2 limit).
const CONDITIONS_PER_REQUEST: usize = 20;
/// Block time vs. match time: the windows are widened by this much.
const SLACK_SECS: i64 = 5;

/// Fetches the gap's trades (v2 `/v2/trades` with cursor paging, newest first; v1 `/trades`
/// with a time window when v2 is not served) and inserts those not already present.
/// `max_pages`: Data API pages per group of conditions before the backfill stops short of
/// the gap's start (and is marked partial).
pub async fn backfill(
    pool: &Pool,
    keys: &stream::Keys,
    client: &PolymarketClient,
    gap: &GapRow,
    max_pages: usize,
) -> Result<Backfilled, BackfillError> {
    let conditions = {
        let conn = pool.get().await.map_err(DbError::from)?;
        catalog::conditions_of(&*conn, &gap.assets).await.map_err(DbError::from)?
    };
    let assets: HashSet<&str> = gap.assets.iter().map(String::as_str).collect();
    let from = gap.started_at - chrono::Duration::seconds(SLACK_SECS);
    let to = gap.ended_at + chrono::Duration::seconds(SLACK_SECS);
    let mut inserted = 0;
    let mut covered_from: Option<DateTime<Utc>> = None;
    for group in conditions.chunks(CONDITIONS_PER_REQUEST) {
        let (rows, cut) = match fetch_v2(client, group, from, max_pages).await {
            Ok(fetched) => fetched,
            Err(BackfillError::Upstream(e)) if matches!(e.status(), Some(404 | 405 | 410)) => {
                tracing::info!(error = %e, "Data API v2 trades not served; using v1");
                fetch_v1(client, group, from, to).await?
            }
            Err(e) => return Err(e),
        };
        let now = clock::now();
        let trades: Vec<Row> = rows
            .into_iter()
            .filter(|t| assets.contains(t.asset_id.as_str()) && t.source_ts >= from && t.source_ts <= to)
            .map(|trade| Row::Trade { trade, received_at: now, source: TradeSource::Backfill })
            .collect();
        if let Some(c) = cut {
            covered_from = Some(covered_from.map_or(c, |x| x.max(c)));
        }
        if trades.is_empty() {
            continue;
        }
        inserted += stream::write_batch(pool, keys, &trades, stream::Origin::Live).await?;
    }
    Ok(Backfilled { inserted, covered_from: covered_from.filter(|c| *c > gap.started_at) })
}

/// What a backfill stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backfilled {
    pub inserted: u64,
    /// Set when a page or offset cap cut the backfill short: the gap is covered only from
    /// here to its end.
    pub covered_from: Option<DateTime<Utc>>,
}

/// Trades fetched, and — when a page or offset cap stopped the paging before the window's
/// start — the oldest time reached (the window is covered only from there).
type Fetched = (Vec<crate::polymarket::ws::Trade>, Option<DateTime<Utc>>);

async fn fetch_v2(
    client: &PolymarketClient,
    conditions: &[String],
    from: DateTime<Utc>,
    max_pages: usize,
) -> Result<Fetched, BackfillError> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut reached: Option<DateTime<Utc>> = None;
    for _ in 0..max_pages {
        let mut url = client.data_url.join("v2/trades").expect("static path");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("condition", &conditions.join(","));
            q.append_pair("taker_only", "true");
            match &cursor {
                Some(c) => {
                    q.append_pair("cursor", c);
                }
                None => {
                    q.append_pair("limit", "500");
                }
            }
        }
        let body = client.get_json(Route::DataTrades, url).await?;
        let (rows, next) = data::v2_page(&body).map_err(|e| BackfillError::Payload(e.to_string()))?;
        let mut oldest: Option<DateTime<Utc>> = None;
        for r in &rows {
            match data::decode_trade(r) {
                Ok(t) => {
                    oldest = Some(oldest.map_or(t.source_ts, |o| o.min(t.source_ts)));
                    out.push(t);
                }
                Err(e) => tracing::warn!(error = %e, "undecodable Data API trade skipped"),
            }
        }
        reached = oldest.or(reached);
        // Newest first: once a page reaches before the gap, the rest is older still.
        if next.is_none() || oldest.is_some_and(|o| o < from) || rows.is_empty() {
            return Ok((out, None));
        }
        cursor = next;
    }
    Ok((out, Some(reached.unwrap_or(from))))
}

async fn fetch_v1(
    client: &PolymarketClient,
    conditions: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Fetched, BackfillError> {
    let mut out: Vec<crate::polymarket::ws::Trade> = Vec::new();
    const PAGE: usize = 500;
    // v1 offsets stop at 10,000.
    for offset in (0..=10_000).step_by(PAGE) {
        let mut url = client.data_url.join("trades").expect("static path");
        url.query_pairs_mut()
            .append_pair("market", &conditions.join(","))
            .append_pair("takerOnly", "true")
            .append_pair("start", &from.timestamp().to_string())
            .append_pair("end", &to.timestamp().to_string())
            .append_pair("limit", &PAGE.to_string())
            .append_pair("offset", &offset.to_string());
        let body = client.get_json(Route::DataTrades, url).await?;
        let rows = body.as_array().cloned().unwrap_or_default();
        for r in &rows {
            match data::decode_trade(r) {
                Ok(t) => out.push(t),
                Err(e) => tracing::warn!(error = %e, "undecodable Data API trade skipped"),
            }
        }
        if rows.len() < PAGE {
            return Ok((out, None));
        }
    }
    // The offset cap: v1 lists newest first, so the window is covered back to the oldest seen.
    let reached = out.iter().map(|t| t.source_ts).min().unwrap_or(from);
    Ok((out, Some(reached)))
}
