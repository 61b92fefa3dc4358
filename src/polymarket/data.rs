//! Data API trades (v2 `/v2/trades`: snake_case in a `{data, pagination}` envelope; v1
//! `/trades`: camelCase bare array). Prices and sizes are JSON floats there (`0.709999959`):
//! stored exactly as written. Timestamps are whole seconds.

use serde_json::Value;

use super::decode::{self, FieldError};
use super::ws::Trade;

/// One trade row of either version.
pub fn decode_trade(obj: &Value) -> Result<Trade, FieldError> {
    let pick = |a: &str, b: &str| decode::string(obj, a).or_else(|| decode::string(obj, b));
    let asset_id =
        pick("token_id", "asset").or_else(|| decode::string(obj, "asset_id")).ok_or_else(|| FieldError::new("token_id", "missing"))?;
    Ok(Trade {
        asset_id,
        condition_id: pick("condition_id", "conditionId"),
        price: decode::required_decimal(obj, "price")?,
        size: decode::required_decimal(obj, "size")?,
        side: decode::side(obj)?,
        fee_rate_bps: None,
        source_ts: decode::required_timestamp(obj, "timestamp")?,
        tx_hash: pick("transaction_hash", "transactionHash"),
    })
}

/// A v2 page: rows and the next cursor (`None` at the end).
pub fn v2_page(body: &Value) -> Result<(Vec<Value>, Option<String>), FieldError> {
    let rows = match body.get("data") {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return Err(FieldError::new("data", "expected an array")),
    };
    let cursor = body.get("pagination").and_then(|p| decode::string(p, "next_cursor"));
    Ok((rows, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::polymarket::fixtures::json as fixture;

    #[test]
    fn v2_floats_are_stored_as_written() {
        let (rows, cursor) = v2_page(&fixture("captured/data_api_v2_trades.json")).unwrap();
        assert_eq!(cursor, None);
        let t = decode_trade(&rows[1]).unwrap();
        assert_eq!(t.price.to_string(), "0.709999959");
        assert_eq!(t.size.to_string(), "1.464786");
        assert_eq!(t.source_ts.timestamp(), 1786179730);
        assert_eq!(decode_trade(&rows[2]).unwrap().price.to_string(), "0.2972581967");
    }

    #[test]
    fn v1_rows_decode_too() {
        let rows = fixture("data_api_trades.json");
        for r in rows.as_array().unwrap() {
            let t = decode_trade(r).unwrap();
            assert!(t.tx_hash.is_some() && t.condition_id.is_some());
        }
    }
}
