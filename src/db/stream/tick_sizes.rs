//! `tick_size_changes` is a view over `tick_size_changes_compact` (migration 7); identity
//! `(token_key, source_ts)`. Of two changes of one token in one millisecond the last received
//! is kept (docs/schema.md).

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_postgres::Transaction;

use super::Keys;
use super::encode::us;
use crate::db::copy::CopyIn;
use crate::polymarket::ws::TickSizeChange;

/// A tick size change of a batch.
pub(super) struct TickIn<'a> {
    pub change: &'a TickSizeChange,
    pub received_at: DateTime<Utc>,
}

const COLUMNS: &str = "token_key, source_ts, received_at, old_tick_size, new_tick_size";

/// The key a stored change is known by: token and source time as stored (µs).
pub(super) fn key<'a>(r: &TickIn<'a>) -> (&'a str, i64) {
    (&r.change.asset_id, r.change.source_ts.timestamp_micros())
}

/// Binary COPY straight in (rows of one key at most once: [`super::keep_last`]); a unique
/// violation means one of them is stored already.
pub(super) async fn copy(tx: &Transaction<'_>, keys: &Keys, rows: &[&TickIn<'_>]) -> Result<u64, tokio_postgres::Error> {
    let mut copy = CopyIn::start(tx, "tick_size_changes_compact", COLUMNS).await?;
    let tokens = keys.tokens_of(rows.iter().map(|r| r.change.asset_id.as_str()));
    for (r, &token) in rows.iter().zip(&tokens) {
        let c = r.change;
        let mut row = copy.row().await?;
        row.int4(token).timestamptz(&c.source_ts).timestamptz(&r.received_at);
        row.opt_numeric(c.old_tick_size.as_ref()).opt_numeric(c.new_tick_size.as_ref());
    }
    copy.finish().await
}

/// The idempotent path: new keys are inserted; a stored row of the same key is replaced by a
/// row received after it (or at the same instant, the later in the batch).
pub(super) async fn upsert(tx: &Transaction<'_>, keys: &Keys, rows: &[&TickIn<'_>]) -> Result<u64, tokio_postgres::Error> {
    let data = serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                let c = r.change;
                json!({
                    "token_key": keys.token(&c.asset_id), "old_tick_size": c.old_tick_size,
                    "new_tick_size": c.new_tick_size, "source_ts": us(c.source_ts), "received_at": us(r.received_at),
                })
            })
            .collect(),
    );
    tx.execute(UPSERT, &[&data]).await
}

const UPSERT: &str = "INSERT INTO tick_size_changes_compact AS s (token_key, source_ts, received_at, old_tick_size, new_tick_size)
    SELECT n.token_key, n.source_ts, n.received_at, n.old_tick_size, n.new_tick_size
    FROM jsonb_to_recordset($1::jsonb) AS n(token_key int, old_tick_size numeric,
        new_tick_size numeric, source_ts timestamptz, received_at timestamptz)
    ON CONFLICT (token_key, source_ts) DO UPDATE SET received_at = EXCLUDED.received_at,
        old_tick_size = EXCLUDED.old_tick_size, new_tick_size = EXCLUDED.new_tick_size
    WHERE s.received_at <= EXCLUDED.received_at
      AND (s.received_at, s.old_tick_size, s.new_tick_size) IS DISTINCT FROM
          (EXCLUDED.received_at, EXCLUDED.old_tick_size, EXCLUDED.new_tick_size)";
