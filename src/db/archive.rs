//! The archive's bookkeeping in the database (migration 11, docs/archive.md): the manifest of
//! files written (`archive_files`), the hours that received rows after they were archived
//! (`archive_dirty`), and what a day's release from the database requires.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use tokio_postgres::GenericClient;

/// Rows older than this (by the time the archive files them under) may belong to an archived
/// hour: the writer marks their hours dirty. The archive never archives an hour until it has
/// been over for an hour (`archive.after_hours` ≥ 1), and a part written sooner than this
/// after its end (`collector archive --until` inside an hour) is checked again later.
pub const LATE_AFTER: Duration = Duration::minutes(30);

/// One part of an archived hour, as the manifest records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub hour: DateTime<Utc>,
    pub part: i32,
    /// Relative to `archive.dir`; `None` when the part held no rows.
    pub path: Option<String>,
    pub rows: i64,
    pub bytes: i64,
    pub covered_to: DateTime<Utc>,
    /// The snapshot the part was read in (`pg_snapshot` text).
    pub snapshot: String,
    pub written_at: DateTime<Utc>,
}

/// A part to record.
pub struct NewPart<'a> {
    pub table: &'a str,
    pub hour: DateTime<Utc>,
    pub part: i32,
    pub path: Option<&'a str>,
    pub rows: i64,
    pub bytes: i64,
    pub checksum: &'a str,
    pub covered_from: DateTime<Utc>,
    pub covered_to: DateTime<Utc>,
    pub snapshot: &'a str,
}

/// Every part of `table` from `from` on, by hour and part.
pub async fn parts<C: GenericClient>(db: &C, table: &str, from: DateTime<Utc>) -> Result<Vec<Part>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT hour, part, path, rows, bytes, covered_to, snapshot::text, written_at FROM archive_files
             WHERE table_name = $1 AND hour >= $2 ORDER BY hour, part",
            &[&table, &from],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Part {
            hour: r.get(0),
            part: r.get(1),
            path: r.get(2),
            rows: r.get(3),
            bytes: r.get(4),
            covered_to: r.get(5),
            snapshot: r.get(6),
            written_at: r.get(7),
        })
        .collect())
}

/// The newest hour of `table` in the manifest.
pub async fn last_hour<C: GenericClient>(db: &C, table: &str) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    db.query_one("SELECT max(hour) FROM archive_files WHERE table_name = $1", &[&table]).await.map(|r| r.get(0))
}

/// The hours of `table` marked dirty (rows arrived after they were archived, maybe).
pub async fn dirty_hours<C: GenericClient>(db: &C, table: &str) -> Result<Vec<DateTime<Utc>>, tokio_postgres::Error> {
    let rows = db.query("SELECT hour FROM archive_dirty WHERE table_name = $1 ORDER BY hour", &[&table]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Records a part written (in the transaction that read it), and clears the hour's dirty mark
/// as far as that transaction sees it.
pub async fn record<C: GenericClient>(db: &C, p: &NewPart<'_>) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO archive_files (table_name, hour, part, path, rows, bytes, checksum, covered_from, covered_to, snapshot)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::pg_snapshot)",
        &[&p.table, &p.hour, &p.part, &p.path, &p.rows, &p.bytes, &p.checksum, &p.covered_from, &p.covered_to, &p.snapshot],
    )
    .await?;
    db.execute("DELETE FROM archive_dirty WHERE table_name = $1 AND hour = $2", &[&p.table, &p.hour]).await?;
    Ok(())
}

/// Marks the hours of `table` that just received rows older than [`LATE_AFTER`] (in the
/// rows' own transaction): the archive looks at them again.
pub async fn mark_dirty<C: GenericClient>(db: &C, table: &str, hours: &[DateTime<Utc>]) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO archive_dirty (table_name, hour) SELECT $1, h FROM unnest($2::timestamptz[]) AS h ORDER BY 2
         ON CONFLICT (table_name, hour) DO UPDATE SET marked_at = now()",
        &[&table, &hours],
    )
    .await?;
    Ok(())
}

/// Whether every hour of `day` of `table` is archived to its end and not dirty: its rows may
/// leave the database (the files' presence is the caller's to check: [`day_files`]).
pub async fn day_archived<C: GenericClient>(db: &C, table: &str, day: NaiveDate) -> Result<bool, tokio_postgres::Error> {
    let start = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT hour FROM archive_files WHERE table_name = $1 AND hour >= $2 AND hour < $3
                        GROUP BY hour HAVING max(covered_to) >= hour + interval '1 hour') h),
                    (SELECT count(*) FROM archive_dirty WHERE table_name = $1 AND hour >= $2 AND hour < $3)",
            &[&table, &start, &(start + Duration::days(1))],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 24 && row.get::<_, i64>(1) == 0)
}

/// The files of `day` of `table` with their recorded sizes.
pub async fn day_files<C: GenericClient>(db: &C, table: &str, day: NaiveDate) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    let start = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let rows = db
        .query(
            "SELECT path, bytes FROM archive_files WHERE table_name = $1 AND hour >= $2 AND hour < $3 AND path IS NOT NULL",
            &[&table, &start, &(start + Duration::days(1))],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The bytes of every file in the manifest, and those written in the last `window`.
pub async fn bytes<C: GenericClient>(db: &C, window: Duration) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = db
        .query_one(
            "SELECT COALESCE(sum(bytes), 0)::bigint, COALESCE(sum(bytes) FILTER (WHERE written_at > now() - $1::text::interval), 0)::bigint
             FROM archive_files",
            &[&format!("{} seconds", window.num_seconds())],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
