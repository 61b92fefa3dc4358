//! The binary forms of the stream's rows in the spool ([`super::spool_format`]): level
//! changes, trades, quotes and books — nearly every row a spill holds, and nearly all of its
//! bytes — in binary; the rest as JSON.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::spool_format::{Decoder, Encoder, Record, unzigzag, zigzag};

/// Level changes, trades, quotes and books — nearly every row a spill holds, and nearly all
/// of its bytes — in binary; the rest as JSON.
impl Record for crate::db::stream::Row {
    fn note_loss(&self, window: &mut super::spool_format::LossWindow) {
        use crate::db::stream::Row;
        let at = self.received_at();
        match self {
            Row::Book { book, .. } => window.add([book.token_id.as_str()], at),
            Row::Lifecycle { event, .. } => window.add(event.assets.iter().map(String::as_str), at),
            // A trade's own time too: the backfill looks trades up by it.
            Row::Trade { trade, .. } => {
                window.add([trade.asset_id.as_str()], at);
                window.cover(trade.source_ts);
            }
            other => window.add(other.asset(), at),
        }
    }

    fn encode(&self, enc: &mut Encoder<'_>) -> bool {
        use crate::db::stream::{Row, TradeSource};
        use crate::polymarket::decode::Side;
        let flags_at = enc.body.len() + 1;
        match self {
            Row::PriceChange { change: c, condition_id, source_ts, received_at } => {
                enc.u8(PRICE_CHANGE);
                let mut flags = bit(c.side == Side::Buy, 0)
                    | bit(c.hash.is_some(), 1)
                    | bit(c.best_bid.is_some(), 3)
                    | bit(c.best_ask.is_some(), 4)
                    | bit(condition_id.is_some(), 5);
                enc.u8(0);
                enc.id(&c.asset_id);
                if let Some(m) = condition_id {
                    enc.id(m);
                }
                let mut ok = enc.decimal(&c.price) && enc.decimal(&c.size);
                if let Some(h) = &c.hash {
                    flags |= bit(enc.hex_or_text(h, "", 20), 2);
                }
                for d in [&c.best_bid, &c.best_ask].into_iter().flatten() {
                    ok &= enc.decimal(d);
                }
                enc.body[flags_at] = flags;
                ok && times(enc, source_ts, received_at)
            }
            Row::Trade { trade: t, received_at, source } => {
                enc.u8(TRADE);
                let mut flags = bit(t.side == Side::Buy, 0)
                    | bit(t.condition_id.is_some(), 1)
                    | bit(t.fee_rate_bps.is_some(), 2)
                    | bit(t.tx_hash.is_some(), 3)
                    | bit(*source == TradeSource::Backfill, 5);
                enc.u8(0);
                enc.id(&t.asset_id);
                if let Some(m) = &t.condition_id {
                    enc.id(m);
                }
                let mut ok = enc.decimal(&t.price) && enc.decimal(&t.size);
                if let Some(f) = &t.fee_rate_bps {
                    ok &= enc.decimal(f);
                }
                if let Some(h) = &t.tx_hash {
                    flags |= bit(enc.hex_or_text(h, "0x", 32), 4);
                }
                enc.body[flags_at] = flags;
                ok && times(enc, &t.source_ts, received_at)
            }
            Row::Quote { quote: q, received_at } => {
                enc.u8(QUOTE);
                enc.u8(bit(q.condition_id.is_some(), 0)
                    | bit(q.best_bid.is_some(), 1)
                    | bit(q.best_ask.is_some(), 2)
                    | bit(q.spread.is_some(), 3));
                enc.id(&q.asset_id);
                if let Some(m) = &q.condition_id {
                    enc.id(m);
                }
                let mut ok = true;
                for d in [&q.best_bid, &q.best_ask, &q.spread].into_iter().flatten() {
                    ok &= enc.decimal(d);
                }
                ok && times(enc, &q.source_ts, received_at)
            }
            Row::Book { book: b, received_at } => {
                enc.u8(BOOK);
                let mut flags = bit(b.condition_id.is_some(), 0)
                    | bit(b.tick_size.is_some(), 1)
                    | bit(b.min_order_size.is_some(), 2)
                    | bit(b.last_trade_price.is_some(), 3)
                    | bit(b.neg_risk.is_some(), 4)
                    | bit(b.neg_risk == Some(true), 5);
                enc.u8(0);
                enc.id(&b.token_id);
                if let Some(m) = &b.condition_id {
                    enc.id(m);
                }
                flags |= bit(enc.hex_or_text(&b.hash, "", 20), 6);
                let mut ok = true;
                for side in [&b.bids, &b.asks] {
                    enc.varint(side.len() as u128);
                    for l in side {
                        // The parsed price is the text's: only the texts are written.
                        ok &= l.price_text.parse::<Decimal>().is_ok_and(|p| p == l.price && p.scale() == l.price.scale());
                        enc.bytes(l.price_text.as_bytes());
                        enc.bytes(l.size_text.as_bytes());
                    }
                }
                for d in [&b.tick_size, &b.min_order_size, &b.last_trade_price].into_iter().flatten() {
                    ok &= enc.decimal(d);
                }
                enc.body[flags_at] = flags;
                ok && times(enc, &b.source_ts, received_at)
            }
            _ => false,
        }
    }

    fn decode(kind: u8, dec: &mut Decoder<'_>) -> Result<Self, String> {
        use crate::db::stream::{Row, TradeSource};
        use crate::polymarket::clob::{Book, Level};
        use crate::polymarket::decode::Side;
        use crate::polymarket::ws::{LevelChange, Quote, Trade};
        let flags = dec.u8()?;
        let has = |n: u8| flags & (1 << n) != 0;
        let side = if has(0) { Side::Buy } else { Side::Sell };
        match kind {
            PRICE_CHANGE => {
                let asset_id = dec.id()?.to_string();
                let condition_id = if has(5) { Some(dec.id()?) } else { None };
                let (price, size) = (dec.decimal()?, dec.decimal()?);
                let hash = if has(1) { Some(dec.hex_or_text(has(2), "", 20)?) } else { None };
                let best_bid = if has(3) { Some(dec.decimal()?) } else { None };
                let best_ask = if has(4) { Some(dec.decimal()?) } else { None };
                let (source_ts, received_at) = read_times(dec)?;
                Ok(Row::PriceChange {
                    change: LevelChange { asset_id, price, size, side, hash, best_bid, best_ask },
                    condition_id,
                    source_ts,
                    received_at,
                })
            }
            TRADE => {
                let asset_id = dec.id()?.to_string();
                let condition_id = if has(1) { Some(dec.id()?.to_string()) } else { None };
                let (price, size) = (dec.decimal()?, dec.decimal()?);
                let fee_rate_bps = if has(2) { Some(dec.decimal()?) } else { None };
                let tx_hash = if has(3) { Some(dec.hex_or_text(has(4), "0x", 32)?) } else { None };
                let (source_ts, received_at) = read_times(dec)?;
                let source = if has(5) { TradeSource::Backfill } else { TradeSource::Ws };
                Ok(Row::Trade {
                    trade: Trade { asset_id, condition_id, price, size, side, fee_rate_bps, source_ts, tx_hash },
                    received_at,
                    source,
                })
            }
            QUOTE => {
                let asset_id = dec.id()?.to_string();
                let condition_id = if has(0) { Some(dec.id()?.to_string()) } else { None };
                let best_bid = if has(1) { Some(dec.decimal()?) } else { None };
                let best_ask = if has(2) { Some(dec.decimal()?) } else { None };
                let spread = if has(3) { Some(dec.decimal()?) } else { None };
                let (source_ts, received_at) = read_times(dec)?;
                Ok(Row::Quote { quote: Quote { asset_id, condition_id, best_bid, best_ask, spread, source_ts }, received_at })
            }
            BOOK => {
                let token_id = dec.id()?.to_string();
                let condition_id = if has(0) { Some(dec.id()?.to_string()) } else { None };
                let hash = dec.hex_or_text(has(6), "", 20)?;
                let mut sides = [Vec::new(), Vec::new()];
                for side in &mut sides {
                    let n = dec.varint()? as usize;
                    side.reserve(n.min(4096));
                    for _ in 0..n {
                        let price_text = dec.text()?;
                        let size_text = dec.text()?;
                        let price = price_text.parse().map_err(|e| format!("level price {price_text:?}: {e}"))?;
                        side.push(Level { price, price_text, size_text });
                    }
                }
                let [bids, asks] = sides;
                let tick_size = if has(1) { Some(dec.decimal()?) } else { None };
                let min_order_size = if has(2) { Some(dec.decimal()?) } else { None };
                let last_trade_price = if has(3) { Some(dec.decimal()?) } else { None };
                let neg_risk = has(4).then_some(has(5));
                let (source_ts, received_at) = read_times(dec)?;
                let book =
                    Book { token_id, condition_id, source_ts, hash, bids, asks, tick_size, min_order_size, last_trade_price, neg_risk };
                Ok(Row::Book { book, received_at })
            }
            kind => Err(format!("unknown record kind {kind}")),
        }
    }
}

/// The binary kinds of [`crate::db::stream::Row`].
pub(super) const PRICE_CHANGE: u8 = 2;
pub(super) const TRADE: u8 = 3;
pub(super) const QUOTE: u8 = 4;
pub(super) const BOOK: u8 = 5;

fn bit(on: bool, n: u8) -> u8 {
    (on as u8) << n
}

/// The source time, then the receive time as nanoseconds after it.
fn times(enc: &mut Encoder<'_>, source_ts: &DateTime<Utc>, received_at: &DateTime<Utc>) -> bool {
    match (source_ts.timestamp_nanos_opt(), received_at.timestamp_nanos_opt()) {
        (Some(s), Some(r)) => {
            enc.varint(zigzag(s as i128));
            enc.varint(zigzag(r as i128 - s as i128));
            true
        }
        _ => false,
    }
}

fn read_times(dec: &mut Decoder<'_>) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let s = unzigzag(dec.varint()?);
    let r = i64::try_from(s + unzigzag(dec.varint()?)).map_err(|e| e.to_string())?;
    let s = i64::try_from(s).map_err(|e| e.to_string())?;
    Ok((DateTime::from_timestamp_nanos(s), DateTime::from_timestamp_nanos(r)))
}
