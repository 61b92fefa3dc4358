//! Gaps as data: every interval in which subscribed assets were not captured becomes a
//! `stream_gaps` row; after an unplanned gap the trades of its markets are backfilled from the
//! Data API for the gap window and the gap is marked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{GapEvent, StreamStats};
use crate::daemon::journal;
use crate::db::Pool;
use crate::db::writer::{self, Row, TradeSource};
use crate::polymarket::client::{ClientError, PolymarketClient, Route, error_chain};
use crate::polymarket::data;

/// A closed gap to backfill.
#[derive(Debug, Clone)]
pub struct ClosedGap {
    pub id: i64,
    pub assets: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
}

/// Records gap events in order, retrying while the database is away; hands unplanned closed
/// gaps to the backfill.
pub async fn record(
    pool: Pool,
    mut rx: mpsc::Receiver<GapEvent>,
    backfill_tx: Option<mpsc::Sender<ClosedGap>>,
    stats: Arc<StreamStats>,
) {
    let mut open: HashMap<i32, (i64, Vec<String>, DateTime<Utc>)> = HashMap::new();
    while let Some(event) = rx.recv().await {
        let mut delay = Duration::from_millis(200);
        loop {
            let result: Result<(), crate::db::DbError> = async {
                let conn = pool.get().await?;
                match &event {
                    GapEvent::Open { conn: c, assets, reason, at } => {
                        let row = conn
                            .query_one(
                                "INSERT INTO stream_gaps (connection, assets, asset_count, started_at, reason, planned)
                                 VALUES ($1, $2, $3, $4, $5, false) RETURNING id",
                                &[c, assets, &(assets.len() as i32), at, reason],
                            )
                            .await?;
                        let id: i64 = row.get(0);
                        stats.gaps.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(message_id = journal::GAP_OPENED, gap_id = id, conn = c, assets = assets.len(), reason = %reason, "capture gap opened on connection {c} ({} assets): {reason}", assets.len());
                        open.insert(*c, (id, assets.clone(), *at));
                    }
                    GapEvent::Close { conn: c, at } => {
                        if let Some((id, assets, started)) = open.remove(c) {
                            conn.execute("UPDATE stream_gaps SET ended_at = $2 WHERE id = $1", &[&id, at]).await?;
                            tracing::info!(message_id = journal::GAP_CLOSED, gap_id = id, conn = c,
                                secs = (*at - started).num_milliseconds() as f64 / 1000.0, "capture gap closed");
                            if let Some(tx) = &backfill_tx {
                                let _ = tx.try_send(ClosedGap { id, assets, started_at: started, ended_at: *at });
                            }
                        }
                    }
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a gap yet, retrying: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// At start: closes the planned gap a clean stop left open, or — after a crash, when none is
/// open — records the interval since the last captured frame as an unplanned gap. Returns the
/// unplanned gap to backfill, if any.
pub async fn on_start(pool: &Pool, assets: &[String], now: DateTime<Utc>) -> Result<Option<ClosedGap>, crate::db::DbError> {
    let conn = pool.get().await?;
    let closed = conn
        .execute("UPDATE stream_gaps SET ended_at = $1 WHERE planned AND ended_at IS NULL", &[&now])
        .await?;
    // Per-connection gaps a crash left open end now too.
    let crashed = conn
        .query(
            "UPDATE stream_gaps SET ended_at = $1 WHERE NOT planned AND ended_at IS NULL RETURNING id, assets, started_at",
            &[&now],
        )
        .await?;
    if closed > 0 {
        tracing::info!(message_id = journal::GAP_CLOSED, gaps = closed, "planned gap of the last stop closed");
        return Ok(crashed.first().map(|r| ClosedGap { id: r.get(0), assets: r.get(1), started_at: r.get(2), ended_at: now }));
    }
    let last: Option<DateTime<Utc>> = conn
        .query_one(
            // Every trade moves its book, and upstream then sends the new book: the last
            // stream book (indexed by received_at) is the last captured moment.
            "SELECT max(received_at) FROM book_snapshots WHERE source = 'ws'",
            &[],
        )
        .await?
        .get(0);
    let Some(last) = last.filter(|l| *l < now) else { return Ok(None) };
    let row = conn
        .query_one(
            "INSERT INTO stream_gaps (connection, assets, asset_count, started_at, ended_at, reason, planned)
             VALUES (NULL, $1, $2, $3, $4, 'restart after an unclean stop', false) RETURNING id",
            &[&assets, &(assets.len() as i32), &last, &now],
        )
        .await?;
    let id: i64 = row.get(0);
    tracing::warn!(message_id = journal::GAP_OPENED, gap_id = id, since = %last, "stream restarted after an unclean stop: gap recorded");
    Ok(Some(ClosedGap { id, assets: assets.to_vec(), started_at: last, ended_at: now }))
}

/// At a clean stop: one planned gap for every subscribed asset, closed at the next start.
pub async fn on_stop(pool: &Pool, assets: &[String], now: DateTime<Utc>) -> Result<(), crate::db::DbError> {
    let conn = pool.get().await?;
    conn.execute(
        "INSERT INTO stream_gaps (connection, assets, asset_count, started_at, reason, planned)
         VALUES (NULL, $1, $2, $3, 'shutdown', true)",
        &[&assets, &(assets.len() as i32), &now],
    )
    .await?;
    tracing::info!(message_id = journal::GAP_OPENED, assets = assets.len(), "planned gap recorded for the stop");
    Ok(())
}

/// Backfills gaps one at a time, within the Data API budget.
pub async fn backfill_loop(pool: Pool, client: Arc<PolymarketClient>, mut rx: mpsc::Receiver<ClosedGap>, cancel: CancellationToken) {
    loop {
        let gap = tokio::select! {
            _ = cancel.cancelled() => return,
            g = rx.recv() => match g { Some(g) => g, None => return },
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = backfill(&pool, &client, &gap) => r,
        };
        let (status, count) = match &result {
            Ok(n) => ("done".to_string(), Some(*n as i32)),
            Err(e) => (format!("failed: {e}"), None),
        };
        match &result {
            Ok(n) => tracing::info!(message_id = journal::BACKFILL, gap_id = gap.id, trades = n, "gap backfilled"),
            Err(e) => tracing::error!(message_id = journal::BACKFILL, gap_id = gap.id, error = %e, "gap {} backfill failed, trades of the gap may be missing: {e}", gap.id),
        }
        if let Ok(conn) = pool.get().await {
            let _ = conn
                .execute(
                    "UPDATE stream_gaps SET backfill_status = $2, backfilled_at = now(), backfill_trades = $3 WHERE id = $1",
                    &[&gap.id, &status, &count],
                )
                .await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("database: {0}")]
    Db(String),
    #[error("data api: {0}")]
    Upstream(#[from] ClientError),
    #[error("data api payload: {0}")]
    Payload(String),
}

/// Condition ids per Data API request (the v2 limit).
const CONDITIONS_PER_REQUEST: usize = 20;
/// Pages per condition group before giving up on reaching the gap start.
const MAX_PAGES: usize = 200;
/// Block time vs. match time: the windows are widened by this much.
const SLACK_SECS: i64 = 5;

/// Fetches the gap's trades (v2 `/v2/trades` with cursor paging, newest first; v1 `/trades`
/// with a time window when v2 is not served) and inserts those not already present.
pub async fn backfill(pool: &Pool, client: &PolymarketClient, gap: &ClosedGap) -> Result<u64, BackfillError> {
    let db = |e: tokio_postgres::Error| BackfillError::Db(error_chain(&e));
    let conditions: Vec<String> = {
        let conn = pool.get().await.map_err(|e| BackfillError::Db(e.to_string()))?;
        conn.query(
            "SELECT DISTINCT condition_id FROM tokens WHERE token_id = ANY($1) ORDER BY 1",
            &[&gap.assets],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let assets: HashSet<&str> = gap.assets.iter().map(String::as_str).collect();
    let from = gap.started_at - chrono::Duration::seconds(SLACK_SECS);
    let to = gap.ended_at + chrono::Duration::seconds(SLACK_SECS);
    let mut inserted = 0;
    for group in conditions.chunks(CONDITIONS_PER_REQUEST) {
        let rows = match fetch_v2(client, group, from).await {
            Ok(rows) => rows,
            Err(BackfillError::Upstream(e)) if matches!(e.status(), Some(404 | 405 | 410)) => {
                tracing::info!(error = %e, "Data API v2 trades not served; using v1");
                fetch_v1(client, group, from, to).await?
            }
            Err(e) => return Err(e),
        };
        let now = Utc::now();
        let trades: Vec<Row> = rows
            .into_iter()
            .filter(|t| assets.contains(t.asset_id.as_str()) && t.source_ts >= from && t.source_ts <= to)
            .map(|trade| Row::Trade { trade, received_at: now, source: TradeSource::Backfill })
            .collect();
        if trades.is_empty() {
            continue;
        }
        inserted += writer::write_batch(pool, &trades).await.map_err(|e| BackfillError::Db(e.to_string()))?;
    }
    Ok(inserted)
}

async fn fetch_v2(client: &PolymarketClient, conditions: &[String], from: DateTime<Utc>) -> Result<Vec<crate::polymarket::ws::Trade>, BackfillError> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut url = client.data_url.join("v2/trades").expect("static path");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("condition", &conditions.join(","));
            q.append_pair("taker_only", "true");
            match &cursor {
                Some(c) => { q.append_pair("cursor", c); }
                None => { q.append_pair("limit", "500"); }
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
        // Newest first: once a page reaches before the gap, the rest is older still.
        if next.is_none() || oldest.is_some_and(|o| o < from) || rows.is_empty() {
            return Ok(out);
        }
        cursor = next;
    }
    Ok(out)
}

async fn fetch_v1(client: &PolymarketClient, conditions: &[String], from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<crate::polymarket::ws::Trade>, BackfillError> {
    let mut out = Vec::new();
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
            break;
        }
    }
    Ok(out)
}
