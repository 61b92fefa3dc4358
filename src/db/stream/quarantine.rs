//! `stream_quarantine`: frames and rows set aside with the reason (never retried).

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

use crate::db::copy::CopyIn;

/// A quarantined frame or row of a batch.
pub(super) struct QuarantineIn<'a> {
    pub connection: Option<i32>,
    pub reason: &'a str,
    pub frame: &'a str,
    pub received_at: DateTime<Utc>,
}

/// Binary COPY (no identity: each is kept).
pub(super) async fn copy(tx: &Transaction<'_>, rows: &[QuarantineIn<'_>]) -> Result<u64, tokio_postgres::Error> {
    let mut copy = CopyIn::start(tx, "stream_quarantine", "received_at, connection, reason, frame").await?;
    for r in rows {
        let mut row = copy.row().await?;
        row.timestamptz(&r.received_at);
        match r.connection {
            Some(c) => row.int4(c),
            None => row.null(),
        };
        row.text(r.reason).text(r.frame);
    }
    copy.finish().await
}
