//! The CLOB market WebSocket protocol: subscription frames we send, and decoding of what the
//! server sends (one JSON object, a JSON array of them, or plain text such as `PONG`).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::clob::{self, Book};
use super::decode::{self, FieldError, Side, required_decimal, required_string, side};

mod hot;

/// The first frame on a connection.
pub fn subscribe_initial<A: AsRef<str>>(assets: &[A]) -> String {
    let assets: Vec<&str> = assets.iter().map(AsRef::as_ref).collect();
    json!({"type": "market", "assets_ids": assets, "initial_dump": true, "custom_feature_enabled": true}).to_string()
}

/// Adds assets on an open connection.
pub fn subscribe_more<A: AsRef<str>>(assets: &[A]) -> String {
    let assets: Vec<&str> = assets.iter().map(AsRef::as_ref).collect();
    json!({"operation": "subscribe", "assets_ids": assets, "initial_dump": true, "custom_feature_enabled": true}).to_string()
}

/// Removes assets on an open connection.
pub fn unsubscribe<A: AsRef<str>>(assets: &[A]) -> String {
    let assets: Vec<&str> = assets.iter().map(AsRef::as_ref).collect();
    json!({"operation": "unsubscribe", "assets_ids": assets}).to_string()
}

/// The keep-alive the venue counts (protocol-level pings do not).
pub const PING: &str = "PING";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Trade {
    pub asset_id: String,
    pub condition_id: Option<String>,
    pub price: Decimal,
    pub size: Decimal,
    /// Taker side.
    pub side: Side,
    pub fee_rate_bps: Option<Decimal>,
    pub source_ts: DateTime<Utc>,
    pub tx_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LevelChange {
    pub asset_id: String,
    pub price: Decimal,
    /// New aggregate size at the level; zero removes it.
    pub size: Decimal,
    /// `Buy`: the bid side; `Sell`: the ask side.
    pub side: Side,
    pub hash: Option<String>,
    pub best_bid: Option<Decimal>,
    pub best_ask: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PriceChange {
    pub condition_id: Option<String>,
    pub source_ts: DateTime<Utc>,
    pub changes: Vec<LevelChange>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Quote {
    pub asset_id: String,
    pub condition_id: Option<String>,
    pub best_bid: Option<Decimal>,
    pub best_ask: Option<Decimal>,
    pub spread: Option<Decimal>,
    pub source_ts: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TickSizeChange {
    pub asset_id: String,
    pub condition_id: Option<String>,
    pub old_tick_size: Option<Decimal>,
    pub new_tick_size: Option<Decimal>,
    pub source_ts: DateTime<Utc>,
}

/// Which lifecycle event (`market_events.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LifecycleKind {
    #[serde(rename = "new_market")]
    NewMarket,
    #[serde(rename = "market_resolved")]
    MarketResolved,
}

impl LifecycleKind {
    /// The upstream `event_type`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleKind::NewMarket => "new_market",
            LifecycleKind::MarketResolved => "market_resolved",
        }
    }
}

/// `new_market` / `market_resolved`, kept whole.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lifecycle {
    pub kind: LifecycleKind,
    pub condition_id: Option<String>,
    pub market_id: Option<String>,
    pub assets: Vec<String>,
    pub winning_asset_id: Option<String>,
    pub source_ts: DateTime<Utc>,
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Book(Book),
    PriceChange(PriceChange),
    Trade(Trade),
    Quote(Quote),
    TickSize(TickSizeChange),
    NewMarket(Lifecycle),
    MarketResolved(Lifecycle),
}

impl Event {
    /// The asset the event is about, when it is about one.
    pub fn asset_id(&self) -> Option<&str> {
        match self {
            Event::Book(b) => Some(&b.token_id),
            Event::Trade(t) => Some(&t.asset_id),
            Event::Quote(q) => Some(&q.asset_id),
            Event::TickSize(t) => Some(&t.asset_id),
            _ => None,
        }
    }
}

/// One server frame, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Answer to our `PING`: not data, so it does not feed the silence watchdog.
    Pong,
    /// Sent periodically with custom features on.
    NoNewAssets,
    /// Decoded events, and the elements that could not be decoded with the reason.
    Events { events: Vec<Event>, rejected: Vec<(String, String)> },
    /// Text that is neither JSON nor a known keyword.
    OtherText(String),
}

/// Decodes a text frame. Never fails: what cannot be decoded is returned as rejected with a
/// reason (and quarantined by the caller).
pub fn decode_frame(text: &str) -> Frame {
    let t = text.trim();
    match t {
        "PONG" => return Frame::Pong,
        "NO NEW ASSETS" => return Frame::NoNewAssets,
        _ => {}
    }
    if !(t.starts_with('{') || t.starts_with('[')) {
        return Frame::OtherText(t.to_string());
    }
    // The common case in one pass: every event of the frame in the documented shape of the
    // busiest events and books.
    let array = t.starts_with('[');
    let fast = if array { hot::decode_array(t) } else { hot::decode(t).map(|e| vec![e]) };
    if let Some(events) = fast {
        return Frame::Events { events, rejected: Vec::new() };
    }
    // Else the elements' own texts (one pass that only finds their bounds), then each through
    // the fast path (an array's elements: one of them declined it), or the general decoder.
    let items: Result<Vec<&RawValue>, _> = if array { serde_json::from_str(t) } else { serde_json::from_str(t).map(|one| vec![one]) };
    let items = match items {
        Ok(items) => items,
        Err(e) => return Frame::Events { events: Vec::new(), rejected: vec![(t.to_string(), format!("invalid JSON: {e}"))] },
    };
    let mut events = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for item in items {
        let text = item.get();
        match decode_element(text, array) {
            Ok(e) => events.push(e),
            Err(reason) => rejected.push((text.to_string(), reason)),
        }
    }
    Frame::Events { events, rejected }
}

/// One element of a frame (`in_array`) or a frame of one object: the fast path first (an
/// array's element: the whole array declined it), else the general decoder.
fn decode_element(text: &str, in_array: bool) -> Result<Event, String> {
    if let Some(e) = in_array.then(|| hot::decode(text)).flatten() {
        return Ok(e);
    }
    serde_json::from_str::<Value>(text).map_err(|e| format!("invalid JSON: {e}")).and_then(|v| decode_event(&v))
}

/// The texts of the events [`decode_frame`] decoded from `text`, in its order (the elements
/// it did not reject), or `None` if `text` is not a frame of events. For the rare event
/// quarantined after decoding (`domain::check`), so that its row holds its own text, not the
/// whole frame's once per event: this decodes the frame again.
pub fn event_texts(text: &str) -> Option<Vec<&str>> {
    let t = text.trim();
    if t.starts_with('{') {
        return Some(vec![t]);
    }
    let items: Vec<&RawValue> = serde_json::from_str(t).ok()?;
    Some(items.into_iter().map(RawValue::get).filter(|e| decode_element(e, true).is_ok()).collect())
}

fn ts(obj: &Value) -> Result<DateTime<Utc>, FieldError> {
    decode::required_timestamp(obj, "timestamp")
}

/// Decodes one event object; `Err(reason)` for unknown types and malformed events.
pub fn decode_event(obj: &Value) -> Result<Event, String> {
    let kind = decode::string(obj, "event_type").ok_or("no event_type")?;
    let r: Result<Event, FieldError> = match kind.as_str() {
        "book" => clob::decode_book(obj).map(Event::Book),
        "last_trade_price" => (|| {
            Ok(Event::Trade(Trade {
                asset_id: required_string(obj, "asset_id")?,
                condition_id: decode::string(obj, "market"),
                price: required_decimal(obj, "price")?,
                size: required_decimal(obj, "size")?,
                side: side(obj)?,
                fee_rate_bps: decode::decimal(obj, "fee_rate_bps")?,
                source_ts: ts(obj)?,
                tx_hash: decode::string(obj, "transaction_hash"),
            }))
        })(),
        "price_change" => (|| {
            let Some(Value::Array(list)) = obj.get("price_changes") else {
                return Err(FieldError::new("price_changes", "missing (legacy schema?)"));
            };
            let changes = list
                .iter()
                .map(|c| {
                    Ok(LevelChange {
                        asset_id: required_string(c, "asset_id")?,
                        price: required_decimal(c, "price")?,
                        size: required_decimal(c, "size")?,
                        side: side(c)?,
                        hash: decode::string(c, "hash"),
                        best_bid: decode::decimal(c, "best_bid")?,
                        best_ask: decode::decimal(c, "best_ask")?,
                    })
                })
                .collect::<Result<Vec<_>, FieldError>>()?;
            Ok(Event::PriceChange(PriceChange { condition_id: decode::string(obj, "market"), source_ts: ts(obj)?, changes }))
        })(),
        "best_bid_ask" => (|| {
            Ok(Event::Quote(Quote {
                asset_id: required_string(obj, "asset_id")?,
                condition_id: decode::string(obj, "market"),
                best_bid: decode::decimal(obj, "best_bid")?,
                best_ask: decode::decimal(obj, "best_ask")?,
                spread: decode::decimal(obj, "spread")?,
                source_ts: ts(obj)?,
            }))
        })(),
        "tick_size_change" => (|| {
            Ok(Event::TickSize(TickSizeChange {
                asset_id: required_string(obj, "asset_id")?,
                condition_id: decode::string(obj, "market"),
                old_tick_size: decode::decimal(obj, "old_tick_size")?,
                new_tick_size: decode::decimal(obj, "new_tick_size")?,
                source_ts: ts(obj)?,
            }))
        })(),
        "new_market" | "market_resolved" => (|| {
            let kind = if kind == "new_market" { LifecycleKind::NewMarket } else { LifecycleKind::MarketResolved };
            let lifecycle = Lifecycle {
                kind,
                condition_id: decode::string(obj, "market").or_else(|| decode::string(obj, "condition_id")),
                market_id: decode::string(obj, "id"),
                assets: decode::string_array(obj, "assets_ids")?.or(decode::string_array(obj, "clob_token_ids")?).unwrap_or_default(),
                winning_asset_id: decode::string(obj, "winning_asset_id"),
                source_ts: ts(obj)?,
                payload: obj.clone(),
            };
            Ok(match kind {
                LifecycleKind::NewMarket => Event::NewMarket(lifecycle),
                LifecycleKind::MarketResolved => Event::MarketResolved(lifecycle),
            })
        })(),
        other => return Err(format!("unknown event_type {other:?}")),
    };
    r.map_err(|e| format!("{kind}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::polymarket::fixtures::text as fixture;

    #[test]
    fn array_frames_of_books_decode() {
        let Frame::Events { events, rejected } = decode_frame(&fixture("ws_book.json")) else { panic!() };
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[0], Event::Book(b) if b.best_bid().is_some()));
    }

    #[test]
    fn trade_decodes_exactly() {
        let Frame::Events { events, .. } = decode_frame(&fixture("ws_last_trade_price.json")) else { panic!() };
        let Event::Trade(t) = &events[0] else { panic!() };
        assert_eq!(t.size.to_string(), "412.857142");
        assert_eq!(t.side, Side::Buy);
        assert_eq!(t.source_ts.timestamp_millis(), 1795683665911);
        assert!(t.tx_hash.as_deref().unwrap().starts_with("0x6d1f"));
    }

    #[test]
    fn price_change_and_other_events_decode() {
        let Frame::Events { events, .. } = decode_frame(&fixture("ws_price_change.json")) else { panic!() };
        let Event::PriceChange(pc) = &events[0] else { panic!() };
        assert_eq!(pc.changes.len(), 3);
        assert!(pc.changes[2].size.is_zero());
        let others: Value = serde_json::from_str(&fixture("ws_other_events.json")).unwrap();
        for (k, v) in others.as_object().unwrap() {
            if k.starts_with('_') {
                continue;
            }
            let e = decode_event(v).unwrap_or_else(|r| panic!("{k}: {r}"));
            match (k.as_str(), e) {
                ("new_market", Event::NewMarket(l)) => assert_eq!(l.assets.len(), 2),
                ("market_resolved", Event::MarketResolved(l)) => assert!(l.winning_asset_id.is_some()),
                ("tick_size_change", Event::TickSize(t)) => assert_eq!(t.new_tick_size.unwrap().to_string(), "0.001"),
                ("best_bid_ask", Event::Quote(q)) => assert_eq!(q.spread.unwrap().to_string(), "0.01"),
                (k, e) => panic!("{k} decoded as {e:?}"),
            }
        }
    }

    #[test]
    fn text_frames_and_bad_events_never_fail() {
        assert_eq!(decode_frame("PONG"), Frame::Pong);
        assert_eq!(decode_frame("NO NEW ASSETS"), Frame::NoNewAssets);
        assert_eq!(decode_frame("INVALID OPERATION"), Frame::OtherText("INVALID OPERATION".into()));
        let Frame::Events { events, rejected } =
            decode_frame(r#"[{"event_type":"mystery"},{"event_type":"last_trade_price","asset_id":"1"}]"#)
        else {
            panic!()
        };
        assert!(events.is_empty());
        assert_eq!(rejected.len(), 2);
        assert!(rejected[0].1.contains("unknown event_type"));
        assert!(rejected[1].1.contains("price"), "{}", rejected[1].1);
        let Frame::Events { rejected, .. } = decode_frame("{\"event_type\": \"bo") else { panic!() };
        assert!(rejected[0].1.starts_with("invalid JSON"));
    }

    #[test]
    fn event_texts_are_the_decoded_elements_in_order() {
        let trade = |id: &str| {
            format!(r#"{{"event_type":"last_trade_price","asset_id":"{id}","price":"0.5","size":"1","side":"BUY","timestamp":"1"}}"#)
        };
        let frame = format!(r#" [{}, {{"event_type":"mystery"}}, {}] "#, trade("1"), trade("2"));
        let Frame::Events { events, rejected } = decode_frame(&frame) else { panic!() };
        assert_eq!((events.len(), rejected.len()), (2, 1));
        assert_eq!(event_texts(&frame).unwrap(), vec![trade("1"), trade("2")]);
        assert_eq!(event_texts(&trade("3")).unwrap(), vec![trade("3")]);
        assert_eq!(event_texts("PONG"), None);
    }
}
