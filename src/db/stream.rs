//! The stream tables (`trades`, `price_changes`, `quotes`, `tick_size_changes`,
//! `market_events`, `stream_quarantine`, and `book_snapshots` for stream books): the rows they
//! take ([`Row`]) and [`write_batch`], which stores one batch in one transaction.
//!
//! Trades, level changes, quotes and tick size changes are stored compact (migrations 5 and
//! 7): tokens and markets as integer keys from the `stream_tokens` / `stream_conditions`
//! dictionaries, which [`Keys`] fills and caches before a batch's transaction; the documented
//! tables are views over them. Trades, level changes and quotes are partitioned by day: a
//! day's partitions exist before a row of that day is written (made ahead by the daemon, or —
//! for a replayed or backfilled row of an older day — by [`Keys`], before its batch).
//!
//! The common case is a direct binary `COPY` into each target table — no temporary table, no
//! DDL in the transaction. No row is stored twice:
//! - `trades`, `quotes`, `tick_size_changes` and `book_snapshots` have a unique identity: their
//!   COPYs run under one savepoint, and a unique violation (a replayed row, a book re-dumped
//!   after a reconnect) rolls them back to their idempotent paths.
//! - `price_changes` has no unique index (it is most of the volume, and a wide unique index
//!   cost most of the write time): live rows cannot repeat (a shard carries whole markets, and
//!   upstream does not re-send level changes), so they are copied directly, and so are rows
//!   this process spilled to its spool ([`Origin`]); rows that may have been stored already —
//!   a previous run's spool, or the retry of a batch whose commit went unacknowledged — are
//!   copied too when received after every stored row of their time spans; the others take
//!   the idempotent path. Level changes whose prices fit a count of
//!   0.0001 go to `price_changes_ticks`, any other to `price_changes_compact` (migration 9).
//! - The idempotent path is one `INSERT … SELECT … FROM jsonb_to_recordset($1)` per table that
//!   skips what is already there (also backfilled trades, see *Trade identity* in
//!   `docs/schema.md`). Lifecycle events always take it (a handful per day).
//!
//! Queueing, batching, spooling and retries are the stream collector's
//! (`collectors::stream::{sink, writer}`); this module is SQL only.

use super::copy::CopyIn;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_postgres::Transaction;
use tokio_postgres::error::SqlState;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use super::books::{self, BookSource};
use super::partitions;
use super::{DbError, Pool};
use crate::polymarket::clob::Book;
use crate::polymarket::decode::Side;
use crate::polymarket::ws::{LevelChange, Lifecycle, LifecycleKind, Quote, TickSizeChange, Trade};

/// Where a trade row came from (`trades.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TradeSource {
    Ws,
    Backfill,
}

impl TradeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TradeSource::Ws => "ws",
            TradeSource::Backfill => "backfill",
        }
    }
}

/// One row for the database, with its local receive time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Row {
    Trade {
        trade: Trade,
        received_at: DateTime<Utc>,
        source: TradeSource,
    },
    Book {
        book: Book,
        received_at: DateTime<Utc>,
    },
    /// `condition_id` is shared by the changes of one message (one allocation per message).
    PriceChange {
        change: LevelChange,
        condition_id: Option<Arc<str>>,
        source_ts: DateTime<Utc>,
        received_at: DateTime<Utc>,
    },
    Quote {
        quote: Quote,
        received_at: DateTime<Utc>,
    },
    TickSize {
        change: TickSizeChange,
        received_at: DateTime<Utc>,
    },
    Lifecycle {
        event: Lifecycle,
        received_at: DateTime<Utc>,
    },
    Quarantine {
        connection: Option<i32>,
        reason: String,
        frame: String,
        received_at: DateTime<Utc>,
    },
}

impl Row {
    /// When the frame this row came from was received.
    pub fn received_at(&self) -> DateTime<Utc> {
        match self {
            Row::Trade { received_at, .. }
            | Row::Book { received_at, .. }
            | Row::PriceChange { received_at, .. }
            | Row::Quote { received_at, .. }
            | Row::TickSize { received_at, .. }
            | Row::Lifecycle { received_at, .. }
            | Row::Quarantine { received_at, .. } => *received_at,
        }
    }
}

/// Where a batch's rows come from: how much checking they need before they go in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Straight from the readers (or the backfill): never handed to the database before.
    Live,
    /// Spilled to the spool by this process and replayed from it: never handed to the
    /// database before either, but a gap's backfill may have stored some of their fills
    /// meanwhile, so trades take their idempotent path (where the stream's copy replaces a
    /// backfilled one).
    Spilled,
    /// May be stored already: a previous run's spool (a crash or a stop came between a write
    /// and the spool's truncation), or a batch whose earlier attempt failed without a clear
    /// answer.
    MaybeStored,
}

/// Stores one batch in one transaction; returns the number of new trades.
///
/// Live rows are copied straight in; trades, quotes, tick sizes and books under a savepoint
/// that a unique violation (a re-dumped book, …) rolls back to their idempotent paths.
/// [`Origin::Spilled`] and [`Origin::MaybeStored`] trades always take their idempotent path,
/// where a stream trade also replaces a backfilled copy of the same fill. Level changes have
/// no unique index: for [`Origin::MaybeStored`] only, those received after the newest stored
/// one of the batch's spans ([`stored_received_through`]) are copied straight in, the rest
/// anti-joined.
pub async fn write_batch(pool: &Pool, keys: &Keys, rows: &[Row], origin: Origin) -> Result<u64, DbError> {
    let replay = origin == Origin::MaybeStored;
    let mut trades = Vec::new();
    let mut changes = Vec::new();
    let mut books_ = Vec::new();
    let mut quotes = Vec::new();
    let mut ticks = Vec::new();
    let mut lifecycle = Vec::new();
    let mut quarantine = Vec::new();
    for r in rows {
        match r {
            Row::Trade { .. } => trades.push(r),
            Row::PriceChange { .. } => changes.push(r),
            Row::Book { book, received_at } => books_.push((book, *received_at)),
            Row::Quote { .. } => quotes.push(r),
            Row::TickSize { .. } => ticks.push(r),
            Row::Lifecycle { .. } => lifecycle.push(r),
            Row::Quarantine { .. } => quarantine.push(r),
        }
    }
    keys.resolve(pool, rows).await?;
    keys.ensure_days(pool, rows).await?;
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    // Each level change goes to the table its values fit (migration 9): most in ticks, any
    // other exactly as received.
    let (in_ticks, exact): (Vec<&Row>, Vec<&Row>) =
        changes.iter().partition(|r| matches!(r, Row::PriceChange { change, .. } if LevelTicks::of(change).is_some()));
    for (table, rows) in [(&PRICE_CHANGES_TICKS, &in_ticks), (&PRICE_CHANGES, &exact)] {
        if rows.is_empty() {
            continue;
        }
        // A replay's rows received after the newest stored row of its span cannot be stored:
        // they are copied straight in, only the others anti-joined.
        let through = if replay { stored_received_through(&tx, table, rows).await? } else { None };
        let Some(through) = through else {
            copy_direct(&tx, keys, table, rows).await?;
            continue;
        };
        let (maybe, fresh): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.received_at().timestamp_micros() <= through);
        if !maybe.is_empty() {
            idempotent(&tx, keys, table, &maybe).await?;
        }
        if !fresh.is_empty() {
            copy_direct(&tx, keys, table, &fresh).await?;
        }
    }
    // Trades, quotes, tick sizes and stream books have a unique identity. They are copied
    // straight in under one savepoint (a replay's too: spooled rows are mostly new); a unique
    // violation (a row stored already, a book re-dumped after a reconnect) rolls the copies
    // back and they take their idempotent paths. Backfilled and replayed trades always take
    // theirs, where a stream trade replaces a backfilled copy of the same fill.
    let trades_live = trades.iter().all(|r| matches!(r, Row::Trade { source: TradeSource::Ws, .. }));
    let direct_trades = trades_live && !trades.is_empty() && origin == Origin::Live;
    let copied = if direct_trades || !quotes.is_empty() || !ticks.is_empty() || !books_.is_empty() {
        copy_under_savepoint(&tx, async {
            let mut new_trades = 0;
            if direct_trades {
                new_trades = copy_direct(&tx, keys, &TRADES, &trades).await?;
            }
            if !quotes.is_empty() {
                copy_direct(&tx, keys, &QUOTES, &quotes).await?;
            }
            if !ticks.is_empty() {
                copy_direct(&tx, keys, &TICKS, &ticks).await?;
            }
            if !books_.is_empty() {
                books::copy_snapshots(&tx, &books_, BookSource::Ws).await?;
            }
            Ok(new_trades)
        })
        .await?
    } else {
        None
    };
    let mut new_trades = copied.unwrap_or(0);
    if !trades.is_empty() && !(copied.is_some() && direct_trades) {
        new_trades = idempotent(&tx, keys, &TRADES, &trades).await?;
    }
    if copied.is_none() {
        if !quotes.is_empty() {
            idempotent(&tx, keys, &QUOTES, &quotes).await?;
        }
        if !ticks.is_empty() {
            idempotent(&tx, keys, &TICKS, &ticks).await?;
        }
        for chunk in books_.chunks(500) {
            books::insert_snapshots(&tx, chunk, BookSource::Ws).await?;
        }
    }
    if !quarantine.is_empty() {
        copy_direct(&tx, keys, &QUARANTINE, &quarantine).await?;
    }
    if !lifecycle.is_empty() {
        idempotent(&tx, keys, &LIFECYCLE, &lifecycle).await?;
        apply_lifecycle(&tx, &lifecycle).await?;
    }
    tx.commit().await?;
    Ok(new_trades)
}

/// A stream table and the two ways its rows go in.
struct Table {
    name: &'static str,
    /// The columns a binary COPY writes, in the order [`copy_direct`] writes them.
    columns: &'static str,
    /// One row as a JSON object for `jsonb_to_recordset` (column name → value), keys resolved.
    json_row: fn(&Keys, &Row) -> Value,
    /// Run before `insert` on the idempotent path; `$1` is the rows.
    before_insert: &'static [&'static str],
    /// `INSERT … SELECT … FROM jsonb_to_recordset($1) AS n(…) …` storing what is new.
    insert: &'static str,
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

/// Binary COPY straight into the table, each field encoded as its column's type
/// (`table.columns`, in order; [`super::copy`]); no allocation per row.
async fn copy_direct(tx: &Transaction<'_>, keys: &Keys, table: &Table, rows: &[&Row]) -> Result<u64, tokio_postgres::Error> {
    let mut copy = CopyIn::start(tx, table.name, table.columns).await?;
    let mut bytes = Vec::with_capacity(64);
    // The rows' token keys under one lock (the write tasks share it; a lock per row cost more
    // than the lookup).
    let tokens = keys.tokens_of(rows);
    for (r, &token) in rows.iter().zip(&tokens) {
        let mut row = copy.row().await?;
        match r {
            Row::Trade { trade: t, received_at, source } => {
                // token_key, buy, backfill, source_ts, received_at, price, size, tx, fee_rate_bps
                let tx = t.tx_hash.as_deref().map(|h| {
                    tx_into(h, &mut bytes);
                    bytes.as_slice()
                });
                row.int4(token).bool(t.side == Side::Buy).bool(*source == TradeSource::Backfill).timestamptz(&t.source_ts);
                row.timestamptz(received_at).numeric(&t.price).numeric(&t.size).opt_bytes(tx).opt_numeric(t.fee_rate_bps.as_ref());
            }
            Row::PriceChange { change: c, source_ts, received_at, .. } => {
                // source_ts, received_at, token_key, buy, price, size, best_bid, best_ask, hash:
                // the same columns in both tables, prices in ticks or as received (the row's
                // values chose its table).
                let hash = c.hash.as_deref().map(|h| {
                    level_hash_into(h, &mut bytes);
                    bytes.as_slice()
                });
                row.timestamptz(source_ts).timestamptz(received_at).int4(token).bool(c.side == Side::Buy);
                match LevelTicks::of(c) {
                    Some(t) => row.int2(t.price).numeric(&c.size).opt_int2(t.best_bid).opt_int2(t.best_ask),
                    None => row.numeric(&c.price).numeric(&c.size).opt_numeric(c.best_bid.as_ref()).opt_numeric(c.best_ask.as_ref()),
                };
                row.opt_bytes(hash);
            }
            Row::Quote { quote: q, received_at } => {
                // token_key, source_ts, received_at, best_bid, best_ask, spread
                row.int4(token).timestamptz(&q.source_ts).timestamptz(received_at);
                row.opt_numeric(q.best_bid.as_ref()).opt_numeric(q.best_ask.as_ref()).opt_numeric(q.spread.as_ref());
            }
            Row::TickSize { change: c, received_at } => {
                // token_key, source_ts, received_at, old_tick_size, new_tick_size
                row.int4(token).timestamptz(&c.source_ts).timestamptz(received_at);
                row.opt_numeric(c.old_tick_size.as_ref()).opt_numeric(c.new_tick_size.as_ref());
            }
            Row::Quarantine { connection, reason, frame, received_at } => {
                // received_at, connection, reason, frame
                row.timestamptz(received_at);
                match connection {
                    Some(c) => row.int4(*c),
                    None => row.null(),
                };
                row.text(reason).text(frame);
            }
            Row::Lifecycle { .. } | Row::Book { .. } => unreachable!("not copied directly"),
        }
    }
    copy.finish().await
}

/// The newest receive time (µs since the epoch) of a stored level change inside both of the
/// batch's spans of `source_ts` and `received_at`; `None` if there is none. A stored copy of a
/// row has the row's `source_ts` and `received_at`, so a row received after it is not stored.
/// A replay (most often rows spooled while the database was away or slow) is newer than what
/// is stored but for a few ms where readers' rows interleave, so nearly all of it is copied
/// straight in. One look through the BRIN index on `source_ts`.
async fn stored_received_through(tx: &Transaction<'_>, table: &Table, rows: &[&Row]) -> Result<Option<i64>, tokio_postgres::Error> {
    let times: Vec<(DateTime<Utc>, DateTime<Utc>)> = rows
        .iter()
        .filter_map(|r| match r {
            Row::PriceChange { source_ts, received_at, .. } => Some((*source_ts, *received_at)),
            _ => None,
        })
        .collect();
    let span =
        |pick: fn(&(DateTime<Utc>, DateTime<Utc>)) -> DateTime<Utc>| Some((times.iter().map(pick).min()?, times.iter().map(pick).max()?));
    let (Some((s0, s1)), Some((r0, r1))) = (span(|t| t.0), span(|t| t.1)) else {
        return Ok(None);
    };
    summarize_new_ranges(tx, table, s0, s1).await?;
    let sql = format!("SELECT max(received_at) FROM {} WHERE source_ts BETWEEN $1 AND $2 AND received_at BETWEEN $3 AND $4", table.name);
    // The bounds go in as the rows did (truncated to microseconds), so they hold every copy.
    // A fresh day partition has no statistics yet: the planner may choose a sequential scan,
    // which reads the whole day.
    tx.batch_execute("SET LOCAL enable_seqscan = off").await?;
    let through: Option<DateTime<Utc>> = tx.query_one(&sql, &[&s0, &s1, &r0, &r1]).await?.get(0);
    tx.batch_execute("SET LOCAL enable_seqscan = on").await?;
    Ok(through.map(|t| t.timestamp_micros()))
}

/// Summarizes the BRIN ranges on `source_ts` not yet summarized in the day partitions from
/// `from` to `to`. An unsummarized range matches every BRIN scan, and under load autovacuum's
/// summarizing falls behind (PostgreSQL logs "request for BRIN range summarization … was not
/// recorded"): [`stored_received_through`] then read most of the day's rows for every
/// replayed batch, and a spool filled in a burst drained slower than the stream filled it.
/// This reads each new range once. A role that does not own the tables may not summarize:
/// the check then scans as before.
async fn summarize_new_ranges(
    tx: &Transaction<'_>,
    table: &Table,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    let (first, last) =
        (partitions::partition_name(table.name, from.date_naive()), partitions::partition_name(table.name, to.date_naive()));
    tx.batch_execute("SAVEPOINT summarize").await?;
    let summarized = tx
        .query(
            "SELECT brin_summarize_new_values(i.indexrelid) FROM pg_index i \
             JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_am a ON a.oid = x.relam \
             WHERE a.amname = 'brin' AND t.relispartition AND t.relname BETWEEN $1 AND $2",
            &[&first, &last],
        )
        .await;
    match summarized {
        Ok(_) => tx.batch_execute("RELEASE SAVEPOINT summarize").await,
        Err(e) => {
            tracing::debug!(error = %e, table = table.name, "cannot summarize BRIN ranges before a replay check");
            tx.batch_execute("ROLLBACK TO SAVEPOINT summarize").await
        }
    }
}

/// The idempotent path: the rows as one `jsonb` parameter, inserted where not yet stored.
async fn idempotent(tx: &Transaction<'_>, keys: &Keys, table: &Table, rows: &[&Row]) -> Result<u64, tokio_postgres::Error> {
    let data = Value::Array(rows.iter().map(|r| (table.json_row)(keys, r)).collect());
    for statement in table.before_insert {
        tx.execute(*statement, &[&data]).await?;
    }
    tx.execute(table.insert, &[&data]).await
}

/// `trades` is a view over `trades_compact` (migration 7): the token key, side and source as
/// booleans, the transaction hash in [`tx_bytes`]' form; the identity is the unique index on
/// `(token_key, source_ts, trade_identity(buy, price, size, tx))`.
const TRADES: Table = Table {
    name: "trades_compact",
    columns: "token_key, buy, backfill, source_ts, received_at, price, size, tx, fee_rate_bps",
    json_row: |keys, r| match r {
        Row::Trade { trade: t, received_at, source } => json!({
            "token_key": keys.token(&t.asset_id), "buy": t.side == Side::Buy, "backfill": *source == TradeSource::Backfill,
            "source_ts": us(t.source_ts), "received_at": us(received_at), "price": t.price, "size": t.size,
            "tx": tx_bytes(t.tx_hash.as_deref()).map(|b| bytea_literal(&b)), "fee_rate_bps": t.fee_rate_bps,
        }),
        _ => unreachable!("grouped by kind"),
    },
    // One identity for a fill however it arrived (docs/schema.md, "Trade identity"): the
    // stream reports the match time in milliseconds and the exact price; the Data API the
    // block time in whole seconds and the price as a float. A backfilled row is the same fill
    // as a stored row with the same asset, side and exact size, a stream time within its
    // second, a price within half the finest tick (0.0001), and the same transaction hash
    // when both have one. The stream's copy wins: it replaces a backfilled copy, and a
    // backfilled row is not inserted where any copy exists.
    before_insert: &["DELETE FROM trades_compact b USING jsonb_to_recordset($1::jsonb) AS n(token_key int, buy bool, backfill bool,
            source_ts timestamptz, price numeric, size numeric, tx bytea)
        WHERE NOT n.backfill AND b.backfill AND b.token_key = n.token_key
          AND b.source_ts = date_trunc('second', n.source_ts) AND b.buy = n.buy AND b.size = n.size
          AND abs(b.price - n.price) < 0.00005
          AND (b.tx IS NULL OR n.tx IS NULL OR b.tx = n.tx)"],
    insert: "INSERT INTO trades_compact (token_key, buy, backfill, source_ts, received_at, price, size, tx, fee_rate_bps)
        SELECT DISTINCT ON (n.token_key, n.source_ts, trade_identity(n.buy, n.price, n.size, n.tx))
            n.token_key, n.buy, n.backfill, n.source_ts, n.received_at, n.price, n.size, n.tx, n.fee_rate_bps
        FROM jsonb_to_recordset($1::jsonb) AS n(token_key int, buy bool, backfill bool, source_ts timestamptz,
            received_at timestamptz, price numeric, size numeric, tx bytea, fee_rate_bps numeric)
        WHERE NOT n.backfill OR NOT EXISTS (
            SELECT 1 FROM trades_compact o WHERE o.token_key = n.token_key
              AND o.source_ts >= date_trunc('second', n.source_ts)
              AND o.source_ts < date_trunc('second', n.source_ts) + interval '1 second'
              AND o.buy = n.buy AND o.size = n.size AND abs(o.price - n.price) < 0.00005
              AND (o.tx IS NULL OR n.tx IS NULL OR o.tx = n.tx))
        ON CONFLICT DO NOTHING",
};

/// `price_changes` is a view over `price_changes_ticks` and `price_changes_compact`
/// (migrations 5, 8 and 9): the token key from the `stream_tokens` dictionary (its market is
/// the token's), the side as a boolean, the hash in [`level_hash_bytes`]' form; the prices as
/// counts of 0.0001 ([`LevelTicks`]) where they fit, as received where they do not.
const PRICE_CHANGES_TICKS: Table = level_changes_table!("price_changes_ticks", "smallint");
const PRICE_CHANGES: Table = level_changes_table!("price_changes_compact", "numeric");

/// The two level-change tables differ only in their name and the type of their prices.
macro_rules! level_changes_table {
    ($name:literal, $price:literal) => {
        Table {
            name: $name,
            columns: "source_ts, received_at, token_key, buy, price, size, best_bid, best_ask, hash",
            json_row: level_change_json,
            before_insert: &[],
            // Identity: (token, source_ts, side, price, size, hash). There is no (token, time)
            // B-tree to look each row up by (migration 8): the rows stored in the batch's time
            // span are read once, through the BRIN index and the day partitions, and
            // anti-joined by hash.
            insert: concat!(
                "WITH n AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS n(source_ts timestamptz, received_at timestamptz, token_key int,
                    buy bool, price ",
                $price,
                ", size numeric, best_bid ",
                $price,
                ", best_ask ",
                $price,
                ", hash bytea)),
                o AS MATERIALIZED (SELECT token_key, source_ts, buy, price, size, hash FROM ",
                $name,
                "
                    WHERE source_ts BETWEEN (SELECT min(source_ts) FROM n) AND (SELECT max(source_ts) FROM n))
            INSERT INTO ",
                $name,
                " (source_ts, received_at, token_key, buy, price, size, best_bid, best_ask, hash)
            SELECT DISTINCT ON (n.token_key, n.source_ts, n.buy, n.price, n.size, n.hash)
                n.source_ts, n.received_at, n.token_key, n.buy, n.price, n.size, n.best_bid, n.best_ask, n.hash
            FROM n
            WHERE NOT EXISTS (SELECT 1 FROM o WHERE o.token_key = n.token_key AND o.source_ts = n.source_ts
                AND o.buy = n.buy AND o.price = n.price AND o.size = n.size AND o.hash IS NOT DISTINCT FROM n.hash)"
            ),
        }
    };
}
use level_changes_table;

/// A level change as a JSON object for the idempotent path, in its table's form.
fn level_change_json(keys: &Keys, r: &Row) -> Value {
    let Row::PriceChange { change: c, source_ts, received_at, .. } = r else { unreachable!("grouped by kind") };
    let mut row = json!({
        "source_ts": us(source_ts), "received_at": us(received_at), "token_key": keys.token(&c.asset_id),
        "buy": c.side == Side::Buy, "price": c.price, "size": c.size, "best_bid": c.best_bid, "best_ask": c.best_ask,
        "hash": level_hash_bytes(c.hash.as_deref()).map(|b| bytea_literal(&b)),
    });
    if let Some(t) = LevelTicks::of(c) {
        row["price"] = json!(t.price);
        row["best_bid"] = json!(t.best_bid);
        row["best_ask"] = json!(t.best_ask);
    }
    row
}

/// A level change's prices as `price_changes_ticks` stores them (migration 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelTicks {
    pub price: i16,
    pub best_bid: Option<i16>,
    pub best_ask: Option<i16>,
}

impl LevelTicks {
    /// `Some` when the price and the best bid and ask (where present) each fit
    /// [`price_ticks`]; the row then goes to `price_changes_ticks`, else to
    /// `price_changes_compact` as received.
    pub fn of(c: &LevelChange) -> Option<LevelTicks> {
        let optional = |p: &Option<Decimal>| match p {
            None => Some(None),
            Some(p) => price_ticks(p).map(Some),
        };
        Some(LevelTicks { price: price_ticks(&c.price)?, best_bid: optional(&c.best_bid)?, best_ask: optional(&c.best_ask)? })
    }
}

/// A price as a count of 0.0001 when the SQL function `price_from_ticks` reads that count
/// back as exactly the same decimal, scale included: 0 to 3.2767, at most four decimals and
/// no trailing zero (`0.5` → 5000, `0.0025` → 25, `1` → 10000; `0.50`, `0.00001`, `-0.1`,
/// `5` → `None`).
pub fn price_ticks(price: &Decimal) -> Option<i16> {
    let (mantissa, scale) = (price.mantissa(), price.scale());
    if price.is_sign_negative() || scale > 4 || (scale > 0 && mantissa % 10 == 0) {
        return None;
    }
    i16::try_from(mantissa.checked_mul(10i128.pow(4 - scale))?).ok()
}

/// A time as PostgreSQL stores it (microseconds, truncated as the binary COPY does), so the
/// idempotent path compares equal to what the COPY stored.
fn us(t: impl std::borrow::Borrow<DateTime<Utc>>) -> String {
    t.borrow().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A level change's hash as `price_changes_compact.hash` stores it (migration 8; its inverse
/// is the SQL function `level_hash_text`): upstream's 40 lowercase hex digits as their 20
/// bytes; any other text as `\x00` and its UTF-8, with a second `\x00` when it is 19 bytes
/// long — so a length of 20 always means a hex hash.
pub fn level_hash_bytes(hash: Option<&str>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(21);
    level_hash_into(hash?, &mut out);
    Some(out)
}

/// [`level_hash_bytes`] into a buffer the caller reuses (no allocation per row).
fn level_hash_into(hash: &str, out: &mut Vec<u8>) {
    out.clear();
    if !push_lower_hex(hash, 40, out) {
        out.extend_from_slice(if hash.len() == 19 { b"\0\0" } else { b"\0" });
        out.extend_from_slice(hash.as_bytes());
    }
}

/// A trade's transaction hash as `trades_compact.tx` stores it (migration 7; its inverse is
/// the SQL function `trade_tx_text`): `\x01` and 32 bytes for upstream's `0x` + 64 lowercase hex
/// digits, `\x00` and the UTF-8 text of anything else.
pub fn tx_bytes(tx: Option<&str>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(33);
    tx_into(tx?, &mut out);
    Some(out)
}

/// [`tx_bytes`] into a buffer the caller reuses.
fn tx_into(tx: &str, out: &mut Vec<u8>) {
    out.clear();
    out.push(1);
    if !tx.strip_prefix("0x").is_some_and(|h| push_lower_hex(h, 64, out)) {
        out.clear();
        out.push(0);
        out.extend_from_slice(tx.as_bytes());
    }
}

/// Appends `text` as bytes when it is exactly `digits` lowercase hex digits; `false` (and
/// nothing appended) otherwise. [`push_hex_text`] is the inverse.
pub(crate) fn push_lower_hex(text: &str, digits: usize, out: &mut Vec<u8>) -> bool {
    if text.len() != digits {
        return false;
    }
    let start = out.len();
    for pair in text.as_bytes().chunks_exact(2) {
        let (hi, lo) = (LOWER_HEX[pair[0] as usize], LOWER_HEX[pair[1] as usize]);
        if (hi | lo) > 0x0f {
            out.truncate(start);
            return false;
        }
        out.push(hi << 4 | lo);
    }
    true
}

/// Each byte's value as a lowercase hex digit, 0xff where it is none (one lookup per byte on
/// the hot path: every level change's hash).
const LOWER_HEX: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Appends `bytes` as lowercase hex digits.
pub(crate) fn push_hex_text(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0x0f) as usize] as char);
    }
}

/// Bytes as PostgreSQL's `bytea` input reads them (`\x` + hex), for the JSON of the idempotent path.
fn bytea_literal(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("\\x");
    push_hex_text(bytes, &mut s);
    s
}

impl Row {
    /// The token and market a keyed row belongs to.
    fn token(&self) -> Option<(&str, Option<&str>)> {
        match self {
            Row::Trade { trade: t, .. } => Some((&t.asset_id, t.condition_id.as_deref())),
            Row::PriceChange { change: c, condition_id, .. } => Some((&c.asset_id, condition_id.as_deref())),
            Row::Quote { quote: q, .. } => Some((&q.asset_id, q.condition_id.as_deref())),
            Row::TickSize { change: c, .. } => Some((&c.asset_id, c.condition_id.as_deref())),
            Row::Book { .. } | Row::Lifecycle { .. } | Row::Quarantine { .. } => None,
        }
    }

    /// The UTC day of the partition a row of a partitioned table goes to.
    fn partition_day(&self) -> Option<NaiveDate> {
        match self {
            Row::Trade { trade: t, .. } => Some(t.source_ts.date_naive()),
            Row::PriceChange { source_ts, .. } => Some(source_ts.date_naive()),
            Row::Quote { quote: q, .. } => Some(q.source_ts.date_naive()),
            _ => None,
        }
    }
}

/// What this process knows exists in the database, so the hot path copies integers and runs
/// no DDL: the dictionaries' keys (`stream_tokens`, `stream_conditions`: filled by the catalog
/// for every token it stores, and here for any other the stream meets) and the days whose
/// partitions exist. Unknown ids are added, and missing days made, in their own committed
/// statements before the batch's transaction (`ON CONFLICT DO NOTHING` / `IF NOT EXISTS`:
/// safe with concurrent writers), never inside it: a key is cached only once its dictionary
/// row is durable. One per database.
#[derive(Debug, Default)]
pub struct Keys {
    /// Token id → (token key, whether the dictionary knows its market).
    tokens: Mutex<FxHashMap<String, (i32, bool)>>,
    conditions: Mutex<FxHashMap<String, i32>>,
    days: Mutex<BTreeSet<NaiveDate>>,
    /// Held while missing days are made: the writer writes two batches at once, and two
    /// concurrent `CREATE TABLE IF NOT EXISTS` of one name can fail on PostgreSQL's catalog.
    making_days: tokio::sync::Mutex<()>,
}

impl Keys {
    fn token(&self, id: &str) -> i32 {
        self.tokens.lock().expect("keys lock").get(id).expect("resolved before the copy").0
    }

    /// The token key of each row (0 for a row without a token).
    fn tokens_of(&self, rows: &[&Row]) -> Vec<i32> {
        let known = self.tokens.lock().expect("keys lock");
        rows.iter().map(|r| r.token().map_or(0, |(id, _)| known.get(id).expect("resolved before the copy").0)).collect()
    }

    fn condition(&self, id: Option<&str>) -> Option<i32> {
        id.map(|c| *self.conditions.lock().expect("keys lock").get(c).expect("resolved before the copy"))
    }

    /// Makes sure every token and market of these rows has a cached key, and every token
    /// whose row names its market has that market in the dictionary.
    async fn resolve(&self, pool: &Pool, rows: &[Row]) -> Result<(), DbError> {
        // Ordered sets: each id once, and sorted like the catalog's inserts, so concurrent
        // writers never wait on each other in opposite orders.
        let (mut tokens, mut conditions): (BTreeMap<&str, Option<&str>>, BTreeSet<&str>) = (BTreeMap::new(), BTreeSet::new());
        {
            let (known_t, known_c) = (self.tokens.lock().expect("keys lock"), self.conditions.lock().expect("keys lock"));
            for (token, condition) in rows.iter().filter_map(Row::token) {
                let stale = match known_t.get(token) {
                    None => true,
                    Some((_, has_market)) => !has_market && condition.is_some(),
                };
                if stale {
                    tokens.entry(token).or_insert(condition);
                }
                if let Some(c) = condition.filter(|c| !known_c.contains_key(*c)) {
                    conditions.insert(c);
                }
            }
        }
        if tokens.is_empty() && conditions.is_empty() {
            return Ok(());
        }
        let db = pool.get().await?;
        if !conditions.is_empty() {
            let conditions: Vec<&str> = conditions.into_iter().collect();
            db.execute("INSERT INTO stream_conditions (condition_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", &[&conditions])
                .await?;
            let rows =
                db.query("SELECT condition_id, condition_key FROM stream_conditions WHERE condition_id = ANY($1)", &[&conditions]).await?;
            let mut known = self.conditions.lock().expect("keys lock");
            for r in rows {
                known.insert(r.get(0), r.get(1));
            }
        }
        if !tokens.is_empty() {
            let ids: Vec<&str> = tokens.keys().copied().collect();
            let markets: Vec<Option<i32>> = tokens.values().map(|c| self.condition(*c)).collect();
            db.execute(
                "INSERT INTO stream_tokens (token_id, condition_key) SELECT * FROM unnest($1::text[], $2::int4[])
                 ON CONFLICT (token_id) DO UPDATE SET condition_key = EXCLUDED.condition_key
                 WHERE stream_tokens.condition_key IS NULL AND EXCLUDED.condition_key IS NOT NULL",
                &[&ids, &markets],
            )
            .await?;
            let rows = db
                .query("SELECT token_id, token_key, condition_key IS NOT NULL FROM stream_tokens WHERE token_id = ANY($1)", &[&ids])
                .await?;
            let mut known = self.tokens.lock().expect("keys lock");
            for r in rows {
                known.insert(r.get(0), (r.get(1), r.get(2)));
            }
        }
        Ok(())
    }

    /// Makes the partitions of the days of these rows that this process has not seen yet
    /// (today's are made ahead by the daemon; an older day comes with a replay or a backfill).
    /// Only days from yesterday on are remembered: retention never drops those, while an
    /// older day may be dropped (and is then made again for a late row, and dropped again by
    /// the next maintenance).
    async fn ensure_days(&self, pool: &Pool, rows: &[Row]) -> Result<(), DbError> {
        let missing: BTreeSet<NaiveDate> = {
            let known = self.days.lock().expect("keys lock");
            rows.iter().filter_map(Row::partition_day).filter(|d| !known.contains(d)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let _making = self.making_days.lock().await;
        let yesterday = Utc::now().date_naive() - chrono::Duration::days(1);
        for day in missing {
            partitions::ensure(pool, day, day).await?;
            if day >= yesterday {
                self.days.lock().expect("keys lock").insert(day);
            }
        }
        Ok(())
    }
}

/// `quotes` is a view over `quotes_compact` (migration 7); identity `(token_key, source_ts)`.
const QUOTES: Table = Table {
    name: "quotes_compact",
    columns: "token_key, source_ts, received_at, best_bid, best_ask, spread",
    json_row: |keys, r| match r {
        Row::Quote { quote: q, received_at } => json!({
            "token_key": keys.token(&q.asset_id), "best_bid": q.best_bid, "best_ask": q.best_ask,
            "spread": q.spread, "source_ts": us(q.source_ts), "received_at": us(received_at),
        }),
        _ => unreachable!("grouped by kind"),
    },
    before_insert: &[],
    insert: "INSERT INTO quotes_compact (token_key, source_ts, received_at, best_bid, best_ask, spread)
        SELECT n.token_key, n.source_ts, n.received_at, n.best_bid, n.best_ask, n.spread
        FROM jsonb_to_recordset($1::jsonb) AS n(token_key int, best_bid numeric, best_ask numeric,
            spread numeric, source_ts timestamptz, received_at timestamptz)
        ON CONFLICT DO NOTHING",
};

/// `tick_size_changes` is a view over `tick_size_changes_compact` (migration 7).
const TICKS: Table = Table {
    name: "tick_size_changes_compact",
    columns: "token_key, source_ts, received_at, old_tick_size, new_tick_size",
    json_row: |keys, r| match r {
        Row::TickSize { change: c, received_at } => json!({
            "token_key": keys.token(&c.asset_id), "old_tick_size": c.old_tick_size,
            "new_tick_size": c.new_tick_size, "source_ts": us(c.source_ts), "received_at": us(received_at),
        }),
        _ => unreachable!("grouped by kind"),
    },
    before_insert: &[],
    insert: "INSERT INTO tick_size_changes_compact (token_key, source_ts, received_at, old_tick_size, new_tick_size)
        SELECT n.token_key, n.source_ts, n.received_at, n.old_tick_size, n.new_tick_size
        FROM jsonb_to_recordset($1::jsonb) AS n(token_key int, old_tick_size numeric,
            new_tick_size numeric, source_ts timestamptz, received_at timestamptz)
        ON CONFLICT DO NOTHING",
};

const LIFECYCLE: Table = Table {
    name: "market_events",
    columns: "kind, condition_id, market_id, source_ts, received_at, payload",
    json_row: |_, r| match r {
        Row::Lifecycle { event: e, received_at } => json!({
            "kind": e.kind.as_str(), "condition_id": e.condition_id, "market_id": e.market_id,
            "source_ts": us(e.source_ts), "received_at": us(received_at), "payload": e.payload,
        }),
        _ => unreachable!("grouped by kind"),
    },
    before_insert: &[],
    insert: "INSERT INTO market_events (kind, condition_id, market_id, source_ts, received_at, payload)
        SELECT DISTINCT ON (n.kind, n.condition_id, n.source_ts) n.kind, n.condition_id, n.market_id, n.source_ts, n.received_at, n.payload
        FROM jsonb_to_recordset($1::jsonb) AS n(kind text, condition_id text, market_id text, source_ts timestamptz,
            received_at timestamptz, payload jsonb)
        WHERE n.condition_id IS NOT NULL
        ON CONFLICT DO NOTHING",
};

const QUARANTINE: Table = Table {
    name: "stream_quarantine",
    columns: "received_at, connection, reason, frame",
    json_row: |_, r| match r {
        Row::Quarantine { connection, reason, frame, received_at } => json!({
            "received_at": us(received_at), "connection": connection, "reason": reason, "frame": frame,
        }),
        _ => unreachable!("grouped by kind"),
    },
    before_insert: &[],
    insert: "INSERT INTO stream_quarantine (received_at, connection, reason, frame)
        SELECT n.received_at, n.connection, n.reason, n.frame
        FROM jsonb_to_recordset($1::jsonb) AS n(received_at timestamptz, connection int4, reason text, frame text)",
};

/// `new_market` registers the market and its tokens (so the stream and the books poller see
/// them before the next catalog pass); `market_resolved` closes and resolves the market.
async fn apply_lifecycle(tx: &tokio_postgres::Transaction<'_>, rows: &[&Row]) -> Result<(), tokio_postgres::Error> {
    for r in rows {
        let Row::Lifecycle { event: e, .. } = r else { continue };
        let Some(cond) = &e.condition_id else { continue };
        match e.kind {
            LifecycleKind::NewMarket => {
                let Some(id) = &e.market_id else { continue };
                let question = crate::polymarket::decode::string(&e.payload, "question");
                let slug = crate::polymarket::decode::string(&e.payload, "slug");
                tx.execute(
                    "INSERT INTO markets (id, condition_id, question, slug, active, closed) VALUES ($1, $2, $3, $4, true, false)
                     ON CONFLICT (id) DO NOTHING",
                    &[id, cond, &question, &slug],
                )
                .await?;
                let outcomes = crate::polymarket::decode::string_array(&e.payload, "outcomes").ok().flatten().unwrap_or_default();
                for (i, token) in e.assets.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO tokens (token_id, condition_id, market_id, outcome, outcome_index) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (token_id) DO NOTHING",
                        &[token, cond, id, &outcomes.get(i), &(i as i32)],
                    )
                    .await?;
                }
            }
            LifecycleKind::MarketResolved => {
                tx.execute(
                    "UPDATE markets SET resolved = true, closed = true,
                        winning_outcome_index = COALESCE((SELECT outcome_index FROM tokens WHERE token_id = $2), winning_outcome_index)
                     WHERE condition_id = $1",
                    &[cond, &e.winning_asset_id],
                )
                .await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A count of 0.0001 only where it gives back the same decimal, scale included (what
    /// `price_from_ticks`, `trim_scale(ticks * 0.0001)`, returns).
    #[test]
    fn prices_in_ticks_only_where_they_read_back_the_same() {
        let ticks = |p: &str| price_ticks(&p.parse().unwrap());
        for (price, want) in [
            ("0", Some(0)),
            ("0.0001", Some(1)),
            ("0.0025", Some(25)),
            ("0.47", Some(4700)),
            ("0.5", Some(5000)),
            ("1", Some(10000)),
            ("1.5", Some(15000)),
            ("3.2767", Some(32767)),
        ] {
            assert_eq!(ticks(price), want, "{price}");
            let back = Decimal::new(want.unwrap().into(), 4).normalize();
            assert_eq!(back.to_string(), price, "{price} reads back as itself");
        }
        for price in ["0.50", "0.0", "1.0", "0.00001", "3.2768", "5", "12", "-0.1", "0.12345"] {
            assert_eq!(ticks(price), None, "{price}");
        }
    }
}
