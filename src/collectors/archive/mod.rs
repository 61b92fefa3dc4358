//! The hourly Parquet archive (docs/archive.md): every closed UTC hour of every stream table
//! becomes one verified ZSTD Parquet file, `<archive.dir>/<table>/date=YYYY-MM-DD/hour=HH.parquet`,
//! recorded in `archive_files`; rows that reach an hour after its file was written go to a
//! supplement (`hour=HH.N.parquet`); days every hour of which is archived leave the database
//! after `archive.keep_days`.
//!
//! - [`columns`]: the column kinds, builders and the key checksum.
//! - [`tables`]: each archived table's columns and query.
//! - [`file`]: one file written, read back, verified, renamed into place.
//! - this module: which hours and parts a pass writes ([`pass`]), the release of archived
//!   days, and [`ArchiveCollector`], the daemon's supervised pass.
//!
//! Exactly once: a part is read in one `REPEATABLE READ` transaction, which records the part
//! (with its snapshot) and commits only once the file is in place. A later part of the hour
//! takes the rows not visible in the last part's snapshot (`collector_xid8`, migration 11), and
//! the source times past its `covered_to`. A crash before the commit leaves no manifest row:
//! the part is written again (over any file a crash left at its path). Gaps are archived once
//! settled, each once (`stream_gaps.archived_at`).

pub mod columns;
pub mod file;
pub mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use serde::Serialize;
use tokio_postgres::IsolationLevel;

use self::tables::{First, TABLES, Table, time_column};
use super::{CollectError, Collector};
use crate::clock;
use crate::config::ArchiveConfig;
use crate::db::archive::{self as manifest, LATE_AFTER, NewPart, Part};
use crate::db::copy_out::CopyOutError;
use crate::db::{DbError, Pool, partitions};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("parquet: {0}")]
    Parquet(String),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("archive.dir {dir} is not writable: {source} (set archive.dir to a writable directory, or archive.enabled = false)")]
    NotWritable { dir: String, source: std::io::Error },
    #[error("reading the database: {0}")]
    Copy(String),
}

impl ArchiveError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ArchiveError::Io { path: path.display().to_string(), source }
    }
}

impl From<tokio_postgres::Error> for ArchiveError {
    fn from(e: tokio_postgres::Error) -> Self {
        ArchiveError::Db(DbError::Query(e))
    }
}

impl From<bb8::RunError<tokio_postgres::Error>> for ArchiveError {
    fn from(e: bb8::RunError<tokio_postgres::Error>) -> Self {
        ArchiveError::Db(e.into())
    }
}

impl From<CopyOutError> for ArchiveError {
    fn from(e: CopyOutError) -> Self {
        match e {
            CopyOutError::Db(e) => e.into(),
            CopyOutError::Format(f) => ArchiveError::Copy(f),
        }
    }
}

/// What one pass wrote, per table, and which partitions it released.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PassReport {
    /// Rows before this bound (source time; books: receive time) are archived.
    pub until: Option<DateTime<Utc>>,
    pub tables: BTreeMap<String, TableReport>,
    /// Day partitions dropped from the database (every hour of them archived and verified).
    pub released: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct TableReport {
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
}

impl PassReport {
    pub fn files(&self) -> u64 {
        self.tables.values().map(|t| t.files).sum()
    }
}

/// The default bound of a pass: `after_hours` before now, down to the hour.
pub fn default_until(cfg: &ArchiveConfig) -> DateTime<Utc> {
    let t = clock::now() - chrono::Duration::hours(cfg.after_hours as i64);
    t.duration_trunc(chrono::Duration::hours(1)).unwrap_or(t)
}

/// Creates `archive.dir` if needed and proves it writable (a probe file): the daemon refuses
/// to start with an archive it cannot write.
pub fn check_dir(cfg: &ArchiveConfig) -> Result<(), ArchiveError> {
    let not_writable = |source| ArchiveError::NotWritable { dir: cfg.dir.display().to_string(), source };
    std::fs::create_dir_all(&cfg.dir).map_err(not_writable)?;
    let probe = cfg.dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe").map_err(not_writable)?;
    std::fs::remove_file(&probe).map_err(not_writable)
}

/// One pass: every table archived up to `until` (rows with an earlier time in verified files),
/// then the archived days past `keep_days` released.
pub async fn pass(pool: &Pool, cfg: &ArchiveConfig, until: DateTime<Utc>) -> Result<PassReport, ArchiveError> {
    check_dir(cfg)?;
    // One pass at a time per database (the daemon's and `collector archive`, or two daemons):
    // two writers of one hour would each write its file. A session lock on a connection held
    // for the pass; a lost connection releases it.
    let lock = pool.get().await?;
    if !lock.query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY]).await?.get::<_, bool>(0) {
        tracing::info!("another archive pass is running on this database: waiting for it");
        lock.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]).await?;
    }
    let result = pass_locked(pool, cfg, until).await;
    let _ = lock.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]).await;
    result
}

/// The archive's advisory lock: "archive" in ASCII.
const LOCK_KEY: i64 = 0x61_7263_6869_7665;

async fn pass_locked(pool: &Pool, cfg: &ArchiveConfig, until: DateTime<Utc>) -> Result<PassReport, ArchiveError> {
    let mut report = PassReport { until: Some(until), ..Default::default() };
    for table in TABLES {
        let r = if table.settled_only {
            archive_settled(pool, cfg, table, until).await?
        } else {
            archive_table(pool, cfg, table, until).await?
        };
        report.tables.insert(table.name.to_string(), r);
    }
    report.released = release(pool, cfg).await?;
    Ok(report)
}

/// The file of `part` of `hour` of `table`, relative to `archive.dir`.
pub fn relative_path(table: &str, hour: DateTime<Utc>, part: i32) -> String {
    let name = if part == 0 { format!("hour={}.parquet", hour.format("%H")) } else { format!("hour={}.{part}.parquet", hour.format("%H")) };
    format!("{table}/date={}/{name}", hour.format("%Y-%m-%d"))
}

fn ts(t: DateTime<Utc>) -> String {
    format!("'{}'", t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// `{col} >= from AND {col} < to`.
fn range(col: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    format!("({col} >= {} AND {col} < {})", ts(from), ts(to))
}

/// Rows whose inserting transaction is not visible in `snapshot` (came after it).
fn later_than(snapshot: &str) -> String {
    format!("NOT pg_visible_in_snapshot(collector_xid8(x.xmin), '{}'::pg_snapshot)", snapshot.replace('\'', ""))
}

/// The first hour `table` holds data of (the first time it is archived).
async fn first_hour(pool: &Pool, table: &Table) -> Result<Option<DateTime<Utc>>, ArchiveError> {
    let first = match table.first {
        First::Partitions(base) => partitions::days(pool, base).await?.first().map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc()),
        First::Min(sql) => pool.get().await?.query_one(sql, &[]).await?.get(0),
    };
    Ok(first.map(|t: DateTime<Utc>| t.duration_trunc(chrono::Duration::hours(1)).unwrap_or(t)))
}

/// What a part of an hour selects.
struct Selection {
    hour: DateTime<Utc>,
    part: i32,
    /// The SQL predicate (on alias `x`).
    predicate: String,
    covered_from: DateTime<Utc>,
    covered_to: DateTime<Utc>,
    /// Record the part even when it finds no row (it covers new time, or settles a recheck).
    record_empty: bool,
}

/// Archives the hours of `table` up to `until`: new hours (part 0), the rest of hours covered
/// only in part, hours that may have received rows since (marked dirty, or archived less than
/// [`LATE_AFTER`] after they ended).
async fn archive_table(pool: &Pool, cfg: &ArchiveConfig, table: &'static Table, until: DateTime<Utc>) -> Result<TableReport, ArchiveError> {
    let mut report = TableReport::default();
    let hour = chrono::Duration::hours(1);
    // Every hour from the first the manifest or the data knows: a hole left by a crash is
    // filled, and rows of an hour before any archived one (a late backfill) are not missed.
    let (parts, dirty) = {
        let db = pool.get().await?;
        (manifest::parts(&*db, table.name, DateTime::<Utc>::UNIX_EPOCH).await?, manifest::dirty_hours(&*db, table.name).await?)
    };
    let first = [parts.first().map(|p| p.hour), first_hour(pool, table).await?].into_iter().flatten().min();
    let mut by_hour: BTreeMap<DateTime<Utc>, Vec<Part>> = BTreeMap::new();
    for p in parts {
        by_hour.entry(p.hour).or_default().push(p);
    }
    let dirty: BTreeSet<DateTime<Utc>> = dirty.into_iter().filter(|h| *h < until).collect();
    let mut hours: BTreeSet<DateTime<Utc>> = dirty.clone();
    let mut h = first.unwrap_or(until);
    while h < until {
        hours.insert(h);
        h += hour;
    }
    let col = time_column(table);
    let now = clock::now();
    for h in hours {
        let end = (h + hour).min(until);
        let selection = match by_hour.get(&h) {
            None => Selection { hour: h, part: 0, predicate: range(col, h, end), covered_from: h, covered_to: end, record_empty: true },
            Some(ps) => {
                let latest = ps.iter().max_by_key(|p| p.part).expect("parts");
                let covered_to = ps.iter().map(|p| p.covered_to).max().expect("parts");
                let fresh = latest.written_at < covered_to + LATE_AFTER;
                if covered_to >= end && !fresh && !dirty.contains(&h) {
                    continue;
                }
                let mut predicate = format!("({} AND {})", range(col, h, covered_to.min(end)), later_than(&latest.snapshot));
                if covered_to < end {
                    predicate = format!("({predicate} OR {})", range(col, covered_to, end));
                }
                Selection {
                    hour: h,
                    part: latest.part + 1,
                    predicate,
                    covered_from: h,
                    covered_to: covered_to.max(end),
                    record_empty: covered_to < end || (fresh && now >= covered_to + LATE_AFTER),
                }
            }
        };
        if let Some(w) = write_part(pool, cfg, table, &selection).await? {
            report.files += 1;
            report.rows += w.rows;
            report.bytes += w.bytes;
        }
    }
    Ok(report)
}

/// Gaps: every settled gap not archived yet, by the hour it started (the next part of it).
async fn archive_settled(
    pool: &Pool,
    cfg: &ArchiveConfig,
    table: &'static Table,
    until: DateTime<Utc>,
) -> Result<TableReport, ArchiveError> {
    let mut report = TableReport::default();
    let settled = settled_gaps(until);
    let hours: Vec<(DateTime<Utc>, i32)> = {
        let db = pool.get().await?;
        let rows = db
            .query(
                &format!(
                    "SELECT h, (SELECT COALESCE(max(part) + 1, 0) FROM archive_files WHERE table_name = $1 AND hour = h)
                     FROM (SELECT DISTINCT date_trunc('hour', x.started_at) AS h FROM stream_gaps x WHERE {settled}) s ORDER BY h"
                ),
                &[&table.name],
            )
            .await?;
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let hour = chrono::Duration::hours(1);
    for (h, part) in hours {
        let selection = Selection {
            hour: h,
            part,
            predicate: format!("({} AND {settled})", range("x.started_at", h, h + hour)),
            covered_from: h,
            covered_to: h + hour,
            record_empty: false,
        };
        if let Some(w) = write_part(pool, cfg, table, &selection).await? {
            report.files += 1;
            report.rows += w.rows;
            report.bytes += w.bytes;
        }
    }
    Ok(report)
}

/// Gaps ready for the archive: closed before `until`, not waiting for a backfill retry, and
/// not archived yet.
fn settled_gaps(until: DateTime<Utc>) -> String {
    format!(
        "x.ended_at IS NOT NULL AND x.ended_at < {} AND COALESCE(x.backfill_status, '') NOT LIKE 'retrying%' AND x.archived_at IS NULL",
        ts(until)
    )
}

/// Writes one part in one `REPEATABLE READ` transaction, which records it and commits once
/// the file is in place.
async fn write_part(pool: &Pool, cfg: &ArchiveConfig, table: &'static Table, s: &Selection) -> Result<Option<file::Written>, ArchiveError> {
    let mut conn = pool.get().await?;
    let tx = conn.build_transaction().isolation_level(IsolationLevel::RepeatableRead).start().await?;
    // A whole hour of the stream may take minutes to read and sort.
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL work_mem = '256MB'").await?;
    let snapshot: String = tx.query_one("SELECT pg_current_snapshot()::text", &[]).await?.get(0);
    let query = table.query(&s.predicate, "true", cfg.level_hashes);
    let rel = relative_path(table.name, s.hour, s.part);
    let path: PathBuf = cfg.dir.join(&rel);
    let written = file::write(&tx, table, &query, &path, cfg).await?;
    let empty = columns::Checksum::default().text();
    let checksum = written.map_or(empty, |w| w.checksum.text());
    let part = NewPart {
        table: table.name,
        hour: s.hour,
        part: s.part,
        path: written.map(|_| rel.as_str()),
        rows: written.map_or(0, |w| w.rows as i64),
        bytes: written.map_or(0, |w| w.bytes as i64),
        checksum: &checksum,
        covered_from: s.covered_from,
        covered_to: s.covered_to,
        snapshot: &snapshot,
    };
    match written {
        Some(w) => {
            manifest::record(&tx, &part).await?;
            if table.settled_only {
                tx.execute(&format!("UPDATE stream_gaps x SET archived_at = now() WHERE {}", s.predicate), &[]).await?;
            }
            tracing::info!(table = table.name, hour = %s.hour, part = s.part, rows = w.rows, bytes = w.bytes, file = %rel,
                "archived {} rows of {} at {} into {rel} ({} bytes)", w.rows, table.name, s.hour, w.bytes);
        }
        None if s.record_empty => manifest::record(&tx, &part).await?,
        None => {
            tx.execute("DELETE FROM archive_dirty WHERE table_name = $1 AND hour = $2", &[&table.name, &s.hour]).await?;
        }
    }
    tx.commit().await?;
    Ok(written)
}

/// Drops the day partitions older than `keep_days` every hour of which is archived and whose
/// files are all there with their recorded sizes; returns their names.
async fn release(pool: &Pool, cfg: &ArchiveConfig) -> Result<Vec<String>, ArchiveError> {
    let mut released = Vec::new();
    if cfg.keep_days == 0 {
        return Ok(released);
    }
    let keep_from = clock::today() - chrono::Duration::days(cfg.keep_days as i64);
    for table in TABLES.iter().filter(|t| !t.partitions.is_empty()) {
        let mut days = BTreeSet::new();
        for base in table.partitions {
            days.extend(partitions::days(pool, base).await?.into_iter().filter(|d| *d < keep_from));
        }
        for day in days {
            if !day_released_ok(pool, cfg, table.name, day).await? {
                continue;
            }
            for base in table.partitions {
                match partitions::drop_day(pool, base, day).await {
                    Ok(Some(name)) => released.push(name),
                    Ok(None) => {}
                    Err(e) if partitions::is_lock_timeout(&e) => {
                        tracing::warn!(error = %e, table = base, %day, "archived day not released yet: a lock on the table is held; next pass");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    if !released.is_empty() {
        tracing::info!(partitions = %released.join(", "), "archived days released from the database: {}", released.join(", "));
    }
    Ok(released)
}

/// Whether `day` of `table` may leave the database: every hour of it archived to its end,
/// nothing dirty, and every file there with its recorded size.
pub async fn day_released_ok(pool: &Pool, cfg: &ArchiveConfig, table: &str, day: chrono::NaiveDate) -> Result<bool, ArchiveError> {
    let db = pool.get().await?;
    if !manifest::day_archived(&*db, table, day).await? {
        return Ok(false);
    }
    for (path, bytes) in manifest::day_files(&*db, table, day).await? {
        let full = cfg.dir.join(&path);
        match std::fs::metadata(&full) {
            Ok(m) if m.len() == bytes as u64 => {}
            found => {
                tracing::error!(file = %full.display(), recorded_bytes = bytes, found = ?found.map(|m| m.len()).map_err(|e| e.to_string()),
                    "an archived file is missing or changed: its day stays in the database");
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The daemon's archive: a pass every `archive.interval_secs`, up to `after_hours` ago.
pub struct ArchiveCollector {
    pub pool: Pool,
    pub cfg: ArchiveConfig,
}

impl Collector for ArchiveCollector {
    fn shared(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "archive"
    }

    fn interval(&self) -> Duration {
        self.cfg.interval
    }

    /// A pass catching up on days of hours takes as long as it takes; the stream does not
    /// wait for it, and restarting the daemon would not help it.
    fn long_passes(&self) -> bool {
        true
    }

    async fn collect_once(&mut self) -> Result<u64, CollectError> {
        let report = pass(&self.pool, &self.cfg, default_until(&self.cfg)).await.map_err(|e| CollectError::Archive(e.to_string()))?;
        Ok(report.files())
    }
}
