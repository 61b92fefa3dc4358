//! `market_events`: lifecycle events (`new_market`, `market_resolved`) as received, once per
//! `(kind, condition_id, source_ts)`; their effect on the catalog is `db::catalog`'s
//! ([`apply_stream_lifecycle`](crate::db::catalog::apply_stream_lifecycle)).

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_postgres::Transaction;

use super::encode::us;
use crate::polymarket::ws::Lifecycle;

/// A lifecycle event of a batch.
pub(super) struct EventIn<'a> {
    pub event: &'a Lifecycle,
    pub received_at: DateTime<Utc>,
}

/// Stores the events not stored yet (a handful a day: always the idempotent path).
pub(super) async fn insert_new(tx: &Transaction<'_>, rows: &[EventIn<'_>]) -> Result<u64, tokio_postgres::Error> {
    let data = serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                let e = r.event;
                json!({
                    "kind": e.kind.as_str(), "condition_id": e.condition_id, "market_id": e.market_id,
                    "source_ts": us(e.source_ts), "received_at": us(r.received_at), "payload": e.payload,
                })
            })
            .collect(),
    );
    tx.execute(INSERT_NEW, &[&data]).await
}

const INSERT_NEW: &str = "INSERT INTO market_events (kind, condition_id, market_id, source_ts, received_at, payload)
    SELECT DISTINCT ON (n.kind, n.condition_id, n.source_ts) n.kind, n.condition_id, n.market_id, n.source_ts, n.received_at, n.payload
    FROM jsonb_to_recordset($1::jsonb) AS n(kind text, condition_id text, market_id text, source_ts timestamptz,
        received_at timestamptz, payload jsonb)
    WHERE n.condition_id IS NOT NULL
    ON CONFLICT DO NOTHING";
