//! The fast path for the busiest market-channel events — `price_change`, `last_trade_price`,
//! `best_bid_ask`: nine rows in ten of the stream — and `book`. They are read in their
//! documented shape straight from the frame's text into typed fields that borrow from it,
//! without building a `serde_json::Value` tree first (which allocated a map and a string per
//! key and per value: a large share of the collector's CPU on the real mix, BENCHMARKS.md). A frame that is an array
//! of such events is read in one pass ([`decode_array`]).
//!
//! The documented shape only: every field a JSON string without escapes, or absent, or null.
//! Anything else — a number where a string is documented, a missing or malformed field, an
//! escaped string, another event type —
//! returns `None`, and the event goes to [`super::decode_event`], the one place that knows
//! upstream's quirks and words the reasons. So this path never decides anything the general
//! decoder would decide otherwise; a unit test holds the two to the same result.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::de::IgnoredAny;

use super::{Event, LevelChange, PriceChange, Quote, Trade};
use crate::polymarket::clob::{Book, Level};
use crate::polymarket::decode::{Side, parse_decimal, parse_timestamp};

/// A string field borrowed from the frame. A string with an escape cannot be borrowed: the
/// event then goes to the general decoder (escapes are rare in these events).
type Text<'a> = Option<&'a str>;

mod read;

/// The fields of the hot events and of books (any other field is skipped). Read by
/// [`read`]; the derived deserializer is the reference it is tested against (the shape serde
/// reads is the documented one).
#[derive(serde::Deserialize, Default)]
#[cfg_attr(test, derive(Debug, PartialEq, Clone))]
struct Hot<'a> {
    event_type: &'a str,
    #[serde(borrow, default)]
    asset_id: Text<'a>,
    #[serde(borrow, default)]
    market: Text<'a>,
    #[serde(borrow, default)]
    timestamp: Text<'a>,
    #[serde(borrow, default)]
    price: Text<'a>,
    #[serde(borrow, default)]
    size: Text<'a>,
    #[serde(borrow, default)]
    side: Text<'a>,
    #[serde(borrow, default)]
    fee_rate_bps: Text<'a>,
    #[serde(borrow, default)]
    transaction_hash: Text<'a>,
    #[serde(borrow, default)]
    best_bid: Text<'a>,
    #[serde(borrow, default)]
    best_ask: Text<'a>,
    #[serde(borrow, default)]
    spread: Text<'a>,
    #[serde(borrow, default)]
    price_changes: Option<Vec<HotChange<'a>>>,
    // A book's fields.
    #[serde(borrow, default)]
    hash: Text<'a>,
    #[serde(borrow, default)]
    bids: Option<Vec<HotLevel<'a>>>,
    #[serde(borrow, default)]
    asks: Option<Vec<HotLevel<'a>>>,
    /// The legacy names of `bids`/`asks`: only looked at by the general decoder.
    #[serde(default)]
    buys: Option<IgnoredAny>,
    #[serde(default)]
    sells: Option<IgnoredAny>,
    #[serde(borrow, default)]
    tick_size: Text<'a>,
    #[serde(borrow, default)]
    min_order_size: Text<'a>,
    #[serde(borrow, default)]
    last_trade_price: Text<'a>,
    #[serde(default)]
    neg_risk: Option<bool>,
}

#[derive(serde::Deserialize, Default)]
#[cfg_attr(test, derive(Debug, PartialEq, Clone))]
struct HotLevel<'a> {
    #[serde(borrow, default)]
    price: Text<'a>,
    #[serde(borrow, default)]
    size: Text<'a>,
}

#[derive(serde::Deserialize, Default)]
#[cfg_attr(test, derive(Debug, PartialEq, Clone))]
struct HotChange<'a> {
    #[serde(borrow, default)]
    asset_id: Text<'a>,
    #[serde(borrow, default)]
    price: Text<'a>,
    #[serde(borrow, default)]
    size: Text<'a>,
    #[serde(borrow, default)]
    side: Text<'a>,
    #[serde(borrow, default)]
    hash: Text<'a>,
    #[serde(borrow, default)]
    best_bid: Text<'a>,
    #[serde(borrow, default)]
    best_ask: Text<'a>,
}

/// A field as the general decoder sees it: absent, null and `""` are all absent.
fn present<'t>(field: &Text<'t>) -> Option<&'t str> {
    field.filter(|s| !s.is_empty())
}

fn string(field: &Text<'_>) -> Option<String> {
    present(field).map(str::to_string)
}

/// `Some(None)` when absent, `Some(Some(d))` when a decimal, `None` (not for this path) when
/// present but not a decimal.
fn decimal(field: &Text<'_>) -> Option<Option<Decimal>> {
    match present(field) {
        None => Some(None),
        Some(t) => parse_decimal(t).map(Some),
    }
}

fn required_decimal(field: &Text<'_>) -> Option<Decimal> {
    decimal(field)?
}

fn side(field: &Text<'_>) -> Option<Side> {
    Side::parse(present(field)?)
}

fn timestamp(field: &Text<'_>) -> Option<DateTime<Utc>> {
    parse_timestamp(present(field)?)
}

/// The event types of this path.
const HOT: [&str; 4] = ["price_change", "last_trade_price", "best_bid_ask", "book"];

/// The `event_type` as written in the text, when a quick look finds it (`"event_type"`, a colon,
/// a string): lets a book skip this path unparsed. Only a hint — the parse decides.
fn event_type_hint(text: &str) -> Option<&str> {
    let rest = text[text.find("\"event_type\"")? + 12..].trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

/// One event of the documented hot shape; `None` leaves it to the general decoder.
pub fn decode(text: &str) -> Option<Event> {
    if event_type_hint(text).is_some_and(|t| !HOT.contains(&t)) {
        return None;
    }
    event(&read::one(text)?)
}

/// A whole array frame in one pass, when every element is of the documented hot shape;
/// `None` (one element is not) leaves the frame to be split and each element decoded alone.
pub fn decode_array(text: &str) -> Option<Vec<Event>> {
    let mut events = Vec::new();
    read::array(text, |hot| {
        events.push(event(hot)?);
        Some(())
    })?;
    Some(events)
}

fn event(e: &Hot<'_>) -> Option<Event> {
    match e.event_type {
        "price_change" => {
            let changes = e
                .price_changes
                .as_ref()?
                .iter()
                .map(|c| {
                    Some(LevelChange {
                        asset_id: string(&c.asset_id)?,
                        price: required_decimal(&c.price)?,
                        size: required_decimal(&c.size)?,
                        side: side(&c.side)?,
                        hash: string(&c.hash),
                        best_bid: decimal(&c.best_bid)?,
                        best_ask: decimal(&c.best_ask)?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Event::PriceChange(PriceChange { condition_id: string(&e.market), source_ts: timestamp(&e.timestamp)?, changes }))
        }
        "last_trade_price" => Some(Event::Trade(Trade {
            asset_id: string(&e.asset_id)?,
            condition_id: string(&e.market),
            price: required_decimal(&e.price)?,
            size: required_decimal(&e.size)?,
            side: side(&e.side)?,
            fee_rate_bps: decimal(&e.fee_rate_bps)?,
            source_ts: timestamp(&e.timestamp)?,
            tx_hash: string(&e.transaction_hash),
        })),
        "best_bid_ask" => Some(Event::Quote(Quote {
            asset_id: string(&e.asset_id)?,
            condition_id: string(&e.market),
            best_bid: decimal(&e.best_bid)?,
            best_ask: decimal(&e.best_ask)?,
            spread: decimal(&e.spread)?,
            source_ts: timestamp(&e.timestamp)?,
        })),
        "book" if e.buys.is_none() && e.sells.is_none() => {
            let mut bids = levels(&e.bids)?;
            let mut asks = levels(&e.asks)?;
            bids.sort_by_key(|l| std::cmp::Reverse(l.price));
            asks.sort_by_key(|l| l.price);
            Some(Event::Book(Book {
                token_id: string(&e.asset_id)?,
                condition_id: string(&e.market),
                source_ts: timestamp(&e.timestamp)?,
                hash: string(&e.hash).unwrap_or_default(),
                bids,
                asks,
                tick_size: decimal(&e.tick_size)?,
                min_order_size: decimal(&e.min_order_size)?,
                last_trade_price: decimal(&e.last_trade_price)?,
                neg_risk: e.neg_risk,
            }))
        }
        _ => None,
    }
}

/// A book side's levels, each a price and a size that are decimals (`""` is not).
fn levels(list: &Option<Vec<HotLevel<'_>>>) -> Option<Vec<Level>> {
    let Some(list) = list else { return Some(Vec::new()) };
    list.iter()
        .map(|l| {
            let (price_text, size_text) = (l.price?, l.size?);
            parse_decimal(size_text)?;
            Some(Level { price: parse_decimal(price_text)?, price_text: price_text.to_string(), size_text: size_text.to_string() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::polymarket::fixtures::text as fixture;
    use crate::polymarket::ws::decode_event;
    use serde_json::Value;

    /// The general decoder's answer for one event's text.
    fn general(text: &str) -> Result<Event, String> {
        decode_event(&serde_json::from_str::<Value>(text).unwrap())
    }

    fn events_of(text: &str) -> Vec<String> {
        match serde_json::from_str::<Value>(text).unwrap() {
            Value::Array(items) => items.iter().map(Value::to_string).collect(),
            one => vec![one.to_string()],
        }
    }

    #[test]
    fn the_documented_shapes_take_the_fast_path_and_decode_as_the_general_decoder_does() {
        let mut texts = Vec::new();
        for f in ["ws_price_change.json", "ws_last_trade_price.json", "ws_book.json", "captured/ws_book_snapshot.json"] {
            texts.extend(events_of(&fixture(f)));
        }
        // Books: no levels, null and empty sides, extra fields, the optional fields absent.
        texts.push(r#"{"event_type":"book","asset_id":"9","market":"0xc","timestamp":"1795683665911","bids":[],"asks":null}"#.to_string());
        texts.push(
            r#"{"event_type":"book","asset_id":"9","timestamp":"1795683665911","hash":"","neg_risk":null,
            "bids":[{"price":"0.5","size":"10","x":1},{"price":"0.52","size":"0"}],"tick_size":"0.01","last_trade_price":"0.430"}"#
                .to_string(),
        );
        let others: Value = serde_json::from_str(&fixture("ws_other_events.json")).unwrap();
        texts.push(others["best_bid_ask"].to_string());
        // Empty and null optional fields, a lower-case side, an ISO time.
        texts.push(
            r#"{"event_type":"last_trade_price","asset_id":"71","market":"","price":"0.5","size":"10",
            "side":"sell","fee_rate_bps":null,"timestamp":"2026-11-30T10:00:00.5Z"}"#
                .to_string(),
        );
        texts.push(
            r#"{"event_type":"price_change","market":"0xc","timestamp":"1795683665911","price_changes":[
            {"asset_id":"1","price":"0.50","size":"0","side":"BUY","best_bid":"","best_ask":null}]}"#
                .to_string(),
        );
        for t in &texts {
            let fast = decode(t).unwrap_or_else(|| panic!("fast path declined a documented event: {t}"));
            assert_eq!(Ok(fast), general(t), "{t}");
        }
    }

    #[test]
    fn anything_else_is_left_to_the_general_decoder() {
        let declined = [
            // Numbers where strings are documented (the general decoder reads them).
            r#"{"event_type":"last_trade_price","asset_id":"1","price":0.5,"size":"1","side":"BUY","timestamp":"1795683665911"}"#,
            r#"{"event_type":"best_bid_ask","asset_id":"1","best_bid":"0.4","timestamp":1795683665911}"#,
            // Malformed or missing fields (the general decoder words the reason).
            r#"{"event_type":"last_trade_price","asset_id":"1","price":"x","size":"1","side":"BUY","timestamp":"1795683665911"}"#,
            r#"{"event_type":"last_trade_price","asset_id":"1","price":"0.5","size":"1","side":"HOLD","timestamp":"1795683665911"}"#,
            r#"{"event_type":"last_trade_price","price":"0.5","size":"1","side":"BUY","timestamp":"1795683665911"}"#,
            r#"{"event_type":"price_change","market":"0xc","timestamp":"1795683665911","changes":[]}"#,
            r#"{"event_type":"price_change","market":"0xc","timestamp":"1795683665911","price_changes":[{"asset_id":"1","price":"0.5","side":"BUY"}]}"#,
            // An escaped string (not borrowable), a duplicated key, other events, not an object.
            r#"{"event_type":"best_bid_ask","asset_id":"7\u0031","best_bid":"0.4","timestamp":"1795683665911"}"#,
            r#"{"event_type":"best_bid_ask","asset_id":"1","asset_id":"2","timestamp":"1795683665911"}"#,
            r#"{"event_type":"tick_size_change","asset_id":"1","old_tick_size":"0.01","new_tick_size":"0.001","timestamp":"1795683665911"}"#,
            r#"{"event_type":"mystery"}"#,
            r#"42"#,
        ];
        for t in declined {
            assert!(decode(t).is_none(), "{t}");
        }
        let book_declined = [
            // Legacy side names, numbers where strings are documented, a size that is not a
            // decimal, a boolean as a string, a level without a size.
            r#"{"event_type":"book","asset_id":"9","timestamp":"1795683665911","buys":[{"price":"0.5","size":"1"}]}"#,
            r#"{"event_type":"book","asset_id":"9","timestamp":"1795683665911","bids":[{"price":0.5,"size":"1"}]}"#,
            r#"{"event_type":"book","asset_id":"9","timestamp":"1795683665911","asks":[{"price":"0.5","size":""}]}"#,
            r#"{"event_type":"book","asset_id":"9","timestamp":"1795683665911","neg_risk":"true"}"#,
            r#"{"event_type":"book","asset_id":"9","timestamp":"1795683665911","asks":[{"price":"0.5"}]}"#,
        ];
        for t in book_declined {
            assert!(decode(t).is_none(), "{t}");
        }
        let book = events_of(&fixture("ws_book.json")).remove(0);
        assert_eq!(event_type_hint(&book), Some("book"));
        assert_eq!(event_type_hint(r#"{"a":1, "event_type" : "price_change"}"#), Some("price_change"));
        assert_eq!(event_type_hint(r#"{"event_type":7}"#), None);
    }

    /// An array frame of documented events reads in one pass as element by element; one
    /// element outside the shape sends the whole frame element by element.
    #[test]
    fn an_array_frame_reads_in_one_pass_as_element_by_element() {
        for f in ["ws_price_change.json", "ws_last_trade_price.json", "ws_book.json"] {
            let text = fixture(f);
            let items = events_of(&text);
            let one_by_one: Vec<Event> = items.iter().map(|t| general(t).unwrap()).collect();
            let frame = format!("[{}]", items.join(","));
            assert_eq!(decode_array(&frame), Some(one_by_one), "{f}");
        }
        let others: Value = serde_json::from_str(&fixture("ws_other_events.json")).unwrap();
        let mixed = format!("[{},{}]", events_of(&fixture("ws_book.json"))[0], others["tick_size_change"]);
        assert_eq!(decode_array(&mixed), None, "a tick size change is not of this path");
        assert_eq!(decode_array("[42]"), None);
        assert_eq!(decode_array("[]"), Some(Vec::new()));
    }
}
