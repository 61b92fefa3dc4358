//! Partition maintenance, a helper task beside the stream: partitions made ahead, days past
//! the retention dropped, closed days compacted (`db::partitions`) — one pass after another,
//! so a retention drop and a compaction never touch one partition at once.
//!
//! Off the write path and off the manager: a pass that waits on the database delays only
//! itself. Its DDL waits at most `partitions::DDL_LOCK_TIMEOUT` for a lock (a long reader of
//! a parent table would otherwise queue every writer behind it); a pass that gave up is tried
//! again [`RETRY`] later. Passes run hourly and just after each UTC midnight (the clock's:
//! see `crate::clock`). A reload that lowers a retention drops nothing then: it logs what the
//! next pass will drop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::stats::StreamStats;
use crate::clock;
use crate::config::{ArchiveConfig, StreamConfig};
use crate::db::partitions::{self, Retention};
use crate::db::{DbError, Pool};

/// Time between two passes (clock time).
pub const EVERY: Duration = Duration::from_secs(3600);
/// After a pass that could not do everything (a lock not granted in time, the database
/// away), the next comes this much later (clock time).
pub const RETRY: Duration = Duration::from_secs(600);

/// The days kept of each partitioned stream table.
pub fn retention(cfg: &StreamConfig) -> Retention {
    Retention { level_changes: cfg.retention_days, trades: cfg.trades_retention_days, quotes: cfg.quotes_retention_days }
}

/// At start, before the first row: today's partitions and the days around exist. Never
/// fatal and never long (a lock not granted in time is left to the first pass and to the
/// write path, which makes a missing day before its batch): a daemon that cannot start here
/// would be restarted by systemd into the same wait.
pub async fn before_start(pool: &Pool) {
    match partitions::ensure_ahead(pool, clock::today()).await {
        Ok(made) if made > 0 => tracing::info!(created = made, "partitions made ahead: {made}"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot make the partitions ahead before starting; the maintenance will: {e}"),
    }
}

/// Runs passes until `cancel`; the retentions are read from `live` at each pass.
pub async fn run(
    pool: Pool,
    mut live: watch::Receiver<StreamConfig>,
    archive: Option<ArchiveConfig>,
    stats: Arc<StreamStats>,
    cancel: CancellationToken,
    mut leader: crate::db::leader::Leadership,
) {
    loop {
        // Another instance of this database leads: its maintenance runs there.
        if !leader.is_leader() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = leader.until_leader() => {}
            }
        }
        let today = clock::today();
        let in_force = retention(&live.borrow_and_update());
        let complete = pass(&pool, today, in_force, archive.as_ref(), &cancel).await;
        if cancel.is_cancelled() {
            return;
        }
        if !complete {
            stats.maintenance_postponed.fetch_add(1, Ordering::Relaxed);
        }
        let next = next_pass(clock::now(), complete);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(clock::real_until(next)) => break,
                Ok(()) = live.changed() => {
                    let wanted = retention(&live.borrow_and_update());
                    if wanted != in_force {
                        announce(&pool, wanted, in_force, next).await;
                    }
                }
            }
        }
    }
}

/// When the next pass runs: the next full hour or just after the next UTC midnight, whichever
/// comes first; after an incomplete pass, [`RETRY`] later at most.
pub fn next_pass(now: DateTime<Utc>, complete: bool) -> DateTime<Utc> {
    let hour = now + chrono::Duration::from_std(EVERY).expect("an hour");
    let midnight = (now.date_naive() + chrono::Duration::days(1)).and_hms_opt(0, 0, 1).expect("a time").and_utc();
    let next = hour.min(midnight);
    if complete { next } else { next.min(now + chrono::Duration::from_std(RETRY).expect("minutes")) }
}

/// A reload changed a retention: nothing is dropped now; the next pass applies it. Logs what
/// that pass will drop.
async fn announce(pool: &Pool, wanted: Retention, before: Retention, next: DateTime<Utc>) {
    match partitions::expired(pool, clock::today(), wanted).await {
        Ok(names) if !names.is_empty() => tracing::warn!(partitions = names.len(), next_pass = %next,
            "retention lowered: the next maintenance pass (at {next}) will drop {} partitions: {}", names.len(), names.join(", ")),
        Ok(_) => tracing::info!(?wanted, ?before, "retention changed: nothing more to drop; applied at the next maintenance pass"),
        Err(e) => tracing::warn!(error = %e, "retention changed; cannot list what the next pass will drop: {e}"),
    }
}

/// One pass: partitions ahead, retention, compaction. `false` when a step could not finish
/// (it is logged; the next pass comes [`RETRY`] later).
pub async fn pass(
    pool: &Pool,
    today: NaiveDate,
    retention: Retention,
    archive: Option<&ArchiveConfig>,
    cancel: &CancellationToken,
) -> bool {
    let mut complete = true;
    match partitions::ensure_ahead(pool, today).await {
        Ok(made) if made > 0 => tracing::info!(created = made, "partitions made ahead: {made}"),
        Ok(_) => {}
        Err(e) => {
            // A lock not granted in time: the other steps would wait on the same tables (and
            // hold the writers up to the lock timeout again); they wait for the next pass.
            let locked = partitions::is_lock_timeout(&e);
            postponed("making partitions ahead", &e);
            if locked {
                return false;
            }
            complete = false;
        }
    }
    match drop_expired(pool, today, retention, archive).await {
        Ok(dropped) => log_dropped(&dropped),
        Err((dropped, e)) => {
            log_dropped(&dropped);
            complete &= postponed("dropping partitions past the retention", &e);
        }
    }
    if cancel.is_cancelled() {
        return complete;
    }
    let compaction = tokio::select! {
        _ = cancel.cancelled() => return complete,
        r = partitions::compact_closed(pool, today) => r,
    };
    match compaction {
        Ok(done) => {
            for c in done {
                tracing::info!(partition = %c.partition, indexes = c.indexes, bytes_before = c.bytes_before, bytes_after = c.bytes_after,
                    "compacted the closed partition {}: its indexes {} → {} bytes", c.partition, c.bytes_before, c.bytes_after);
            }
        }
        Err(e) => complete &= postponed("compacting closed days", &e),
    }
    complete
}

/// Drops the partitions past the retention; with the archive on, only days it has archived
/// and verified (`collectors::archive`): a retention never takes rows the archive has not
/// kept. Stops at the first that cannot be dropped.
async fn drop_expired(
    pool: &Pool,
    today: NaiveDate,
    retention: Retention,
    archive: Option<&ArchiveConfig>,
) -> Result<Vec<String>, (Vec<String>, DbError)> {
    let expired = partitions::expired_days(pool, today, retention).await.map_err(|e| (Vec::new(), e))?;
    let mut dropped = Vec::new();
    for (table, day) in expired {
        if let (Some(cfg), Some(archived)) = (archive, crate::collectors::archive::tables::of_partition(table)) {
            match crate::collectors::archive::day_released_ok(pool, cfg, archived.name, day).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(table, %day, "past the retention but not archived yet: kept");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, table, %day, "cannot tell whether the day is archived: kept");
                    continue;
                }
            }
        }
        match partitions::drop_day(pool, table, day).await {
            Ok(Some(name)) => dropped.push(name),
            Ok(None) => {}
            Err(e) => return Err((dropped, e)),
        }
    }
    Ok(dropped)
}

fn log_dropped(dropped: &[String]) {
    if !dropped.is_empty() {
        tracing::info!(dropped = %dropped.join(", "), "partitions past the retention dropped: {}", dropped.join(", "));
    }
}

/// Logs a step that could not finish; always `false`.
fn postponed(step: &str, e: &DbError) -> bool {
    if partitions::is_lock_timeout(e) {
        tracing::warn!(error = %e, step, lock_timeout_ms = partitions::DDL_LOCK_TIMEOUT.as_millis() as u64,
            "partition maintenance postponed: {step} waited {} ms for a lock another session holds; writes go on, retrying later",
            partitions::DDL_LOCK_TIMEOUT.as_millis());
    } else {
        tracing::warn!(error = %e, step, "partition maintenance postponed: {step} failed, retrying later: {e}");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_run_hourly_just_after_midnight_and_sooner_after_an_incomplete_one() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(next_pass(at("2026-12-06T10:20:00Z"), true), at("2026-12-06T11:20:00Z"));
        assert_eq!(next_pass(at("2026-12-06T23:30:00Z"), true), at("2026-12-07T00:00:01Z"), "the day's first second");
        assert_eq!(next_pass(at("2026-12-06T10:20:00Z"), false), at("2026-12-06T10:30:00Z"));
        assert_eq!(next_pass(at("2026-12-06T23:59:58Z"), false), at("2026-12-07T00:00:01Z"));
    }
}
