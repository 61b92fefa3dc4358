//! `price_changes` is a view over `price_changes_ticks` and `price_changes_compact`
//! (migrations 5, 8 and 9): the token key from the `stream_tokens` dictionary (its market is
//! the token's), the side as a boolean, the hash in [`level_hash_bytes`]' form; the prices as
//! counts of 0.0001 ([`LevelTicks`]) where they fit, as received where they do not.
//!
//! There is no unique index (it is most of the volume, and a wide unique index cost most of
//! the write time): live rows cannot repeat, so they are copied directly; rows that may be
//! stored already ([`Origin::MaybeStored`](super::Origin)) are copied too when received after
//! every stored row of their time spans, the others anti-joined ([`write`]); rows another
//! instance may have stored ([`Origin::Elsewhere`](super::Origin)) are all anti-joined.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_postgres::Transaction;

use super::Keys;
use super::encode::{LevelTicks, bytea_literal, level_hash_bytes, level_hash_into, us};
use crate::db::copy::CopyIn;
use crate::db::partitions;
use crate::polymarket::decode::Side;
use crate::polymarket::ws::LevelChange;

/// A level change of a batch.
pub(super) struct ChangeIn<'a> {
    pub change: &'a LevelChange,
    pub source_ts: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

/// One of the two level-change tables.
struct Table {
    name: &'static str,
    /// The type of its prices.
    price: &'static str,
}

const TICKS: Table = Table { name: "price_changes_ticks", price: "smallint" };
const EXACT: Table = Table { name: "price_changes_compact", price: "numeric" };
const COLUMNS: &str = "source_ts, received_at, token_key, buy, price, size, best_bid, best_ask, hash";

/// How much a batch's level changes are checked against the stored ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// New: copied.
    None,
    /// This instance's own rows that may be stored: those received after every stored row of
    /// the batch's spans are copied, the others anti-joined.
    Replay,
    /// Maybe stored by another instance (other receive times): all anti-joined.
    All,
}

/// Stores the level changes of a batch: each in the table its values fit (most in ticks, any
/// other exactly as received), checked as `check` says.
pub(super) async fn write(tx: &Transaction<'_>, keys: &Keys, rows: &[ChangeIn<'_>], check: Check) -> Result<(), tokio_postgres::Error> {
    let (in_ticks, exact): (Vec<&ChangeIn>, Vec<&ChangeIn>) = rows.iter().partition(|r| LevelTicks::of(r.change).is_some());
    for (table, rows) in [(&TICKS, &in_ticks), (&EXACT, &exact)] {
        if rows.is_empty() {
            continue;
        }
        // A replay's rows received after the newest stored row of its span cannot be stored:
        // they are copied straight in, only the others anti-joined.
        if check == Check::All {
            insert_new(tx, keys, table, rows).await?;
            continue;
        }
        let through = if check == Check::Replay { stored_received_through(tx, table, rows).await? } else { None };
        let Some(through) = through else {
            copy(tx, keys, table, rows).await?;
            continue;
        };
        let (maybe, fresh): (Vec<&ChangeIn>, Vec<&ChangeIn>) = rows.iter().partition(|r| r.received_at.timestamp_micros() <= through);
        if !maybe.is_empty() {
            insert_new(tx, keys, table, &maybe).await?;
        }
        if !fresh.is_empty() {
            copy(tx, keys, table, &fresh).await?;
        }
    }
    Ok(())
}

/// Binary COPY straight into the table, prices in ticks or as received (the row's values
/// chose its table).
async fn copy(tx: &Transaction<'_>, keys: &Keys, table: &Table, rows: &[&ChangeIn<'_>]) -> Result<u64, tokio_postgres::Error> {
    let mut copy = CopyIn::start(tx, table.name, COLUMNS).await?;
    let mut bytes = Vec::with_capacity(64);
    let tokens = keys.tokens_of(rows.iter().map(|r| r.change.asset_id.as_str()));
    for (r, &token) in rows.iter().zip(&tokens) {
        let c = r.change;
        let hash = c.hash.as_deref().map(|h| {
            level_hash_into(h, &mut bytes);
            bytes.as_slice()
        });
        let mut row = copy.row().await?;
        row.timestamptz(&r.source_ts).timestamptz(&r.received_at).int4(token).bool(c.side == Side::Buy);
        match LevelTicks::of(c) {
            Some(t) => row.int2(t.price).numeric(&c.size).opt_int2(t.best_bid).opt_int2(t.best_ask),
            None => row.numeric(&c.price).numeric(&c.size).opt_numeric(c.best_bid.as_ref()).opt_numeric(c.best_ask.as_ref()),
        };
        row.opt_bytes(hash);
    }
    copy.finish().await
}

/// The idempotent path. Identity: (token, source_ts, side, price, size, hash). There is no
/// (token, time) B-tree to look each row up by (migration 8): the rows stored in the batch's
/// time span are read once, through the BRIN index and the day partitions, and anti-joined.
async fn insert_new(tx: &Transaction<'_>, keys: &Keys, table: &Table, rows: &[&ChangeIn<'_>]) -> Result<u64, tokio_postgres::Error> {
    let data = Value::Array(rows.iter().map(|r| json_row(keys, r)).collect());
    let (name, price) = (table.name, table.price);
    let sql = format!(
        "WITH n AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS n(source_ts timestamptz, received_at timestamptz, token_key int,
            buy bool, price {price}, size numeric, best_bid {price}, best_ask {price}, hash bytea)),
        o AS MATERIALIZED (SELECT token_key, source_ts, buy, price, size, hash FROM {name}
            WHERE source_ts BETWEEN (SELECT min(source_ts) FROM n) AND (SELECT max(source_ts) FROM n))
        INSERT INTO {name} ({COLUMNS})
        SELECT DISTINCT ON (n.token_key, n.source_ts, n.buy, n.price, n.size, n.hash)
            n.source_ts, n.received_at, n.token_key, n.buy, n.price, n.size, n.best_bid, n.best_ask, n.hash
        FROM n
        WHERE NOT EXISTS (SELECT 1 FROM o WHERE o.token_key = n.token_key AND o.source_ts = n.source_ts
            AND o.buy = n.buy AND o.price = n.price AND o.size = n.size AND o.hash IS NOT DISTINCT FROM n.hash)"
    );
    tx.execute(&sql, &[&data]).await
}

/// A level change as a JSON object for the idempotent path, in its table's form.
fn json_row(keys: &Keys, r: &ChangeIn<'_>) -> Value {
    let c = r.change;
    let mut row = json!({
        "source_ts": us(r.source_ts), "received_at": us(r.received_at), "token_key": keys.token(&c.asset_id),
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

/// The newest receive time (µs since the epoch) of a stored level change inside both of the
/// batch's spans of `source_ts` and `received_at`; `None` if there is none. A stored copy of a
/// row has the row's `source_ts` and `received_at`, so a row received after it is not stored.
/// A replay (most often rows spooled while the database was away or slow) is newer than what
/// is stored but for a few ms where readers' rows interleave, so nearly all of it is copied
/// straight in. One look through the BRIN index on `source_ts`.
async fn stored_received_through(
    tx: &Transaction<'_>,
    table: &Table,
    rows: &[&ChangeIn<'_>],
) -> Result<Option<i64>, tokio_postgres::Error> {
    let span = |pick: fn(&ChangeIn) -> DateTime<Utc>| Some((rows.iter().map(|r| pick(r)).min()?, rows.iter().map(|r| pick(r)).max()?));
    let (Some((s0, s1)), Some((r0, r1))) = (span(|r| r.source_ts), span(|r| r.received_at)) else {
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
