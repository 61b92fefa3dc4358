//! Domain checks before a row is queued: a value that decodes but cannot be a fact (a price
//! outside [0, 1], a trade size ≤ 0, a negative level size, a timestamp far from the receive
//! time, a trade for an asset this connection did not subscribe) goes to `stream_quarantine`
//! with the reason, never into the tables.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use super::AssetId;
use crate::polymarket::ws::Event;

/// Events whose upstream time is further than this from the receive time are refused. Books
/// are exempt: their timestamp is the book's last change, which may be old.
pub const MAX_CLOCK_SKEW: Duration = Duration::hours(1);

fn price(what: &str, p: Decimal) -> Result<(), String> {
    if p < Decimal::ZERO || p > Decimal::ONE {
        return Err(format!("{what} {p} outside [0, 1]"));
    }
    Ok(())
}

fn opt_price(what: &str, p: Option<Decimal>) -> Result<(), String> {
    p.map_or(Ok(()), |p| price(what, p))
}

fn time(ts: DateTime<Utc>, received_at: DateTime<Utc>) -> Result<(), String> {
    let skew = ts - received_at;
    if skew > MAX_CLOCK_SKEW || -skew > MAX_CLOCK_SKEW {
        return Err(format!("timestamp {} is {} s from the receive time", ts.to_rfc3339(), skew.num_seconds()));
    }
    Ok(())
}

/// `Err(reason)` when `event`, received at `received_at` on a connection subscribed to
/// `assets`, holds a value outside its domain.
pub fn check(event: &Event, received_at: DateTime<Utc>, assets: &BTreeSet<AssetId>) -> Result<(), String> {
    let r = match event {
        Event::Trade(t) => (|| {
            if !assets.contains(t.asset_id.as_str()) {
                return Err(format!("trade for asset {} not subscribed on this connection", t.asset_id));
            }
            price("price", t.price)?;
            if t.size <= Decimal::ZERO {
                return Err(format!("size {} is not positive", t.size));
            }
            time(t.source_ts, received_at)
        })(),
        Event::PriceChange(pc) => (|| {
            for c in &pc.changes {
                price("price", c.price)?;
                if c.size < Decimal::ZERO {
                    return Err(format!("level size {} is negative", c.size));
                }
                opt_price("best_bid", c.best_bid)?;
                opt_price("best_ask", c.best_ask)?;
            }
            time(pc.source_ts, received_at)
        })(),
        Event::Book(b) => (|| {
            for l in b.bids.iter().chain(&b.asks) {
                price("level price", l.price)?;
                if l.size_text.trim_start().starts_with('-') {
                    return Err(format!("level size {} is negative", l.size_text));
                }
            }
            Ok(())
        })(),
        Event::Quote(q) => (|| {
            opt_price("best_bid", q.best_bid)?;
            opt_price("best_ask", q.best_ask)?;
            time(q.source_ts, received_at)
        })(),
        Event::TickSize(t) => time(t.source_ts, received_at),
        Event::NewMarket(_) | Event::MarketResolved(_) => Ok(()),
    };
    r.map_err(|e| format!("out of domain: {e}"))
}

/// Text safe for a PostgreSQL `text` column: NUL characters (which PostgreSQL refuses)
/// written as `\u0000`.
pub fn printable(text: &str) -> String {
    if text.contains('\0') { text.replace('\0', "\\u0000") } else { text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::polymarket::ws::{Frame, decode_frame};

    fn event(json: &str) -> Event {
        let Frame::Events { mut events, rejected } = decode_frame(json) else { panic!() };
        assert!(rejected.is_empty(), "{rejected:?}");
        events.remove(0)
    }

    fn trade(price: &str, size: &str, ts_ms: i64) -> String {
        format!(
            r#"{{"event_type":"last_trade_price","asset_id":"7","market":"0xc","price":"{price}","size":"{size}","side":"BUY","timestamp":"{ts_ms}"}}"#
        )
    }

    #[test]
    fn values_outside_the_domain_are_refused_with_a_reason() {
        let now = crate::clock::now();
        let ms = now.timestamp_millis();
        let assets: BTreeSet<AssetId> = [AssetId::from("7")].into();
        assert_eq!(check(&event(&trade("0.5", "10", ms)), now, &assets), Ok(()));
        let bad = [
            (trade("1.5", "10", ms), "price 1.5 outside [0, 1]"),
            (trade("-9223372036854775809", "10", ms), "outside [0, 1]"),
            (trade("0.5", "0", ms), "size 0 is not positive"),
            (trade("0.5", "-3", ms), "is not positive"),
            (trade("0.5", "1", ms + 7_200_000), "from the receive time"),
            (trade("0.5", "1", 0), "from the receive time"),
        ];
        for (json, why) in bad {
            let r = check(&event(&json), now, &assets);
            assert!(r.as_ref().is_err_and(|e| e.contains(why) && e.starts_with("out of domain")), "{json}: {r:?}");
        }
        let other: BTreeSet<AssetId> = [AssetId::from("8")].into();
        assert!(check(&event(&trade("0.5", "10", ms)), now, &other).unwrap_err().contains("not subscribed"));
        let change = format!(
            r#"{{"event_type":"price_change","market":"0xc","timestamp":"{ms}","price_changes":[{{"asset_id":"7","price":"0.4","size":"-1","side":"BUY"}}]}}"#
        );
        assert!(check(&event(&change), now, &assets).unwrap_err().contains("negative"));
    }

    #[test]
    fn nul_characters_become_visible() {
        assert_eq!(printable("a\0b"), "a\\u0000b");
        assert_eq!(printable("plain"), "plain");
    }
}
