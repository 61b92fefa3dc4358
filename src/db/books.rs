//! `book_snapshots`: one row per distinct `(token_id, source_ts, hash)`, whatever the source.

use std::borrow::Borrow;

use super::copy::CopyIn;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::polymarket::clob::Book;

/// Where a snapshot came from (`book_snapshots.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookSource {
    Rest,
    Ws,
}

impl BookSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BookSource::Rest => "rest",
            BookSource::Ws => "ws",
        }
    }
}

/// Inserts the snapshots not stored yet; returns how many were new. Takes books owned or
/// borrowed (the stream's are borrowed from its rows).
pub async fn insert_snapshots<C: GenericClient, B: Borrow<Book>>(
    db: &C,
    books: &[(B, DateTime<Utc>)],
    source: BookSource,
) -> Result<u64, tokio_postgres::Error> {
    let books: Vec<(&Book, DateTime<Utc>)> = books.iter().map(|(b, r)| (b.borrow(), *r)).collect();
    if books.is_empty() {
        return Ok(0);
    }
    let token: Vec<&str> = books.iter().map(|(b, _)| b.token_id.as_str()).collect();
    let source_ts: Vec<DateTime<Utc>> = books.iter().map(|(b, _)| b.source_ts).collect();
    let hash: Vec<&str> = books.iter().map(|(b, _)| b.hash.as_str()).collect();
    let received: Vec<DateTime<Utc>> = books.iter().map(|(_, r)| *r).collect();
    let cond: Vec<Option<&str>> = books.iter().map(|(b, _)| b.condition_id.as_deref()).collect();
    let best_bid: Vec<Option<Decimal>> = books.iter().map(|(b, _)| b.best_bid()).collect();
    let best_ask: Vec<Option<Decimal>> = books.iter().map(|(b, _)| b.best_ask()).collect();
    let bids: Vec<Value> = books.iter().map(|(b, _)| Book::levels_json(&b.bids)).collect();
    let asks: Vec<Value> = books.iter().map(|(b, _)| Book::levels_json(&b.asks)).collect();
    let tick: Vec<Option<Decimal>> = books.iter().map(|(b, _)| b.tick_size).collect();
    let min_size: Vec<Option<Decimal>> = books.iter().map(|(b, _)| b.min_order_size).collect();
    let last: Vec<Option<Decimal>> = books.iter().map(|(b, _)| b.last_trade_price).collect();
    let neg: Vec<Option<bool>> = books.iter().map(|(b, _)| b.neg_risk).collect();
    db.execute(
        "INSERT INTO book_snapshots (token_id, source_ts, hash, received_at, source, condition_id,
            best_bid, best_ask, bids, asks, tick_size, min_order_size, last_trade_price, neg_risk)
         SELECT token_id, source_ts, hash, received_at, $5, condition_id, best_bid, best_ask,
            bids, asks, tick_size, min_order_size, last_trade_price, neg_risk
         FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::timestamptz[], $6::text[],
            $7::numeric[], $8::numeric[], $9::jsonb[], $10::jsonb[], $11::numeric[],
            $12::numeric[], $13::numeric[], $14::bool[])
            AS u(token_id, source_ts, hash, received_at, condition_id, best_bid, best_ask, bids,
            asks, tick_size, min_order_size, last_trade_price, neg_risk)
         ON CONFLICT (token_id, source_ts, hash) DO NOTHING",
        &[&token, &source_ts, &hash, &received, &source.as_str(), &cond, &best_bid, &best_ask, &bids, &asks, &tick, &min_size, &last, &neg],
    )
    .await
}

/// Binary `COPY` of snapshots into `book_snapshots`: the stream's fast path. It fails as a whole
/// with a unique violation when one of them is stored already (a re-dump after a reconnect);
/// the caller then takes [`insert_snapshots`].
pub async fn copy_snapshots(
    tx: &tokio_postgres::Transaction<'_>,
    books: &[(&Book, DateTime<Utc>)],
    source: BookSource,
) -> Result<u64, tokio_postgres::Error> {
    let columns = "token_id, source_ts, hash, received_at, source, condition_id, best_bid, best_ask, \
                   bids, asks, tick_size, min_order_size, last_trade_price, neg_risk";
    let mut copy = CopyIn::start(tx, "book_snapshots", columns).await?;
    let source = source.as_str();
    for (b, received_at) in books {
        let (bids, asks) = (Book::levels_json(&b.bids), Book::levels_json(&b.asks));
        let mut row = copy.row().await?;
        row.text(&b.token_id).timestamptz(&b.source_ts).text(&b.hash).timestamptz(received_at).text(source);
        row.opt_text(b.condition_id.as_deref()).opt_numeric(b.best_bid().as_ref()).opt_numeric(b.best_ask().as_ref());
        row.jsonb(&bids).jsonb(&asks).opt_numeric(b.tick_size.as_ref()).opt_numeric(b.min_order_size.as_ref());
        row.opt_numeric(b.last_trade_price.as_ref()).opt_bool(b.neg_risk);
    }
    copy.finish().await
}
