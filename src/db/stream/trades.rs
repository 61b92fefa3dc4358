//! `trades` is a view over `trades_compact` (migration 7): the token key, side and source as
//! booleans, the transaction hash in [`tx_bytes`](super::tx_bytes)' form; the identity is the
//! unique index on `(token_key, source_ts, trade_identity(buy, price, size, tx))`.

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_postgres::Transaction;

use super::encode::{bytea_literal, tx_bytes, tx_into, us};
use super::{Keys, TradeSource};
use crate::db::copy::CopyIn;
use crate::polymarket::decode::Side;
use crate::polymarket::ws::Trade;

/// A trade of a batch.
pub(super) struct TradeIn<'a> {
    pub trade: &'a Trade,
    pub received_at: DateTime<Utc>,
    pub source: TradeSource,
}

const TABLE: &str = "trades_compact";
const COLUMNS: &str = "token_key, buy, backfill, source_ts, received_at, price, size, tx, fee_rate_bps";

/// Binary COPY straight in; a unique violation means one of them is stored already.
pub(super) async fn copy(tx: &Transaction<'_>, keys: &Keys, rows: &[TradeIn<'_>]) -> Result<u64, tokio_postgres::Error> {
    let mut copy = CopyIn::start(tx, TABLE, COLUMNS).await?;
    let mut bytes = Vec::with_capacity(64);
    let tokens = keys.tokens_of(rows.iter().map(|r| r.trade.asset_id.as_str()));
    for (r, &token) in rows.iter().zip(&tokens) {
        let t = r.trade;
        let hash = t.tx_hash.as_deref().map(|h| {
            tx_into(h, &mut bytes);
            bytes.as_slice()
        });
        let mut row = copy.row().await?;
        row.int4(token).bool(t.side == Side::Buy).bool(r.source == TradeSource::Backfill).timestamptz(&t.source_ts);
        row.timestamptz(&r.received_at).numeric(&t.price).numeric(&t.size).opt_bytes(hash).opt_numeric(t.fee_rate_bps.as_ref());
    }
    copy.finish().await
}

/// The idempotent path: stores the trades not stored yet (by the identity below); returns
/// how many were new.
///
/// One identity for a fill however it arrived (docs/schema.md, "Trade identity"): the stream
/// reports the match time in milliseconds and the exact price; the Data API the block time in
/// whole seconds and the price as a float. A backfilled row is the same fill as a stored row
/// with the same asset, side and exact size, a stream time within its second, a price within
/// half the finest tick (0.0001), and the same transaction hash when both have one. The
/// stream's copy wins: it replaces a backfilled copy, and a backfilled row is not inserted
/// where any copy exists.
pub(super) async fn insert_new(tx: &Transaction<'_>, keys: &Keys, rows: &[TradeIn<'_>]) -> Result<u64, tokio_postgres::Error> {
    let data = serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                let t = r.trade;
                json!({
                    "token_key": keys.token(&t.asset_id), "buy": t.side == Side::Buy, "backfill": r.source == TradeSource::Backfill,
                    "source_ts": us(t.source_ts), "received_at": us(r.received_at), "price": t.price, "size": t.size,
                    "tx": tx_bytes(t.tx_hash.as_deref()).map(|b| bytea_literal(&b)), "fee_rate_bps": t.fee_rate_bps,
                })
            })
            .collect(),
    );
    tx.execute(REPLACE_BACKFILLED, &[&data]).await?;
    tx.execute(INSERT_NEW, &[&data]).await
}

/// A stream trade replaces a backfilled copy of the same fill.
const REPLACE_BACKFILLED: &str =
    "DELETE FROM trades_compact b USING jsonb_to_recordset($1::jsonb) AS n(token_key int, buy bool, backfill bool,
        source_ts timestamptz, price numeric, size numeric, tx bytea)
    WHERE NOT n.backfill AND b.backfill AND b.token_key = n.token_key
      AND b.source_ts = date_trunc('second', n.source_ts) AND b.buy = n.buy AND b.size = n.size
      AND abs(b.price - n.price) < 0.00005
      AND (b.tx IS NULL OR n.tx IS NULL OR b.tx = n.tx)";

const INSERT_NEW: &str = "INSERT INTO trades_compact (token_key, buy, backfill, source_ts, received_at, price, size, tx, fee_rate_bps)
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
    ON CONFLICT DO NOTHING";
