//! Daily partitions of the high-volume stream tables (by `source_ts`, UTC days), made ahead
//! by the daemon and dropped past the retention: dropping a partition is the retention
//! mechanism. Maintenance only — the write path never runs DDL.

use chrono::{Duration, NaiveDate, Utc};

use super::{DbError, Pool};

/// The partitioned tables.
pub const TABLES: &[&str] = &["price_changes_compact"];

/// `price_changes_compact` on 2026-11-30 → `price_changes_p20261130`.
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
                db.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} FOR VALUES FROM ('{}') TO ('{}')",
                    start.to_rfc3339(),
                    end.to_rfc3339()
                ))
                .await?;
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

/// Drops the partitions of days before `keep_from`; returns their names.
pub async fn drop_before(pool: &Pool, keep_from: NaiveDate) -> Result<Vec<String>, DbError> {
    let mut dropped = Vec::new();
    for table in TABLES {
        for day in days(pool, table).await? {
            if day < keep_from {
                let name = partition_name(table, day);
                pool.get().await?.batch_execute(&format!("DROP TABLE IF EXISTS {name}")).await?;
                dropped.push(name);
            }
        }
    }
    Ok(dropped)
}

/// One maintenance pass: partitions from yesterday to two days ahead exist; with
/// `retention_days` > 0, days older than that are dropped.
pub async fn maintain(pool: &Pool, retention_days: u32) -> Result<(u32, Vec<String>), DbError> {
    let today = Utc::now().date_naive();
    let made = ensure(pool, today - Duration::days(1), today + Duration::days(2)).await?;
    let dropped = if retention_days > 0 { drop_before(pool, today - Duration::days(retention_days as i64)).await? } else { Vec::new() };
    Ok((made, dropped))
}
