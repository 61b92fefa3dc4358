//! Gaps as data: every interval in which subscribed assets were not captured becomes a
//! `stream_gaps` row (SQL in `db::gaps`); closed unplanned gaps go to the Data API backfill
//! ([`super::backfill`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, mpsc};

use super::StreamStats;
use crate::backoff::Backoff;
use crate::db::gaps::{self as db_gaps, GapRow};
use crate::db::{DbError, Pool};
use crate::journal;

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
