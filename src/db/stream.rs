//! The stream tables (`trades`, `price_changes`, `quotes`, `tick_size_changes`,
//! `market_events`, `stream_quarantine`, and `book_snapshots` for stream books): the rows they
//! take ([`Row`]) and [`write_batch`], which stores one batch in one transaction with binary
//! `COPY`. Trades from the stream go straight into `trades` (a savepoint catches the rare
//! replayed row); every other table goes through a temporary table and
//! `INSERT … ON CONFLICT DO NOTHING`, so a row written twice is stored once. `new_market` and
//! `market_resolved` also update the catalog.
//!
//! Queueing, batching, spooling and retries are the stream collector's
//! (`collectors::stream::{sink, writer}`); this module is SQL only.

use chrono::{DateTime, Utc};
use futures_util::pin_mut;
use serde::{Deserialize, Serialize};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::books::{self, BookSource};
use super::{DbError, Pool};
use crate::polymarket::clob::Book;
use crate::polymarket::ws::{Lifecycle, LifecycleKind, LevelChange, Quote, TickSizeChange, Trade};

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
    Trade { trade: Trade, received_at: DateTime<Utc>, source: TradeSource },
    Book { book: Book, received_at: DateTime<Utc> },
    PriceChange { change: LevelChange, condition_id: Option<String>, source_ts: DateTime<Utc>, received_at: DateTime<Utc> },
    Quote { quote: Quote, received_at: DateTime<Utc> },
    TickSize { change: TickSizeChange, received_at: DateTime<Utc> },
    Lifecycle { event: Lifecycle, received_at: DateTime<Utc> },
    Quarantine { connection: Option<i32>, reason: String, frame: String, received_at: DateTime<Utc> },
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

/// Stores one batch in one transaction; returns the number of new trades.
///
/// `replay`: the rows come from the spool (written before a crash or during an outage), so
/// a backfill may have stored some of their trades meanwhile; they take the idempotent path,
/// which replaces a backfilled copy of the same fill with the stream's.
pub async fn write_batch(pool: &Pool, rows: &[Row], replay: bool) -> Result<u64, DbError> {
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
            Row::Book { book, received_at } => books_.push((book.clone(), *received_at)),
            Row::Quote { .. } => quotes.push(r),
            Row::TickSize { .. } => ticks.push(r),
            Row::Lifecycle { .. } => lifecycle.push(r),
            Row::Quarantine { .. } => quarantine.push(r),
        }
    }
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let mut new_trades = 0;
    if !trades.is_empty() {
        new_trades = write_trades(&tx, &trades, replay).await?;
    }
    if !changes.is_empty() {
        copy_rows(&tx, &PRICE_CHANGES, &changes).await?;
    }
    if !quotes.is_empty() {
        copy_rows(&tx, &QUOTES, &quotes).await?;
    }
    if !ticks.is_empty() {
        copy_rows(&tx, &TICKS, &ticks).await?;
    }
    if !quarantine.is_empty() {
        copy_rows(&tx, &QUARANTINE, &quarantine).await?;
    }
    if !lifecycle.is_empty() {
        copy_rows(&tx, &LIFECYCLE, &lifecycle).await?;
        apply_lifecycle(&tx, &lifecycle).await?;
    }
    for chunk in books_.chunks(500) {
        books::insert_snapshots(&tx, chunk, BookSource::Ws).await?;
    }
    tx.commit().await?;
    Ok(new_trades)
}

/// Trades: stream rows are almost never duplicates, so they are copied straight into
/// `trades` under a savepoint; a unique violation (a replayed row) falls back to the
/// idempotent path through the temporary table, as do backfilled rows always.
async fn write_trades(tx: &tokio_postgres::Transaction<'_>, rows: &[&Row], replay: bool) -> Result<u64, tokio_postgres::Error> {
    let all_ws = rows.iter().all(|r| matches!(r, Row::Trade { source: TradeSource::Ws, .. }));
    if all_ws && !replay {
        tx.batch_execute("SAVEPOINT direct_trades").await?;
        let sink = tx.copy_in(&format!("COPY trades ({}) FROM STDIN (FORMAT binary)", TRADES.columns)).await?;
        let result = async {
            let writer = BinaryCopyInWriter::new(sink, TRADES.types);
            pin_mut!(writer);
            // The hot path: fields borrowed straight from the rows, no allocation per row.
            for r in rows {
                let Row::Trade { trade: t, received_at, source } = r else { continue };
                let (src, side) = (source.as_str(), t.side.as_str());
                writer
                    .as_mut()
                    .write(&[&t.asset_id, &t.condition_id, &t.price, &t.size, &side, &t.source_ts, received_at, &src, &t.tx_hash, &t.fee_rate_bps])
                    .await?;
            }
            writer.finish().await
        }
        .await;
        match result {
            Ok(n) => {
                tx.batch_execute("RELEASE SAVEPOINT direct_trades").await?;
                return Ok(n);
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT direct_trades").await?;
            }
            Err(e) => return Err(e),
        }
    }
    copy_rows(tx, &TRADES, rows).await
}

/// A table written through a temporary table: binary COPY in, then insert what is new.
struct CopyTarget {
    temp: &'static str,
    create: &'static str,
    columns: &'static str,
    types: &'static [Type],
    /// Run between the COPY and `insert` (empty: nothing).
    before_insert: &'static str,
    insert: &'static str,
    fields: fn(&Row) -> Vec<Box<dyn ToSql + Sync + Send>>,
}

async fn copy_rows(tx: &tokio_postgres::Transaction<'_>, target: &CopyTarget, rows: &[&Row]) -> Result<u64, tokio_postgres::Error> {
    tx.batch_execute(target.create).await?;
    let sink = tx.copy_in(&format!("COPY {} ({}) FROM STDIN (FORMAT binary)", target.temp, target.columns)).await?;
    let writer = BinaryCopyInWriter::new(sink, target.types);
    pin_mut!(writer);
    for r in rows {
        let values = (target.fields)(r);
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect();
        writer.as_mut().write(&refs).await?;
    }
    writer.finish().await?;
    if !target.before_insert.is_empty() {
        tx.batch_execute(target.before_insert).await?;
    }
    tx.execute(target.insert, &[]).await
}

fn boxed<T: ToSql + Sync + Send + 'static>(v: T) -> Box<dyn ToSql + Sync + Send> {
    Box::new(v)
}

const TRADES: CopyTarget = CopyTarget {
    temp: "t_trades",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_trades (asset_id text, condition_id text, price numeric,
        size numeric, side text, source_ts timestamptz, received_at timestamptz, source text,
        tx_hash text, fee_rate_bps numeric) ON COMMIT DELETE ROWS",
    columns: "asset_id, condition_id, price, size, side, source_ts, received_at, source, tx_hash, fee_rate_bps",
    types: &[Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC, Type::TEXT, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT, Type::NUMERIC],
    // One identity for a fill however it arrived (docs/schema.md, "Trade identity"): the
    // stream reports the match time in milliseconds and the exact price; the Data API the
    // block time in whole seconds and the price as a float. A backfilled row is the same fill
    // as a stored row with the same asset, side and exact size, a stream time within its
    // second, a price within half the finest tick (0.0001), and the same transaction hash
    // when both have one. The stream's copy wins: it replaces a backfilled copy, and a
    // backfilled row is not inserted where any copy exists.
    before_insert: "DELETE FROM trades b USING t_trades n
        WHERE n.source = 'ws' AND b.source = 'backfill' AND b.asset_id = n.asset_id
          AND b.source_ts = date_trunc('second', n.source_ts) AND b.side = n.side AND b.size = n.size
          AND abs(b.price - n.price) < 0.00005
          AND (b.tx_hash IS NULL OR n.tx_hash IS NULL OR b.tx_hash = n.tx_hash)",
    insert: "INSERT INTO trades (asset_id, condition_id, price, size, side, source_ts, received_at, source, tx_hash, fee_rate_bps)
        SELECT DISTINCT ON (asset_id, source_ts, side, price, size, COALESCE(tx_hash, '')) * FROM t_trades n
        WHERE n.source = 'ws' OR NOT EXISTS (
            SELECT 1 FROM trades o WHERE o.asset_id = n.asset_id
              AND o.source_ts >= date_trunc('second', n.source_ts)
              AND o.source_ts < date_trunc('second', n.source_ts) + interval '1 second'
              AND o.side = n.side AND o.size = n.size AND abs(o.price - n.price) < 0.00005
              AND (o.tx_hash IS NULL OR n.tx_hash IS NULL OR o.tx_hash = n.tx_hash))
        ON CONFLICT DO NOTHING",
    fields: |r| match r {
        Row::Trade { trade: t, received_at, source } => vec![
            boxed(t.asset_id.clone()), boxed(t.condition_id.clone()), boxed(t.price), boxed(t.size),
            boxed(t.side.as_str()), boxed(t.source_ts), boxed(*received_at), boxed(source.as_str()),
            boxed(t.tx_hash.clone()), boxed(t.fee_rate_bps),
        ],
        _ => unreachable!("grouped by kind"),
    },
};

const PRICE_CHANGES: CopyTarget = CopyTarget {
    temp: "t_price_changes",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_price_changes (asset_id text, condition_id text,
        price numeric, size numeric, side text, hash text, best_bid numeric, best_ask numeric,
        source_ts timestamptz, received_at timestamptz) ON COMMIT DELETE ROWS",
    columns: "asset_id, condition_id, price, size, side, hash, best_bid, best_ask, source_ts, received_at",
    types: &[Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC, Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ],
    before_insert: "",
    insert: "INSERT INTO price_changes SELECT * FROM t_price_changes ON CONFLICT DO NOTHING",
    fields: |r| match r {
        Row::PriceChange { change: c, condition_id, source_ts, received_at } => vec![
            boxed(c.asset_id.clone()), boxed(condition_id.clone()), boxed(c.price), boxed(c.size),
            boxed(c.side.as_str()), boxed(c.hash.clone()), boxed(c.best_bid), boxed(c.best_ask),
            boxed(*source_ts), boxed(*received_at),
        ],
        _ => unreachable!("grouped by kind"),
    },
};

const QUOTES: CopyTarget = CopyTarget {
    temp: "t_quotes",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_quotes (asset_id text, condition_id text, best_bid numeric,
        best_ask numeric, spread numeric, source_ts timestamptz, received_at timestamptz) ON COMMIT DELETE ROWS",
    columns: "asset_id, condition_id, best_bid, best_ask, spread, source_ts, received_at",
    types: &[Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC, Type::NUMERIC, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ],
    before_insert: "",
    insert: "INSERT INTO quotes SELECT DISTINCT ON (asset_id, source_ts) * FROM t_quotes ON CONFLICT DO NOTHING",
    fields: |r| match r {
        Row::Quote { quote: q, received_at } => vec![
            boxed(q.asset_id.clone()), boxed(q.condition_id.clone()), boxed(q.best_bid), boxed(q.best_ask),
            boxed(q.spread), boxed(q.source_ts), boxed(*received_at),
        ],
        _ => unreachable!("grouped by kind"),
    },
};

const TICKS: CopyTarget = CopyTarget {
    temp: "t_ticks",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_ticks (asset_id text, condition_id text, old_tick_size numeric,
        new_tick_size numeric, source_ts timestamptz, received_at timestamptz) ON COMMIT DELETE ROWS",
    columns: "asset_id, condition_id, old_tick_size, new_tick_size, source_ts, received_at",
    types: &[Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ],
    before_insert: "",
    insert: "INSERT INTO tick_size_changes SELECT DISTINCT ON (asset_id, source_ts) * FROM t_ticks ON CONFLICT DO NOTHING",
    fields: |r| match r {
        Row::TickSize { change: c, received_at } => vec![
            boxed(c.asset_id.clone()), boxed(c.condition_id.clone()), boxed(c.old_tick_size),
            boxed(c.new_tick_size), boxed(c.source_ts), boxed(*received_at),
        ],
        _ => unreachable!("grouped by kind"),
    },
};

const LIFECYCLE: CopyTarget = CopyTarget {
    temp: "t_market_events",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_market_events (kind text, condition_id text, market_id text,
        source_ts timestamptz, received_at timestamptz, payload jsonb) ON COMMIT DELETE ROWS",
    columns: "kind, condition_id, market_id, source_ts, received_at, payload",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::JSONB],
    before_insert: "",
    insert: "INSERT INTO market_events SELECT DISTINCT ON (kind, condition_id, source_ts) * FROM t_market_events
        WHERE condition_id IS NOT NULL ON CONFLICT DO NOTHING",
    fields: |r| match r {
        Row::Lifecycle { event: e, received_at } => vec![
            boxed(e.kind.as_str()), boxed(e.condition_id.clone()), boxed(e.market_id.clone()),
            boxed(e.source_ts), boxed(*received_at), boxed(e.payload.clone()),
        ],
        _ => unreachable!("grouped by kind"),
    },
};

const QUARANTINE: CopyTarget = CopyTarget {
    temp: "t_quarantine",
    create: "CREATE TEMP TABLE IF NOT EXISTS t_quarantine (received_at timestamptz, connection int4,
        reason text, frame text) ON COMMIT DELETE ROWS",
    columns: "received_at, connection, reason, frame",
    types: &[Type::TIMESTAMPTZ, Type::INT4, Type::TEXT, Type::TEXT],
    before_insert: "",
    insert: "INSERT INTO stream_quarantine (received_at, connection, reason, frame) SELECT * FROM t_quarantine",
    fields: |r| match r {
        Row::Quarantine { connection, reason, frame, received_at } => vec![
            boxed(*received_at), boxed(*connection), boxed(reason.clone()), boxed(frame.clone()),
        ],
        _ => unreachable!("grouped by kind"),
    },
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

