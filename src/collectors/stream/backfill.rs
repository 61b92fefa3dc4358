//! The Data API backfill of gaps: each closed unplanned gap (and each short planned one) has
//! the trades of its markets fetched for its window and stored idempotently, once the writer
//! committed everything received before the gap's end; the outcome is marked on the gap's row
//! (`db::gaps`). The gaps themselves are recorded by [`super::gaps`].

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
/// [`super::gaps::record`].
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
