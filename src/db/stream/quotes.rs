//! `quotes` (best bid and ask, `best_bid_ask`) is a view over `quotes_compact` (migration 7);
//! identity `(token_key, source_ts)`. Of two updates of one token in one millisecond the last
//! received is kept (docs/schema.md).

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_postgres::Transaction;

use super::Keys;
use super::encode::us;
use crate::db::copy::CopyIn;
use crate::polymarket::ws::Quote;

/// A quote of a batch.
pub(super) struct QuoteIn<'a> {
    pub quote: &'a Quote,
    pub received_at: DateTime<Utc>,
}

const COLUMNS: &str = "token_key, source_ts, received_at, best_bid, best_ask, spread";

/// The key a stored quote is known by: token and source time as stored (µs).
pub(super) fn key<'a>(r: &QuoteIn<'a>) -> (&'a str, i64) {
    (&r.quote.asset_id, r.quote.source_ts.timestamp_micros())
}

/// Binary COPY straight in (rows of one key at most once: [`super::keep_last`]); a unique
/// violation means one of them is stored already.
pub(super) async fn copy(tx: &Transaction<'_>, keys: &Keys, rows: &[&QuoteIn<'_>]) -> Result<u64, tokio_postgres::Error> {
    let mut copy = CopyIn::start(tx, "quotes_compact", COLUMNS).await?;
    let tokens = keys.tokens_of(rows.iter().map(|r| r.quote.asset_id.as_str()));
    for (r, &token) in rows.iter().zip(&tokens) {
        let q = r.quote;
        let mut row = copy.row().await?;
        row.int4(token).timestamptz(&q.source_ts).timestamptz(&r.received_at);
        row.opt_numeric(q.best_bid.as_ref()).opt_numeric(q.best_ask.as_ref()).opt_numeric(q.spread.as_ref());
    }
    copy.finish().await
}

/// The idempotent path: new keys are inserted; a stored row of the same key is replaced by a
/// row received after it (or at the same instant, the later in the batch).
pub(super) async fn upsert(tx: &Transaction<'_>, keys: &Keys, rows: &[&QuoteIn<'_>]) -> Result<u64, tokio_postgres::Error> {
    let data = serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                let q = r.quote;
                json!({
                    "token_key": keys.token(&q.asset_id), "best_bid": q.best_bid, "best_ask": q.best_ask,
                    "spread": q.spread, "source_ts": us(q.source_ts), "received_at": us(r.received_at),
                })
            })
            .collect(),
    );
    tx.execute(UPSERT, &[&data]).await
}

const UPSERT: &str = "INSERT INTO quotes_compact AS s (token_key, source_ts, received_at, best_bid, best_ask, spread)
    SELECT n.token_key, n.source_ts, n.received_at, n.best_bid, n.best_ask, n.spread
    FROM jsonb_to_recordset($1::jsonb) AS n(token_key int, best_bid numeric, best_ask numeric,
        spread numeric, source_ts timestamptz, received_at timestamptz)
    ON CONFLICT (token_key, source_ts) DO UPDATE SET received_at = EXCLUDED.received_at,
        best_bid = EXCLUDED.best_bid, best_ask = EXCLUDED.best_ask, spread = EXCLUDED.spread
    WHERE s.received_at <= EXCLUDED.received_at
      AND (s.received_at, s.best_bid, s.best_ask, s.spread) IS DISTINCT FROM
          (EXCLUDED.received_at, EXCLUDED.best_bid, EXCLUDED.best_ask, EXCLUDED.spread)";
