//! The stream tables (`trades`, `price_changes`, `quotes`, `tick_size_changes`,
//! `market_events`, `stream_quarantine`, and `book_snapshots` for stream books): the rows they
//! take ([`Row`]) and [`write_batch`], which stores one batch in one transaction. One module
//! per table holds its columns, its binary COPY and its idempotent path side by side.
//!
//! Trades, level changes, quotes and tick size changes are stored compact (migrations 5 and
//! 7): tokens and markets as integer keys from the `stream_tokens` / `stream_conditions`
//! dictionaries, which [`Keys`] fills and caches before a batch's transaction; the documented
//! tables are views over them. Trades, level changes and quotes are partitioned by day: a
//! day's partitions exist before a row of that day is written (made ahead by the maintenance,
//! or — for a replayed or backfilled row of an older day — by [`Keys`], before its batch).
//!
//! The common case is a direct binary `COPY` into each target table — no temporary table, no
//! DDL in the transaction. No row is stored twice:
//! - `trades`, `quotes`, `tick_size_changes` and `book_snapshots` have a unique identity: their
//!   COPYs run under one savepoint, and a unique violation (a replayed row, a book re-dumped
//!   after a reconnect) rolls them back to their idempotent paths. Quotes and tick sizes of
//!   one key (token, source time) come once per batch, the last received ([`keep_last`]).
//! - `price_changes` has no unique index ([`level_changes`]).
//! - The idempotent path is one `INSERT … SELECT … FROM jsonb_to_recordset($1)` per table that
//!   skips what is already there (also backfilled trades, see *Trade identity* in
//!   `docs/schema.md`). Lifecycle events always take it (a handful per day).
//!
//! Queueing, batching, spooling and retries are the stream collector's
//! (`collectors::stream::{sink, writer}`); this module is SQL only.

mod encode;
mod keys;
mod level_changes;
mod market_events;
mod quarantine;
mod quotes;
mod row;
mod tick_sizes;
mod trades;

pub use encode::{LevelTicks, level_hash_bytes, price_ticks, tx_bytes};
pub(crate) use encode::{push_hex_text, push_lower_hex};
pub use keys::Keys;
pub use row::{Origin, Row, TradeSource};

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;

use tokio_postgres::Transaction;
use tokio_postgres::error::SqlState;

use super::books::{self, BookSource};
use super::writers::Fence;
use super::{DbError, Pool};
use level_changes::ChangeIn;
use market_events::EventIn;
use quarantine::QuarantineIn;
use quotes::QuoteIn;
use tick_sizes::TickIn;
use trades::TradeIn;

/// A batch's rows by table, borrowed.
#[derive(Default)]
struct Tables<'a> {
    trades: Vec<TradeIn<'a>>,
    changes: Vec<ChangeIn<'a>>,
    books: Vec<(&'a crate::polymarket::clob::Book, chrono::DateTime<chrono::Utc>)>,
    quotes: Vec<QuoteIn<'a>>,
    ticks: Vec<TickIn<'a>>,
    events: Vec<EventIn<'a>>,
    quarantine: Vec<QuarantineIn<'a>>,
}

impl<'a> Tables<'a> {
    fn of(rows: &'a [Row]) -> Tables<'a> {
        let mut t = Tables::default();
        for r in rows {
            match r {
                Row::Trade { trade, received_at, source } => t.trades.push(TradeIn { trade, received_at: *received_at, source: *source }),
                Row::PriceChange { change, source_ts, received_at, .. } => {
                    t.changes.push(ChangeIn { change, source_ts: *source_ts, received_at: *received_at })
                }
                Row::Book { book, received_at } => t.books.push((book, *received_at)),
                Row::Quote { quote, received_at } => t.quotes.push(QuoteIn { quote, received_at: *received_at }),
                Row::TickSize { change, received_at } => t.ticks.push(TickIn { change, received_at: *received_at }),
                Row::Lifecycle { event, received_at } => t.events.push(EventIn { event, received_at: *received_at }),
                Row::Quarantine { connection, reason, frame, received_at } => {
                    t.quarantine.push(QuarantineIn { connection: *connection, reason, frame, received_at: *received_at })
                }
            }
        }
        t
    }
}

/// Stores one batch in one transaction; returns the number of new trades.
///
/// Live rows are copied straight in; trades, quotes, tick sizes and books under a savepoint
/// that a unique violation (a re-dumped book, …) rolls back to their idempotent paths.
/// [`Origin::Spilled`] and [`Origin::MaybeStored`] trades always take their idempotent path,
/// where a stream trade also replaces a backfilled copy of the same fill. Level changes have
/// no unique index: for [`Origin::MaybeStored`] only, those received after the newest stored
/// one of the batch's spans are copied straight in, the rest anti-joined.
pub async fn write_batch(pool: &Pool, keys: &Keys, rows: &[Row], origin: Origin) -> Result<u64, DbError> {
    Ok(write_batch_fenced(pool, keys, rows, origin, None).await?.expect("no fence to lose"))
}

/// [`write_batch`] for a slice's writer (`db::writers`): with level changes and a `fence`, the
/// fence is checked (and held to the commit) in the batch's transaction; `Ok(None)` when it is
/// gone (another instance took the slice): nothing was written.
pub async fn write_batch_fenced(
    pool: &Pool,
    keys: &Keys,
    rows: &[Row],
    origin: Origin,
    fence: Option<&Fence>,
) -> Result<Option<u64>, DbError> {
    let t = Tables::of(rows);
    keys.resolve(pool, rows).await?;
    keys.ensure_days(pool, rows).await?;
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    if !t.changes.is_empty() {
        if let Some(fence) = fence {
            if !super::writers::holds(&tx, fence).await? {
                return Ok(None);
            }
        }
        let check = match origin {
            Origin::Live | Origin::Spilled => level_changes::Check::None,
            Origin::MaybeStored => level_changes::Check::Replay,
            Origin::Elsewhere => level_changes::Check::All,
        };
        level_changes::write(&tx, keys, &t.changes, check).await?;
    }
    // Trades, quotes, tick sizes and stream books have a unique identity. They are copied
    // straight in under one savepoint (a replay's too: spooled rows are mostly new); a unique
    // violation (a row stored already, a book re-dumped after a reconnect) rolls the copies
    // back and they take their idempotent paths. Backfilled and replayed trades always take
    // theirs, where a stream trade replaces a backfilled copy of the same fill.
    let quotes = keep_last(&t.quotes, quotes::key);
    let ticks = keep_last(&t.ticks, tick_sizes::key);
    let direct_trades = !t.trades.is_empty() && origin == Origin::Live && t.trades.iter().all(|r| r.source == TradeSource::Ws);
    let copied = if direct_trades || !quotes.is_empty() || !ticks.is_empty() || !t.books.is_empty() {
        copy_under_savepoint(&tx, async {
            let mut new_trades = 0;
            if direct_trades {
                new_trades = trades::copy(&tx, keys, &t.trades).await?;
            }
            if !quotes.is_empty() {
                quotes::copy(&tx, keys, &quotes).await?;
            }
            if !ticks.is_empty() {
                tick_sizes::copy(&tx, keys, &ticks).await?;
            }
            if !t.books.is_empty() {
                books::copy_snapshots(&tx, &t.books, BookSource::Ws).await?;
            }
            Ok(new_trades)
        })
        .await?
    } else {
        None
    };
    let mut new_trades = copied.unwrap_or(0);
    let trades_copied = copied.is_some() && direct_trades;
    if !t.trades.is_empty() && !trades_copied {
        new_trades = trades::insert_new(&tx, keys, &t.trades).await?;
    }
    if copied.is_none() {
        if !quotes.is_empty() {
            quotes::upsert(&tx, keys, &quotes).await?;
        }
        if !ticks.is_empty() {
            tick_sizes::upsert(&tx, keys, &ticks).await?;
        }
        for chunk in t.books.chunks(500) {
            books::insert_snapshots(&tx, chunk, BookSource::Ws).await?;
        }
    }
    if !t.quarantine.is_empty() {
        quarantine::copy(&tx, &t.quarantine).await?;
    }
    mark_archived_hours(&tx, rows).await?;
    if !t.events.is_empty() {
        market_events::insert_new(&tx, &t.events).await?;
        let events: Vec<&crate::polymarket::ws::Lifecycle> = t.events.iter().map(|e| e.event).collect();
        super::catalog::apply_stream_lifecycle(&tx, &events).await?;
    }
    tx.commit().await?;
    Ok(Some(new_trades))
}

/// Marks, in the batch's transaction, the archive hours of rows old enough that their hour may
/// be archived already (a spool replay, a backfill): the archive looks at them again
/// (`db::archive`). Live rows are newer: nothing to do.
async fn mark_archived_hours(tx: &Transaction<'_>, rows: &[Row]) -> Result<(), tokio_postgres::Error> {
    use chrono::DurationRound;
    let cutoff = crate::clock::now() - super::archive::LATE_AFTER;
    let mut late: std::collections::BTreeMap<&str, std::collections::BTreeSet<chrono::DateTime<chrono::Utc>>> = Default::default();
    for (table, t) in rows.iter().filter_map(Row::archive_time).filter(|(_, t)| *t < cutoff) {
        late.entry(table).or_default().insert(t.duration_trunc(chrono::Duration::hours(1)).unwrap_or(t));
    }
    for (table, hours) in late {
        super::archive::mark_dirty(tx, table, &hours.into_iter().collect::<Vec<_>>()).await?;
    }
    Ok(())
}

/// Of the rows sharing a key, the last (in arrival order), in the order of those kept: a
/// table keyed by (token, source time) takes one row per key, and two updates of one token in
/// one millisecond both arrive (docs/schema.md keeps the last).
fn keep_last<'r, T, K: Eq + Hash>(rows: &'r [T], key: impl Fn(&'r T) -> K) -> Vec<&'r T> {
    let mut last: HashMap<K, usize> = HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        last.insert(key(r), i);
    }
    if last.len() == rows.len() {
        return rows.iter().collect();
    }
    rows.iter().enumerate().filter(|(i, r)| last.get(&key(r)) == Some(i)).map(|(_, r)| r).collect()
}

/// Runs `copy` under a savepoint: `Some(its result)` when it stored its rows, `None` when a
/// unique violation (one of them is stored already) rolled it back and the caller takes the
/// idempotent paths.
async fn copy_under_savepoint(
    tx: &Transaction<'_>,
    copy: impl Future<Output = Result<u64, tokio_postgres::Error>>,
) -> Result<Option<u64>, tokio_postgres::Error> {
    tx.batch_execute("SAVEPOINT direct_copy").await?;
    match copy.await {
        Ok(n) => {
            tx.batch_execute("RELEASE SAVEPOINT direct_copy").await?;
            Ok(Some(n))
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT direct_copy").await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::keep_last;

    #[test]
    fn keep_last_keeps_the_last_of_each_key_in_order() {
        let rows = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2), ("a", 3)];
        let kept: Vec<_> = keep_last(&rows, |r| r.0).into_iter().copied().collect();
        assert_eq!(kept, [("c", 1), ("b", 2), ("a", 3)]);
        let unique = [("a", 1), ("b", 1)];
        assert_eq!(keep_last(&unique, |r| r.0).len(), 2);
    }
}
