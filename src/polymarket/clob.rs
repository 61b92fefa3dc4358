//! CLOB order books (`POST /books`, and the WebSocket `book` event, which has the same shape).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

use super::decode::{self, FieldError};

/// One price level, exactly as upstream wrote it, plus its parsed price for ordering.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Level {
    pub price: Decimal,
    pub price_text: String,
    pub size_text: String,
}

/// A full order book of one token.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Book {
    pub token_id: String,
    pub condition_id: Option<String>,
    /// Time of the book's last change upstream (`timestamp`, epoch ms).
    pub source_ts: DateTime<Utc>,
    pub hash: String,
    /// Best first: highest bid first.
    pub bids: Vec<Level>,
    /// Best first: lowest ask first.
    pub asks: Vec<Level>,
    pub tick_size: Option<Decimal>,
    pub min_order_size: Option<Decimal>,
    pub last_trade_price: Option<Decimal>,
    pub neg_risk: Option<bool>,
}

impl Book {
    /// Highest bid. Computed from the levels: upstream ordering is not to be trusted (REST
    /// sends bids ascending, older docs say best-first).
    pub fn best_bid(&self) -> Option<Decimal> {
        self.bids.first().map(|l| l.price)
    }

    /// Lowest ask.
    pub fn best_ask(&self) -> Option<Decimal> {
        self.asks.first().map(|l| l.price)
    }

    /// Levels as JSON `[["price","size"], ...]`, best first, strings as received.
    pub fn levels_json(levels: &[Level]) -> Value {
        Value::Array(
            levels.iter().map(|l| Value::Array(vec![Value::String(l.price_text.clone()), Value::String(l.size_text.clone())])).collect(),
        )
    }
}

/// Decodes one `OrderBookSummary`. Accepts `bids`/`asks` or the older `buys`/`sells`.
pub fn decode_book(obj: &Value) -> Result<Book, FieldError> {
    let token_id = decode::required_string(obj, "asset_id")?;
    let source_ts = decode::required_timestamp(obj, "timestamp")?;
    let hash = decode::string(obj, "hash").unwrap_or_default();
    let mut bids = levels(obj, "bids", "buys")?;
    let mut asks = levels(obj, "asks", "sells")?;
    bids.sort_by_key(|l| std::cmp::Reverse(l.price));
    asks.sort_by_key(|l| l.price);
    Ok(Book {
        token_id,
        condition_id: decode::string(obj, "market"),
        source_ts,
        hash,
        bids,
        asks,
        tick_size: decode::decimal(obj, "tick_size")?,
        min_order_size: decode::decimal(obj, "min_order_size")?,
        last_trade_price: decode::decimal(obj, "last_trade_price")?,
        neg_risk: decode::boolean(obj, "neg_risk"),
    })
}

fn levels(obj: &Value, field: &str, legacy: &str) -> Result<Vec<Level>, FieldError> {
    let (name, list) = match (obj.get(field), obj.get(legacy)) {
        (Some(Value::Array(a)), _) => (field, a),
        (_, Some(Value::Array(a))) => (legacy, a),
        (None | Some(Value::Null), None | Some(Value::Null)) => return Ok(Vec::new()),
        _ => return Err(FieldError::new(field, "expected an array of levels")),
    };
    list.iter()
        .map(|l| {
            let text = |k: &str| match l.get(k) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let (Some(price_text), Some(size_text)) = (text("price"), text("size")) else {
                return Err(FieldError::new(name, format!("level without price/size: {l}")));
            };
            let price = decode::parse_decimal(&price_text).ok_or_else(|| FieldError::new(name, format!("bad price {price_text:?}")))?;
            if decode::parse_decimal(&size_text).is_none() {
                return Err(FieldError::new(name, format!("bad size {size_text:?}")));
            }
            Ok(Level { price, price_text, size_text })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::polymarket::fixtures::json as fixture;

    #[test]
    fn best_levels_are_computed_not_taken_from_order() {
        let b = decode_book(&fixture("clob_book.json")).unwrap();
        assert_eq!(b.best_bid().unwrap().to_string(), "0.34");
        assert_eq!(b.best_ask().unwrap().to_string(), "0.35");
        assert_eq!(b.bids.len(), 5);
        assert_eq!(b.asks.last().unwrap().size_text, "118000");
        assert_eq!(b.last_trade_price.unwrap().to_string(), "0.350");
        assert_eq!(b.source_ts.timestamp_millis(), 1795683663127);
        assert_eq!(b.hash, "9d41c0e27f3b8a6d5e1c2b0a9f8e7d6c5b4a3f21");
    }

    #[test]
    fn captured_ws_book_decodes() {
        let b = decode_book(&fixture("captured/ws_book_snapshot.json")).unwrap();
        assert!(b.best_bid().unwrap() < b.best_ask().unwrap());
        for w in b.bids.windows(2) {
            assert!(w[0].price > w[1].price);
        }
    }

    #[test]
    fn bad_level_is_an_error_not_a_panic() {
        let v = serde_json::json!({"asset_id": "1", "timestamp": "1795683663127",
            "bids": [{"price": "x", "size": "1"}], "asks": []});
        assert!(decode_book(&v).is_err());
    }
}
