//! Who writes a slice's level changes (docs/scaling.md, "Redundant instances of a slice").
//!
//! Trades, quotes, tick sizes and stream books have a unique identity: every instance of a
//! slice writes them and the second copy is dropped. Level changes have none (a unique index
//! cost most of their write time, `db::stream::level_changes`), so one instance of a slice
//! writes them — the holder of the slice's session advisory lock ([`lock_key`], taken by
//! `db::leader` on its dedicated connection) — and the others hold theirs in memory.
//!
//! `stream_writers` (migration 13) fences a writer that lost its lock without knowing it (a
//! network cut): each takeover raises the slice's `epoch`, waiting for the batches in flight,
//! and every batch of level changes locks the row with its epoch (`FOR SHARE`, [`holds`]) in
//! its own transaction — a batch of a deposed writer finds another epoch and writes no level
//! change.

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient};

use crate::slice::{Slice, slice_hash};

/// A writer's right to write its slice's level changes: the epoch it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub slice: String,
    pub epoch: i64,
}

/// The advisory lock of a slice's writer: the lock space's high bit set (the leader's key,
/// `LOCK_KEY` of the election, is ASCII and has it clear), the rest the slice's FNV-1a hash.
pub fn lock_key(slice: &Slice) -> i64 {
    (slice_hash(&format!("collector writer {slice}")) | (1 << 63)) as i64
}

/// What a takeover found: the new fence, the instance that wrote before (if any) and how far
/// its commits reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    pub fence: Fence,
    /// When this instance took the slice (the server's clock).
    pub since: DateTime<Utc>,
    pub previous: Option<String>,
    pub previous_committed: Option<DateTime<Utc>>,
}

/// Makes `instance` the writer of `slice` (its lock is held on `client`'s session): raises
/// the epoch, waiting for batches of the previous writer still in flight.
pub async fn take(client: &Client, slice: &Slice, instance: &str) -> Result<Taken, tokio_postgres::Error> {
    let slice = slice.to_string();
    let previous = client
        .query_opt(
            "SELECT w.instance, i.committed_through FROM stream_writers w LEFT JOIN stream_instances i USING (instance) WHERE w.slice = $1",
            &[&slice],
        )
        .await?
        .map(|r| (r.get::<_, String>(0), r.get::<_, Option<DateTime<Utc>>>(1)));
    let row = client
        .query_one(
            "INSERT INTO stream_writers (slice, epoch, instance, since) VALUES ($1, 1, $2, now())
             ON CONFLICT (slice) DO UPDATE SET epoch = stream_writers.epoch + 1, instance = EXCLUDED.instance,
               since = EXCLUDED.since
             RETURNING epoch, since",
            &[&slice, &instance],
        )
        .await?;
    let (epoch, since): (i64, DateTime<Utc>) = (row.get(0), row.get(1));
    let (previous, previous_committed) = previous.map_or((None, None), |(i, c)| (Some(i), c));
    Ok(Taken { fence: Fence { slice, epoch }, since, previous, previous_committed })
}

/// Whether `fence` is still `instance`'s: nobody took the slice since (a writer whose session
/// was lost and is back goes on under its epoch, its queued batches valid).
pub async fn still_ours(client: &Client, fence: &Fence, instance: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM stream_writers WHERE slice = $1 AND epoch = $2 AND instance = $3",
            &[&fence.slice, &fence.epoch, &instance],
        )
        .await?
        .is_some())
}

/// Reports how far this instance's commits reached (its receive clock), in its
/// `stream_instances` row — not on the fenced row, which every batch holds `FOR SHARE` (an
/// update there would wait for them, and they for it).
pub async fn report(client: &Client, instance: &str, through: DateTime<Utc>) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE stream_instances SET committed_through = greatest(committed_through, $2) WHERE instance = $1",
            &[&instance, &through],
        )
        .await?;
    Ok(())
}

/// How far the commits of `slice`'s writer reached (its last report), if it has one.
pub async fn writer_committed(client: &Client, slice: &Slice) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT i.committed_through FROM stream_writers w JOIN stream_instances i USING (instance) WHERE w.slice = $1",
            &[&slice.to_string()],
        )
        .await?
        .and_then(|r| r.get(0)))
}

/// A writer of another slice count (the instances are moving from `n` to `m` slices).
#[derive(Debug, Clone, PartialEq)]
pub struct Foreign {
    pub slice: Slice,
    pub since: DateTime<Utc>,
    pub committed_through: Option<DateTime<Utc>>,
}

/// The writers recorded for slices of another count than `count`.
pub async fn foreign(client: &Client, count: u32) -> Result<Vec<Foreign>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT w.slice, w.since, i.committed_through FROM stream_writers w LEFT JOIN stream_instances i USING (instance)", &[])
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let slice = Slice::parse(r.get::<_, &str>(0)).ok()?;
            (slice.count != count).then(|| Foreign { slice, since: r.get(1), committed_through: r.get(2) })
        })
        .collect())
}

/// Ends a writer that is gone (its lock is free): its row is removed, waiting for its batches
/// in flight; a batch of it that comes later finds no row and writes no level change.
pub async fn retire(client: &Client, slice: &Slice) -> Result<(), tokio_postgres::Error> {
    client.execute("DELETE FROM stream_writers WHERE slice = $1", &[&slice.to_string()]).await?;
    Ok(())
}

/// In a batch's transaction: whether `fence` still holds, keeping the row locked (shared) to
/// the commit so no takeover passes between the check and the commit.
pub async fn holds(tx: &impl GenericClient, fence: &Fence) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .query_opt("SELECT 1 FROM stream_writers WHERE slice = $1 AND epoch = $2 FOR SHARE", &[&fence.slice, &fence.epoch])
        .await?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_keys_are_per_slice() {
        let s = |t: &str| Slice::parse(t).unwrap();
        assert_ne!(lock_key(&s("0/2")), lock_key(&s("1/2")));
        assert_ne!(lock_key(&s("0/2")), lock_key(&s("0/3")));
        assert_eq!(lock_key(&s("1/3")), lock_key(&s("1/3")));
        assert!(lock_key(&s("0/1")) < 0, "high bit set");
    }
}
