//! The rows the stream hands to the database: [`Row`], where a trade came from
//! ([`TradeSource`]), and how much checking a batch needs ([`Origin`]).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::polymarket::clob::Book;
use crate::polymarket::ws::{LevelChange, Lifecycle, Quote, TickSizeChange, Trade};

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

    /// The asset (token id) a keyed row is about.
    pub fn asset(&self) -> Option<&str> {
        self.token().map(|(t, _)| t)
    }

    /// The token and market a keyed row belongs to.
    pub(super) fn token(&self) -> Option<(&str, Option<&str>)> {
        match self {
            Row::Trade { trade: t, .. } => Some((&t.asset_id, t.condition_id.as_deref())),
            Row::PriceChange { change: c, condition_id, .. } => Some((&c.asset_id, condition_id.as_deref())),
            Row::Quote { quote: q, .. } => Some((&q.asset_id, q.condition_id.as_deref())),
            Row::TickSize { change: c, .. } => Some((&c.asset_id, c.condition_id.as_deref())),
            Row::Book { .. } | Row::Lifecycle { .. } | Row::Quarantine { .. } => None,
        }
    }

    /// The UTC day of the partition a row of a partitioned table goes to.
    pub(super) fn partition_day(&self) -> Option<NaiveDate> {
        match self {
            Row::Trade { trade: t, .. } => Some(t.source_ts.date_naive()),
            Row::PriceChange { source_ts, .. } => Some(source_ts.date_naive()),
            Row::Quote { quote: q, .. } => Some(q.source_ts.date_naive()),
            _ => None,
        }
    }

    /// The archive table the row goes to, and the time the archive files it under (its hour's
    /// file): the source time, or the receive time for books.
    pub fn archive_time(&self) -> Option<(&'static str, DateTime<Utc>)> {
        match self {
            Row::Trade { trade: t, .. } => Some(("trades", t.source_ts)),
            Row::PriceChange { source_ts, .. } => Some(("price_changes", *source_ts)),
            Row::Quote { quote: q, .. } => Some(("quotes", q.source_ts)),
            Row::TickSize { change: c, .. } => Some(("tick_size_changes", c.source_ts)),
            Row::Book { received_at, .. } => Some(("book_snapshots", *received_at)),
            Row::Lifecycle { event: e, .. } => Some(("market_events", e.source_ts)),
            Row::Quarantine { .. } => None,
        }
    }

    /// Roughly the memory the row holds (its enum and its heap strings), for bounding the
    /// write queue in bytes as well as rows.
    pub fn approx_bytes(&self) -> usize {
        let heap = match self {
            Row::Trade { trade: t, .. } => {
                t.asset_id.len() + t.condition_id.as_ref().map_or(0, String::len) + t.tx_hash.as_ref().map_or(0, String::len)
            }
            // The market id is shared by the changes of one message.
            Row::PriceChange { change: c, .. } => c.asset_id.len() + c.hash.as_ref().map_or(0, String::len),
            Row::Quote { quote: q, .. } => q.asset_id.len() + q.condition_id.as_ref().map_or(0, String::len),
            Row::TickSize { change: c, .. } => c.asset_id.len() + c.condition_id.as_ref().map_or(0, String::len),
            Row::Book { book: b, .. } => {
                b.token_id.len()
                    + b.hash.len()
                    + (b.bids.len() + b.asks.len()) * (std::mem::size_of::<crate::polymarket::clob::Level>() + 16)
            }
            // A handful a day: the payload's size is not worth serializing for.
            Row::Lifecycle { event: e, .. } => 1024 + e.assets.iter().map(String::len).sum::<usize>(),
            Row::Quarantine { reason, frame, .. } => reason.len() + frame.len(),
        };
        std::mem::size_of::<Row>() + heap
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
    /// May have been stored by another instance (a takeover of a slice's level changes,
    /// `db::writers`): its copies have other receive times, so every level change is anti-joined
    /// on its content; trades take their idempotent path.
    Elsewhere,
}
