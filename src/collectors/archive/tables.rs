//! The archived tables: for each, its columns (the documented names of docs/schema.md), the
//! query that reads an hour of it from the base tables (sorted by token, source time, arrival),
//! and how a row of that query fills the columns.

use super::columns::{Col, Columns, Kind, col, key};
use crate::db::copy_out::{self, CopyOut, Numeric};

/// Prices and sizes of level changes, quotes, tick sizes and books: exact to 8 decimals
/// below 10^10 (every value upstream sends: prices in ticks of at least 0.0001, sizes with up
/// to 6 decimals); INT64 in the file.
const DEC: Kind = Kind::Decimal(18, 8);
/// Sizes: the same, without a dictionary (nearly every value distinct).
const SIZE: Kind = Kind::Amount(18, 8);
/// Trades' prices and sizes: the stream's, and the Data API's floats (`0.709999959`,
/// `0.30000000000000004`: up to 17 decimals) and whole sizes past 10^10; FIXED_LEN_BYTE_ARRAY(16)
/// in the file (trades are ~1 % of the rows: the width costs little, and a reader never meets
/// a NULL where a backfilled value did not fit).
const WIDE: Kind = Kind::Decimal(38, 18);
/// Trades' sizes: the same, without a dictionary.
const WIDE_SIZE: Kind = Kind::Amount(38, 18);

/// How a table's hours are found the first time (no manifest yet).
#[derive(Debug, Clone, Copy)]
pub enum First {
    /// From the first day partition of this base table.
    Partitions(&'static str),
    /// `SELECT min(…)` of the time column.
    Min(&'static str),
}

pub struct Table {
    /// The documented name (and the archive's directory).
    pub name: &'static str,
    pub cols: &'static [Col],
    /// The day-partitioned base tables, released by day once archived.
    pub partitions: &'static [&'static str],
    pub first: First,
    /// The query: `{range}` and `{late}` are predicates on the base table alias `x`, `{hash}`
    /// the level hash column (or NULL).
    sql: &'static str,
    /// How a row of the query fills the columns; `None`: field `i` is column `i`, read as its
    /// kind says.
    fill: Option<fn(&CopyOut, &mut Columns)>,
    /// Gaps are archived once settled (closed, not waiting for a backfill retry), each once
    /// (`stream_gaps.archived_at`), by the hour they started: not by snapshots.
    pub settled_only: bool,
}

impl Table {
    /// The COPY query for rows in `range`, narrowed by `late`.
    pub fn query(&self, range: &str, late: &str, hashes: bool) -> String {
        self.sql.replace("{range}", range).replace("{late}", late).replace("{hash}", if hashes { "x.hash" } else { "NULL::bytea" })
    }

    pub fn fill(&self, row: &CopyOut, out: &mut Columns) {
        match self.fill {
            Some(fill) => fill(row, out),
            None => fill_by_kind(self.cols, row, out),
        }
    }
}

/// Field `i` into column `i`, for every column, as its kind reads.
fn fill_by_kind(cols: &[Col], r: &CopyOut, o: &mut Columns) {
    for (i, c) in cols.iter().enumerate() {
        match c.kind {
            Kind::Dict | Kind::Text | Kind::Random => o.text(text(r, i)),
            Kind::Bool => o.bool(boolean(r, i)),
            Kind::Time => o.time(time(r, i)),
            Kind::Decimal(..) | Kind::Amount(..) => o.decimal(numeric(r, i)),
            Kind::Int32 => o.int32(r.field(i).map(copy_out::int4)),
            Kind::Int64 => o.int64(r.field(i).map(copy_out::int8)),
        }
    }
}

fn text(r: &CopyOut, i: usize) -> Option<&str> {
    r.field(i).map(|b| std::str::from_utf8(b).unwrap_or("\u{fffd}"))
}

fn time(r: &CopyOut, i: usize) -> Option<i64> {
    r.field(i).map(copy_out::timestamptz_us)
}

fn numeric(r: &CopyOut, i: usize) -> Option<Numeric> {
    r.field(i).and_then(copy_out::numeric)
}

fn boolean(r: &CopyOut, i: usize) -> Option<bool> {
    r.field(i).map(copy_out::boolean)
}

/// A price as a count of 0.0001 (`price_changes_ticks`) or exactly (`price_changes_compact`).
fn ticks_or(r: &CopyOut, ticks: usize, exact: usize) -> Option<Numeric> {
    match r.field(ticks) {
        Some(b) => Some(Numeric { mantissa: i16::from_be_bytes([b[0], b[1]]) as i128, scale: 4 }),
        None => numeric(r, exact),
    }
}

fn side(buy: Option<bool>) -> Option<&'static str> {
    buy.map(|b| if b { "BUY" } else { "SELL" })
}

/// A stored level-change hash back as the text upstream sent (the SQL `level_hash_text`).
fn level_hash(b: Option<&[u8]>) -> Option<String> {
    let b = b?;
    // A length of 20 always means upstream's 40 hex digits; any other text is stored after a
    // NUL (two for a 19-byte text).
    Some(match b {
        raw if raw.len() == 20 => {
            let mut s = String::with_capacity(40);
            crate::db::stream::push_hex_text(raw, &mut s);
            s
        }
        [0, 0, rest @ ..] if rest.len() == 19 => String::from_utf8_lossy(rest).into_owned(),
        [_, rest @ ..] => String::from_utf8_lossy(rest).into_owned(),
        [] => String::new(),
    })
}

/// A stored transaction hash back as the text upstream sent (the SQL `trade_tx_text`).
fn tx_hash(b: Option<&[u8]>) -> Option<String> {
    let b = b?;
    Some(match b {
        [1, raw @ ..] => {
            let mut s = String::with_capacity(66);
            s.push_str("0x");
            crate::db::stream::push_hex_text(raw, &mut s);
            s
        }
        [_, rest @ ..] => String::from_utf8_lossy(rest).into_owned(),
        [] => String::new(),
    })
}

pub const PRICE_CHANGES: Table = Table {
    name: "price_changes",
    cols: &[
        key("asset_id", Kind::Dict),
        col("condition_id", Kind::Dict),
        key("price", DEC),
        key("size", SIZE),
        key("side", Kind::Dict),
        col("hash", Kind::Random),
        col("best_bid", DEC),
        col("best_ask", DEC),
        key("source_ts", Kind::Time),
        key("received_at", Kind::Time),
    ],
    partitions: &["price_changes_ticks", "price_changes_compact"],
    first: First::Partitions("price_changes_ticks"),
    sql: "SELECT t.token_id, c.condition_id, p.ticks, p.bid_ticks, p.ask_ticks, p.price, p.best_bid, p.best_ask, p.size, p.buy, p.hash,
                 p.source_ts, p.received_at
          FROM (SELECT x.token_key, x.price AS ticks, x.best_bid AS bid_ticks, x.best_ask AS ask_ticks, NULL::numeric AS price,
                       NULL::numeric AS best_bid, NULL::numeric AS best_ask, x.size, x.buy, {hash} AS hash, x.source_ts, x.received_at
                FROM price_changes_ticks x WHERE {range} AND {late}
                UNION ALL
                SELECT x.token_key, NULL, NULL, NULL, x.price, x.best_bid, x.best_ask, x.size, x.buy, {hash}, x.source_ts, x.received_at
                FROM price_changes_compact x WHERE {range} AND {late}) p
          JOIN stream_tokens t ON t.token_key = p.token_key
          LEFT JOIN stream_conditions c ON c.condition_key = t.condition_key
          ORDER BY t.token_id COLLATE \"C\", p.source_ts, p.received_at",
    fill: Some(|r, o| {
        o.text(text(r, 0));
        o.text(text(r, 1));
        o.decimal(ticks_or(r, 2, 5));
        o.decimal(numeric(r, 8));
        o.text(side(boolean(r, 9)));
        o.text(level_hash(r.field(10)).as_deref());
        o.decimal(ticks_or(r, 3, 6));
        o.decimal(ticks_or(r, 4, 7));
        o.time(time(r, 11));
        o.time(time(r, 12));
    }),
    settled_only: false,
};

pub const TRADES: Table = Table {
    name: "trades",
    cols: &[
        key("asset_id", Kind::Dict),
        col("condition_id", Kind::Dict),
        key("price", WIDE),
        key("size", WIDE_SIZE),
        key("side", Kind::Dict),
        key("source_ts", Kind::Time),
        col("received_at", Kind::Time),
        key("source", Kind::Dict),
        key("tx_hash", Kind::Random),
        col("fee_rate_bps", DEC),
    ],
    partitions: &["trades_compact"],
    first: First::Partitions("trades_compact"),
    sql: "SELECT t.token_id, c.condition_id, x.price, x.size, x.buy, x.source_ts, x.received_at, x.backfill, x.tx, x.fee_rate_bps
          FROM trades_compact x
          JOIN stream_tokens t ON t.token_key = x.token_key
          LEFT JOIN stream_conditions c ON c.condition_key = t.condition_key
          WHERE {range} AND {late}
          ORDER BY t.token_id COLLATE \"C\", x.source_ts, x.received_at",
    fill: Some(|r, o| {
        o.text(text(r, 0));
        o.text(text(r, 1));
        o.decimal(numeric(r, 2));
        o.decimal(numeric(r, 3));
        o.text(side(boolean(r, 4)));
        o.time(time(r, 5));
        o.time(time(r, 6));
        o.text(boolean(r, 7).map(|b| if b { "backfill" } else { "ws" }));
        o.text(tx_hash(r.field(8)).as_deref());
        o.decimal(numeric(r, 9));
    }),
    settled_only: false,
};

pub const QUOTES: Table = Table {
    name: "quotes",
    cols: &[
        key("asset_id", Kind::Dict),
        col("condition_id", Kind::Dict),
        key("best_bid", DEC),
        key("best_ask", DEC),
        col("spread", DEC),
        key("source_ts", Kind::Time),
        key("received_at", Kind::Time),
    ],
    partitions: &["quotes_compact"],
    first: First::Partitions("quotes_compact"),
    sql: "SELECT t.token_id, c.condition_id, x.best_bid, x.best_ask, x.spread, x.source_ts, x.received_at
          FROM quotes_compact x
          JOIN stream_tokens t ON t.token_key = x.token_key
          LEFT JOIN stream_conditions c ON c.condition_key = t.condition_key
          WHERE {range} AND {late}
          ORDER BY t.token_id COLLATE \"C\", x.source_ts, x.received_at",
    fill: None,
    settled_only: false,
};

pub const TICK_SIZES: Table = Table {
    name: "tick_size_changes",
    cols: &[
        key("asset_id", Kind::Dict),
        col("condition_id", Kind::Dict),
        key("old_tick_size", DEC),
        key("new_tick_size", DEC),
        key("source_ts", Kind::Time),
        key("received_at", Kind::Time),
    ],
    partitions: &[],
    first: First::Min("SELECT min(source_ts) FROM tick_size_changes_compact"),
    sql: "SELECT t.token_id, c.condition_id, x.old_tick_size, x.new_tick_size, x.source_ts, x.received_at
          FROM tick_size_changes_compact x
          JOIN stream_tokens t ON t.token_key = x.token_key
          LEFT JOIN stream_conditions c ON c.condition_key = t.condition_key
          WHERE {range} AND {late}
          ORDER BY t.token_id COLLATE \"C\", x.source_ts, x.received_at",
    fill: None,
    settled_only: false,
};

/// Books by the hour they were received (REST books carry the time the book last changed,
/// which may be long before).
pub const BOOKS: Table = Table {
    name: "book_snapshots",
    cols: &[
        key("token_id", Kind::Dict),
        key("source_ts", Kind::Time),
        key("hash", Kind::Random),
        key("received_at", Kind::Time),
        col("source", Kind::Dict),
        col("condition_id", Kind::Dict),
        col("best_bid", DEC),
        col("best_ask", DEC),
        col("bids", Kind::Text),
        col("asks", Kind::Text),
        col("tick_size", DEC),
        col("min_order_size", DEC),
        col("last_trade_price", DEC),
        col("neg_risk", Kind::Bool),
    ],
    partitions: &[],
    first: First::Min("SELECT min(received_at) FROM book_snapshots"),
    sql: "SELECT x.token_id, x.source_ts, x.hash, x.received_at, x.source, x.condition_id, x.best_bid, x.best_ask, x.bids::text,
                 x.asks::text, x.tick_size, x.min_order_size, x.last_trade_price, x.neg_risk
          FROM book_snapshots x
          WHERE {range} AND {late}
          ORDER BY x.token_id COLLATE \"C\", x.source_ts, x.received_at",
    fill: None,
    settled_only: false,
};

pub const MARKET_EVENTS: Table = Table {
    name: "market_events",
    cols: &[
        key("kind", Kind::Dict),
        key("condition_id", Kind::Dict),
        col("market_id", Kind::Dict),
        key("source_ts", Kind::Time),
        col("received_at", Kind::Time),
        col("payload", Kind::Text),
    ],
    partitions: &[],
    first: First::Min("SELECT min(source_ts) FROM market_events"),
    sql: "SELECT x.kind, x.condition_id, x.market_id, x.source_ts, x.received_at, x.payload::text
          FROM market_events x
          WHERE {range} AND {late}
          ORDER BY x.condition_id COLLATE \"C\", x.source_ts, x.received_at",
    fill: None,
    settled_only: false,
};

/// The coverage record: gaps by the hour they started, archived once settled.
pub const GAPS: Table = Table {
    name: "stream_gaps",
    cols: &[
        key("id", Kind::Int64),
        col("connection", Kind::Int32),
        col("assets", Kind::Text),
        col("asset_count", Kind::Int32),
        key("started_at", Kind::Time),
        key("ended_at", Kind::Time),
        col("reason", Kind::Text),
        col("planned", Kind::Bool),
        col("backfill_status", Kind::Text),
        col("backfilled_at", Kind::Time),
        col("backfill_trades", Kind::Int32),
        col("backfill_attempts", Kind::Int32),
        col("backfill_covered_from", Kind::Time),
    ],
    partitions: &[],
    first: First::Min("SELECT min(started_at) FROM stream_gaps"),
    sql: "SELECT x.id, x.connection, array_to_json(x.assets)::text, x.asset_count, x.started_at, x.ended_at, x.reason, x.planned,
                 x.backfill_status, x.backfilled_at, x.backfill_trades, x.backfill_attempts, x.backfill_covered_from
          FROM stream_gaps x
          WHERE {range} AND {late}
          ORDER BY x.started_at, x.id",
    fill: None,
    settled_only: true,
};

/// Every archived table, in the order a pass takes them.
pub const TABLES: &[&Table] = &[&PRICE_CHANGES, &TRADES, &QUOTES, &TICK_SIZES, &BOOKS, &MARKET_EVENTS, &GAPS];

/// The archived table whose rows the day-partitioned base table `base` holds.
pub fn of_partition(base: &str) -> Option<&'static Table> {
    TABLES.iter().copied().find(|t| t.partitions.contains(&base))
}

/// The time column the archive cuts `table`'s hours by (on the base tables, alias `x`).
pub fn time_column(table: &Table) -> &'static str {
    match table.name {
        "book_snapshots" => "x.received_at",
        "stream_gaps" => "x.started_at",
        _ => "x.source_ts",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_hashes_read_back_as_sent() {
        for text in [
            "e0a71c3b9d2f4e6a8b0c1d2e3f4a5b6c7d8e9f01",
            "not-a-hex-hash",
            "nineteen-bytes-long",
            "E0A71C3B9D2F4E6A8B0C1D2E3F4A5B6C7D8E9F01",
        ] {
            let stored = crate::db::stream::level_hash_bytes(Some(text)).unwrap();
            assert_eq!(level_hash(Some(&stored)).as_deref(), Some(text));
        }
        for text in [format!("0x{}", "5c2b9f0e".repeat(8)), "not-a-hash".to_string(), "0xABC".to_string()] {
            let stored = crate::db::stream::tx_bytes(Some(&text)).unwrap();
            assert_eq!(tx_hash(Some(&stored)).as_deref(), Some(text.as_str()));
        }
    }
}
