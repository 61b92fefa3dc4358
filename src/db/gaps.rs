//! `stream_gaps`: every interval in which subscribed assets were not captured. Recording is
//! keyed by instance and connection so it needs no memory of its own: a gap is opened unless
//! one is already open for that connection of that instance, and closed the same way. Each
//! instance sharing a database (docs/scaling.md) opens, closes and backfills its own gaps;
//! gaps of the release before (no instance) are every instance's.

use chrono::{DateTime, Utc};

use super::{DbError, Pool};

/// A gap as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GapRow {
    pub id: i64,
    pub assets: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
}

/// A gap read back as `RETURNING id, assets, started_at, ended_at` (or selected so).
fn gap_row(r: &tokio_postgres::Row) -> GapRow {
    GapRow { id: r.get(0), assets: r.get(1), started_at: r.get(2), ended_at: r.get(3) }
}

/// Opens an unplanned gap for connection `conn` unless one is open for it already. Returns
/// the new gap's id, or `None` when one was open.
pub async fn open(
    pool: &Pool,
    instance: &str,
    conn: i32,
    assets: &[String],
    at: DateTime<Utc>,
    reason: &str,
) -> Result<Option<i64>, DbError> {
    let db = pool.get().await?;
    let row = db
        .query_opt(
            "INSERT INTO stream_gaps (instance, connection, assets, asset_count, started_at, reason, planned)
             SELECT $6, $1, $2, $3, $4, $5, false
             WHERE NOT EXISTS (SELECT 1 FROM stream_gaps WHERE instance = $6 AND connection = $1 AND ended_at IS NULL AND NOT planned)
             RETURNING id",
            &[&conn, &assets, &(assets.len() as i32), &at, &reason, &instance],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Closes the open unplanned gap of connection `conn` at `at`, returning it.
pub async fn close(pool: &Pool, instance: &str, conn: i32, at: DateTime<Utc>) -> Result<Option<GapRow>, DbError> {
    let db = pool.get().await?;
    let row = db
        .query_opt(
            "UPDATE stream_gaps SET ended_at = greatest($2, started_at)
             WHERE instance = $3 AND connection = $1 AND ended_at IS NULL AND NOT planned
             RETURNING id, assets, started_at, ended_at",
            &[&conn, &at, &instance],
        )
        .await?;
    Ok(row.as_ref().map(gap_row))
}

/// At start: closes the planned gap of the last clean stop and the per-connection gaps a
/// crash left open; returns both (planned, unplanned).
pub async fn close_at_start(pool: &Pool, instance: &str, now: DateTime<Utc>) -> Result<(Vec<GapRow>, Vec<GapRow>), DbError> {
    let db = pool.get().await?;
    let planned = db
        .query(
            "UPDATE stream_gaps SET ended_at = greatest($1, started_at)
             WHERE planned AND ended_at IS NULL AND (instance = $2 OR instance IS NULL)
             RETURNING id, assets, started_at, ended_at",
            &[&now, &instance],
        )
        .await?;
    let planned = planned.iter().map(gap_row).collect();
    let crashed = db
        .query(
            "UPDATE stream_gaps SET ended_at = greatest($1, started_at)
             WHERE NOT planned AND ended_at IS NULL AND (instance = $2 OR instance IS NULL)
             RETURNING id, assets, started_at, ended_at",
            &[&now, &instance],
        )
        .await?;
    let crashed = crashed.iter().map(gap_row).collect();
    Ok((planned, crashed))
}

/// The last moment this instance captured anything. Alone on its database: every trade moves
/// its book and upstream then sends the new book, so the newest stream book (indexed by
/// `received_at`) marks it. With other instances (`stream_instances`), their books say nothing
/// of this one: its last heartbeat does (up to `db::leader::HEARTBEAT` early: the gap is
/// recorded a little longer, never shorter).
pub async fn last_captured(pool: &Pool, instance: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    let db = pool.get().await?;
    let others: i64 = db.query_one("SELECT count(*) FROM stream_instances WHERE instance <> $1", &[&instance]).await?.get(0);
    if others > 0 {
        return Ok(db.query_opt("SELECT heartbeat_at FROM stream_instances WHERE instance = $1", &[&instance]).await?.map(|r| r.get(0)));
    }
    Ok(db.query_one("SELECT max(received_at) FROM book_snapshots WHERE source = 'ws'", &[]).await?.get(0))
}

/// Records a gap whose both ends are known (`reason` says why), returning it.
pub async fn insert_closed(
    pool: &Pool,
    instance: &str,
    assets: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    reason: &str,
) -> Result<GapRow, DbError> {
    let db = pool.get().await?;
    let row = db
        .query_one(
            "INSERT INTO stream_gaps (instance, connection, assets, asset_count, started_at, ended_at, reason, planned)
             VALUES ($6, NULL, $1, $2, $3, $4, $5, false) RETURNING id",
            &[&assets, &(assets.len() as i32), &from, &to, &reason, &instance],
        )
        .await?;
    Ok(GapRow { id: row.get(0), assets: assets.to_vec(), started_at: from, ended_at: to })
}

/// At a clean stop: one planned gap for every subscribed asset, closed at the next start.
pub async fn insert_planned(pool: &Pool, instance: &str, assets: &[String], at: DateTime<Utc>, reason: &str) -> Result<(), DbError> {
    let db = pool.get().await?;
    db.execute(
        "INSERT INTO stream_gaps (instance, connection, assets, asset_count, started_at, reason, planned)
         VALUES ($5, NULL, $1, $2, $3, $4, true)",
        &[&assets, &(assets.len() as i32), &at, &reason, &instance],
    )
    .await?;
    Ok(())
}

/// Records a backfill attempt's outcome on its gap; returns the attempts so far.
pub async fn set_backfill(
    pool: &Pool,
    id: i64,
    status: &str,
    trades: Option<i32>,
    covered_from: Option<DateTime<Utc>>,
) -> Result<i32, DbError> {
    let db = pool.get().await?;
    let row = db
        .query_one(
            "UPDATE stream_gaps SET backfill_status = $2, backfilled_at = now(), backfill_trades = $3,
                backfill_covered_from = $4, backfill_attempts = backfill_attempts + 1
             WHERE id = $1 RETURNING backfill_attempts",
            &[&id, &status, &trades, &covered_from],
        )
        .await?;
    Ok(row.get(0))
}

/// Closed gaps whose backfill is still owed: never attempted, or failed in a way a retry may
/// fix (`retrying: …`). Planned gaps longer than `planned_max` are marked `skipped` instead.
pub async fn owed(pool: &Pool, instance: &str, planned_max: std::time::Duration) -> Result<Vec<GapRow>, DbError> {
    let db = pool.get().await?;
    let max_secs = planned_max.as_secs_f64();
    db.execute(
        "UPDATE stream_gaps SET backfill_status = 'skipped: a planned gap longer than stream.backfill_planned_max_secs'
         WHERE planned AND ended_at IS NOT NULL AND backfill_status IS NULL AND (instance = $2 OR instance IS NULL)
           AND extract(epoch FROM ended_at - started_at)::float8 > $1",
        &[&max_secs, &instance],
    )
    .await?;
    let rows = db
        .query(
            "SELECT id, assets, started_at, ended_at FROM stream_gaps
             WHERE ended_at IS NOT NULL AND (backfill_status IS NULL OR backfill_status LIKE 'retrying%')
               AND (instance = $1 OR instance IS NULL)
             ORDER BY started_at",
            &[&instance],
        )
        .await?;
    Ok(rows.iter().map(gap_row).collect())
}

/// Claims for `instance` (a standby of `slice`) the closed unplanned gaps of the slice's
/// current writer that ended between `settled` and `reach` ago and no standby filled yet: their
/// level changes may be in the standby's memory window (`collectors::stream::takeover`). Gaps
/// begun over an hour ago are left (the index on `started_at` bounds the look; a window holds
/// minutes at most).
pub async fn claim_writer_gaps(
    pool: &Pool,
    instance: &str,
    slice: &str,
    settled: std::time::Duration,
    reach: std::time::Duration,
) -> Result<Vec<GapRow>, DbError> {
    let db = pool.get().await?;
    let rows = db
        .query(
            "UPDATE stream_gaps g SET filled_by = $1
             FROM stream_writers w
             WHERE w.slice = $2 AND g.instance = w.instance AND g.instance <> $1 AND g.filled_by IS NULL AND NOT g.planned
               AND g.ended_at IS NOT NULL AND g.ended_at < now() - make_interval(secs => $3) AND g.ended_at > now() - make_interval(secs => $4)
               AND g.started_at > now() - interval '1 hour'
             RETURNING g.id, g.assets, g.started_at, g.ended_at",
            &[&instance, &slice, &settled.as_secs_f64(), &reach.as_secs_f64()],
        )
        .await?;
    Ok(rows.iter().map(gap_row).collect())
}

/// Records what a standby wrote of a claimed gap (`None`: nothing could be written, the claim
/// is given back).
pub async fn set_filled(pool: &Pool, id: i64, filled: Option<(i32, DateTime<Utc>)>) -> Result<(), DbError> {
    let db = pool.get().await?;
    match filled {
        Some((rows, from)) => {
            db.execute("UPDATE stream_gaps SET filled_rows = $2, filled_from = $3 WHERE id = $1", &[&id, &rows, &from]).await?
        }
        None => db.execute("UPDATE stream_gaps SET filled_by = NULL WHERE id = $1", &[&id]).await?,
    };
    Ok(())
}
