//! Daily partitions of the high-volume stream tables (by `source_ts`, UTC days), made ahead
//! by the daemon and dropped past the retention: dropping a partition is the retention
//! mechanism. Maintenance only — the write path runs DDL only for a row of a day not made
//! ahead (a replay or a backfill of an old day).
//!
//! Every DDL statement here waits at most [`DDL_LOCK_TIMEOUT`] for its locks: making or
//! dropping a partition takes an exclusive lock on the parent table, and a DDL statement
//! waiting behind a long reader would queue every writer behind itself. It fails instead
//! (SQLSTATE 55P03, transient) and is tried again later.
//!
//! A day's partition is compacted once its day has been over for a day: its B-tree indexes
//! are rebuilt packed full (`fillfactor` 100, `REINDEX INDEX CONCURRENTLY`, so writes and
//! reads go on). While a day is open, a token's new rows land at the end of its key range in
//! the middle of the index, so pages split half and half and stay far from full (a trade's
//! identity entry open and packed: BENCHMARKS.md, issue 10, sixth part). Rows a closed day still
//! receives (a gap's backfill) go in as usual. A compacted index carries the comment
//! [`COMPACTED`] (`\di+` shows it); an interrupted rebuild's leftover (an invalid
//! `…_ccnew` index) is dropped and the rebuild done again on the next pass.

use chrono::{Duration, NaiveDate};

use super::{DbError, Pool};

/// The longest a partition DDL statement waits for a lock before it gives up (and is tried
/// again later): writers queue behind a waiting DDL statement for at most this long.
pub const DDL_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs one DDL statement in its own transaction, waiting at most [`DDL_LOCK_TIMEOUT`] for
/// its locks.
async fn ddl(pool: &Pool, sql: &str) -> Result<(), DbError> {
    let mut db = pool.get().await?;
    let tx = db.transaction().await?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = {}", DDL_LOCK_TIMEOUT.as_millis())).await?;
    tx.batch_execute(sql).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether `e` is a DDL statement that gave up waiting for a lock (it will be tried again).
pub fn is_lock_timeout(e: &DbError) -> bool {
    e.sqlstate().is_some_and(|c| c.code() == "55P03")
}

/// The comment on a partition's index once [`compact`] rebuilt it.
pub const COMPACTED: &str = "compacted by collector: rebuilt at fillfactor 100 after its day closed";

/// The partitioned tables: level changes (in ticks and exact, migration 9), trades, quotes.
pub const TABLES: &[&str] = &["price_changes_ticks", "price_changes_compact", "trades_compact", "quotes_compact"];

/// Days kept of each partitioned table (`stream.retention_days`,
/// `stream.trades_retention_days`, `stream.quotes_retention_days`); 0 keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub level_changes: u32,
    pub trades: u32,
    pub quotes: u32,
}

impl Retention {
    fn days(&self, table: &str) -> u32 {
        match table {
            "price_changes_ticks" | "price_changes_compact" => self.level_changes,
            "trades_compact" => self.trades,
            "quotes_compact" => self.quotes,
            _ => 0,
        }
    }
}

/// `price_changes_compact` on 2026-11-30 → `price_changes_p20261130` (`price_changes_ticks_p…`,
/// `trades_p…`, `quotes_p…`).
pub fn partition_name(table: &str, day: NaiveDate) -> String {
    format!("{}_p{}", table.trim_end_matches("_compact"), day.format("%Y%m%d"))
}

/// Creates the partitions of every partitioned table for each day in `from..=to` that does
/// not exist yet; returns how many were made.
pub async fn ensure(pool: &Pool, from: NaiveDate, to: NaiveDate) -> Result<u32, DbError> {
    let db = pool.get().await?;
    let mut made = 0;
    for table in TABLES {
        let mut day = from;
        while day <= to {
            let name = partition_name(table, day);
            let exists: bool = db.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await?.get(0);
            if !exists {
                let start = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
                let end = start + Duration::days(1);
                let sql = format!(
                    "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} FOR VALUES FROM ('{}') TO ('{}')",
                    start.to_rfc3339(),
                    end.to_rfc3339()
                );
                ddl(pool, &sql).await?;
                made += 1;
            }
            day += Duration::days(1);
        }
    }
    Ok(made)
}

/// The days of the partitions of `table`, oldest first.
pub async fn days(pool: &Pool, table: &str) -> Result<Vec<NaiveDate>, DbError> {
    let db = pool.get().await?;
    let rows = db
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1",
            &[&table],
        )
        .await?;
    let mut days: Vec<NaiveDate> = rows
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            let suffix = name.rsplit("_p").next()?.to_string();
            NaiveDate::parse_from_str(&suffix, "%Y%m%d").ok()
        })
        .collect();
    days.sort_unstable();
    Ok(days)
}

/// Drops `table`'s partition of `day` (the archive's release); its name, or `None` when there
/// was none.
pub async fn drop_day(pool: &Pool, table: &str, day: NaiveDate) -> Result<Option<String>, DbError> {
    let name = partition_name(table, day);
    let exists: bool = pool.get().await?.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await?.get(0);
    if !exists {
        return Ok(None);
    }
    ddl(pool, &format!("DROP TABLE IF EXISTS {}", ident(&name))).await?;
    Ok(Some(name))
}

/// The partitions past the retention on `today`, oldest first (what [`drop_expired`] drops).
pub async fn expired(pool: &Pool, today: NaiveDate, retention: Retention) -> Result<Vec<String>, DbError> {
    Ok(expired_days(pool, today, retention).await?.into_iter().map(|(t, d)| partition_name(t, d)).collect())
}

/// [`expired`] as (table, day).
pub async fn expired_days(pool: &Pool, today: NaiveDate, retention: Retention) -> Result<Vec<(&'static str, NaiveDate)>, DbError> {
    let mut out = Vec::new();
    for table in TABLES {
        let keep = retention.days(table);
        if keep > 0 {
            let keep_from = today - Duration::days(keep as i64);
            out.extend(days(pool, table).await?.into_iter().filter(|d| *d < keep_from).map(|d| (*table, d)));
        }
    }
    Ok(out)
}

/// Drops the partitions past the retention on `today`; returns their names. Stops at the
/// first that cannot be dropped (a lock not granted in time): the rest wait for the next pass.
pub async fn drop_expired(pool: &Pool, today: NaiveDate, retention: Retention) -> Result<Vec<String>, (Vec<String>, DbError)> {
    let names = expired(pool, today, retention).await.map_err(|e| (Vec::new(), e))?;
    let mut dropped = Vec::new();
    for name in names {
        if let Err(e) = ddl(pool, &format!("DROP TABLE IF EXISTS {}", ident(&name))).await {
            return Err((dropped, e));
        }
        dropped.push(name);
    }
    Ok(dropped)
}

/// The partitions that exist ahead of time: from yesterday to two days after `today`.
pub async fn ensure_ahead(pool: &Pool, today: NaiveDate) -> Result<u32, DbError> {
    ensure(pool, today - Duration::days(1), today + Duration::days(2)).await
}

/// One maintenance pass without compaction (tests and tools): [`ensure_ahead`], then
/// [`drop_expired`].
pub async fn maintain(pool: &Pool, today: NaiveDate, retention: Retention) -> Result<(u32, Vec<String>), DbError> {
    let made = ensure_ahead(pool, today).await?;
    let dropped = drop_expired(pool, today, retention).await.map_err(|(_, e)| e)?;
    Ok((made, dropped))
}

/// What [`compact`] did to one partition: the indexes rebuilt, and the partition's index bytes
/// before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub partition: String,
    pub indexes: u32,
    pub bytes_before: i64,
    pub bytes_after: i64,
}

/// Rebuilds the B-tree indexes of `table`'s partition of `day` packed full, those not rebuilt
/// yet; `None` when there was nothing to do (no such partition, or already compacted).
/// `REINDEX … CONCURRENTLY` runs outside a transaction and takes no lock that stops writes.
pub async fn compact(pool: &Pool, table: &str, day: NaiveDate) -> Result<Option<Compacted>, DbError> {
    let partition = partition_name(table, day);
    let db = pool.get().await?;
    let indexes = db
        .query(
            "SELECT c.relname::text, x.indisvalid, obj_description(c.oid, 'pg_class') IS NOT DISTINCT FROM $2
             FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_am a ON a.oid = c.relam
             WHERE x.indrelid = to_regclass($1) AND a.amname = 'btree' ORDER BY 1",
            &[&partition, &COMPACTED],
        )
        .await?;
    let todo: Vec<&tokio_postgres::Row> = indexes.iter().filter(|r| r.get::<_, bool>(1) && !r.get::<_, bool>(2)).collect();
    if todo.is_empty() {
        return Ok(None);
    }
    let size = "SELECT pg_indexes_size(to_regclass($1))";
    let bytes_before: i64 = db.query_one(size, &[&partition]).await?.get(0);
    // Outside a transaction (REINDEX CONCURRENTLY cannot run in one): the session's limits,
    // set back after. A rebuild may rightly take long; waiting for a lock may not.
    db.batch_execute(&format!("SET lock_timeout = {}; SET statement_timeout = 0", DDL_LOCK_TIMEOUT.as_millis())).await?;
    let rebuilt = async {
        for r in &indexes {
            let name: String = r.get(0);
            let leftover = !r.get::<_, bool>(1) && (name.contains("_ccnew") || name.contains("_ccold"));
            if leftover {
                db.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {}", ident(&name))).await?;
            }
        }
        for r in &todo {
            let index = ident(&r.get::<_, String>(0));
            db.batch_execute(&format!("ALTER INDEX {index} SET (fillfactor = 100)")).await?;
            db.batch_execute(&format!("REINDEX INDEX CONCURRENTLY {index}")).await?;
            db.batch_execute(&format!("COMMENT ON INDEX {index} IS '{COMPACTED}'")).await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    }
    .await;
    let reset = db.batch_execute("RESET lock_timeout; RESET statement_timeout").await;
    rebuilt?;
    reset?;
    let bytes_after: i64 = db.query_one(size, &[&partition]).await?.get(0);
    Ok(Some(Compacted { partition, indexes: todo.len() as u32, bytes_before, bytes_after }))
}

/// Compacts every partition whose day ended a day or more before `today` (days before
/// yesterday), of every partitioned table.
pub async fn compact_closed(pool: &Pool, today: NaiveDate) -> Result<Vec<Compacted>, DbError> {
    let mut done = Vec::new();
    for table in TABLES {
        for day in days(pool, table).await? {
            if day < today - Duration::days(1) {
                done.extend(compact(pool, table, day).await?);
            }
        }
    }
    Ok(done)
}

/// `name` as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
