//! Lenient, exact field decoding shared by every Polymarket payload.
//!
//! Upstream encodes one quantity several ways (numbers, numbers in strings, JSON arrays packed
//! in strings, four timestamp formats). These helpers accept all of them and never route a
//! price or size through `f64`: with serde_json's `arbitrary_precision`, a JSON number keeps
//! its source text, which is parsed straight into a [`Decimal`].

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

/// A field that is present but cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: &str, problem: impl Into<String>) -> Self {
        FieldError { field: field.to_string(), problem: problem.into() }
    }
}

/// `None` for absent, `null` or empty-string fields: upstream uses all three for "no value".
fn present<'a>(obj: &'a Value, field: &str) -> Option<&'a Value> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(v) => Some(v),
    }
}

/// A string field; numbers are accepted and rendered as their source text.
pub fn string(obj: &Value, field: &str) -> Option<String> {
    match present(obj, field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A boolean field; `"true"`/`"false"` strings are accepted.
pub fn boolean(obj: &Value, field: &str) -> Option<bool> {
    match present(obj, field)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// Parses decimal text exactly: plain (`"0.35"`, `".48"`, `"-1"`) or scientific (`"1e-5"`).
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    Decimal::from_str(t).ok().or_else(|| Decimal::from_scientific(t).ok())
}

/// A decimal field given as a JSON number or a string, exactly as written.
pub fn decimal(obj: &Value, field: &str) -> Result<Option<Decimal>, FieldError> {
    let Some(v) = present(obj, field) else { return Ok(None) };
    decimal_value(v).map(Some).map_err(|p| FieldError::new(field, p))
}

/// Decodes one JSON value (number or string) into a decimal.
pub fn decimal_value(v: &Value) -> Result<Decimal, String> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => return Err(format!("expected a decimal, found {other}")),
    };
    parse_decimal(&text).ok_or_else(|| format!("not a decimal: {text:?}"))
}

/// A string field that must be there.
pub fn required_string(obj: &Value, field: &str) -> Result<String, FieldError> {
    string(obj, field).ok_or_else(|| FieldError::new(field, "missing"))
}

/// A decimal field that must be there.
pub fn required_decimal(obj: &Value, field: &str) -> Result<Decimal, FieldError> {
    decimal(obj, field)?.ok_or_else(|| FieldError::new(field, "missing"))
}

/// A timestamp field that must be there.
pub fn required_timestamp(obj: &Value, field: &str) -> Result<DateTime<Utc>, FieldError> {
    timestamp(obj, field)?.ok_or_else(|| FieldError::new(field, "missing"))
}

/// The `side` field: `BUY` or `SELL`, any case upstream.
pub fn side(obj: &Value) -> Result<Side, FieldError> {
    let text = string(obj, "side");
    text.as_deref().and_then(Side::parse).ok_or_else(|| {
        let other = text.map(|s| s.to_ascii_uppercase());
        FieldError::new("side", format!("expected BUY or SELL, got {other:?}"))
    })
}

/// The side of a trade (the taker's) or of a book level (`BUY`: bids, `SELL`: asks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Side {
    #[serde(rename = "BUY")]
    Buy,
    #[serde(rename = "SELL")]
    Sell,
}

impl Side {
    /// `BUY` or `SELL`, in any case: the one reading of a side, for both decoders.
    pub fn parse(text: &str) -> Option<Side> {
        if text.eq_ignore_ascii_case("BUY") {
            Some(Side::Buy)
        } else if text.eq_ignore_ascii_case("SELL") {
            Some(Side::Sell)
        } else {
            None
        }
    }

    /// As stored and as upstream writes it: `BUY` or `SELL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An array of strings given as a real JSON array or as a JSON array packed in a string
/// (`"[\"Yes\", \"No\"]"`). Numbers inside are kept as their text.
pub fn string_array(obj: &Value, field: &str) -> Result<Option<Vec<String>>, FieldError> {
    let Some(v) = present(obj, field) else { return Ok(None) };
    let unpacked;
    let arr = match v {
        Value::Array(a) => a,
        Value::String(s) => {
            unpacked = serde_json::from_str::<Value>(s).map_err(|e| FieldError::new(field, format!("packed array is not JSON: {e}")))?;
            match &unpacked {
                Value::Array(a) => a,
                _ => return Err(FieldError::new(field, "packed value is not an array")),
            }
        }
        _ => return Err(FieldError::new(field, "expected an array")),
    };
    arr.iter()
        .map(|e| match e {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(FieldError::new(field, format!("element {other} is not a string"))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A timestamp in any of upstream's forms: RFC 3339 (`2026-09-14T16:02:11.408Z`), Postgres
/// text (`2026-11-27 20:37:01+00`, optional fraction), a bare date (`2026-12-17`, midnight
/// UTC), epoch milliseconds as a string or number (`"1795683663127"`), or epoch seconds when
/// the number is too small to be milliseconds.
pub fn timestamp(obj: &Value, field: &str) -> Result<Option<DateTime<Utc>>, FieldError> {
    let Some(v) = present(obj, field) else { return Ok(None) };
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(FieldError::new(field, "expected a timestamp")),
    };
    parse_timestamp(&text).map(Some).ok_or_else(|| FieldError::new(field, format!("not a timestamp: {text:?}")))
}

/// See [`timestamp`].
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = t.parse().ok()?;
        // Below 10^11 a value is seconds (year 5138 in seconds vs. 1973 in milliseconds).
        return if n < 100_000_000_000 { Utc.timestamp_opt(n, 0).single() } else { Utc.timestamp_millis_opt(n).single() };
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(d.with_timezone(&Utc));
    }
    // Postgres text form: "2026-11-27 20:37:01+00" or "...01.615+00" or "+00:00".
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(d) = DateTime::parse_from_str(t, fmt) {
            return Some(d.with_timezone(&Utc));
        }
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, fmt) {
            return Some(d.and_utc());
        }
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d").ok().map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn decimals_keep_their_source_text() {
        let v = json!({"a": num("0.709999959"), "b": "0.350", "c": num("25814545.294374414"),
                       "d": ".48", "e": num("1e-5"), "f": "", "g": null});
        assert_eq!(decimal(&v, "a").unwrap().unwrap().to_string(), "0.709999959");
        assert_eq!(decimal(&v, "b").unwrap().unwrap().to_string(), "0.350");
        assert_eq!(decimal(&v, "c").unwrap().unwrap().to_string(), "25814545.294374414");
        assert_eq!(decimal(&v, "d").unwrap().unwrap().to_string(), "0.48");
        assert_eq!(decimal(&v, "e").unwrap().unwrap().to_string(), "0.00001");
        assert_eq!(decimal(&v, "f").unwrap(), None);
        assert_eq!(decimal(&v, "g").unwrap(), None);
        assert_eq!(decimal(&v, "missing").unwrap(), None);
        assert!(decimal(&json!({"x": "abc"}), "x").is_err());
    }

    #[test]
    fn arrays_packed_in_strings_are_unpacked() {
        let v = json!({"packed": "[\"Yes\", \"No\"]", "real": ["a", "b", "c"], "empty": "[]",
                       "bad": "[\"Yes\""});
        assert_eq!(string_array(&v, "packed").unwrap().unwrap(), vec!["Yes", "No"]);
        assert_eq!(string_array(&v, "real").unwrap().unwrap(), vec!["a", "b", "c"]);
        assert_eq!(string_array(&v, "empty").unwrap().unwrap(), Vec::<String>::new());
        assert!(string_array(&v, "bad").is_err());
    }

    #[test]
    fn every_timestamp_form_parses_to_utc() {
        let cases = [
            ("2026-09-14T16:02:11.408Z", "2026-09-14T16:02:11.408Z"),
            ("2026-11-27 20:37:01+00", "2026-11-27T20:37:01Z"),
            ("2023-11-02 21:22:21.615+00", "2023-11-02T21:22:21.615Z"),
            ("2026-12-17", "2026-12-17T00:00:00Z"),
            ("1795683663127", "2026-11-26T09:01:03.127Z"),
            ("1786179735", "2026-08-08T09:02:15Z"),
            ("2025-07-03T20:36:58.88434Z", "2025-07-03T20:36:58.884340Z"),
        ];
        for (input, want) in cases {
            let got = parse_timestamp(input).unwrap_or_else(|| panic!("{input} did not parse"));
            assert_eq!(got.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true), want, "{input}");
        }
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
