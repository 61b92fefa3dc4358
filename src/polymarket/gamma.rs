//! Gamma (catalog) payloads: events, markets and their outcome tokens.
//!
//! Decoding takes the raw JSON object and returns a record plus the warnings it raised, so an
//! odd market (no condition id, no tokens, three outcomes, mismatched arrays) is stored as far
//! as it makes sense and counted, never a crash.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

use super::decode::{self, FieldError};

/// One event row.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: String,
    pub ticker: Option<String>,
    pub slug: Option<String>,
    pub title: Option<String>,
    pub active: Option<bool>,
    pub closed: Option<bool>,
    pub archived: Option<bool>,
    pub neg_risk: Option<bool>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub closed_time: Option<DateTime<Utc>>,
    pub volume: Option<Decimal>,
    pub liquidity: Option<Decimal>,
    pub open_interest: Option<Decimal>,
    /// Whether this came from a full event object (false: the `{id, slug, title}` stub nested
    /// in a market, which must not overwrite a full record's other columns).
    pub complete: bool,
    /// The upstream object, nested `markets` removed (they are stored as markets).
    pub raw: Value,
}

/// One market row with its outcome tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketRecord {
    pub id: String,
    /// `None` when upstream sends `""` (seen on malformed markets).
    pub condition_id: Option<String>,
    pub event_id: Option<String>,
    pub question: Option<String>,
    pub slug: Option<String>,
    pub version: Option<String>,
    pub active: Option<bool>,
    pub closed: Option<bool>,
    pub archived: Option<bool>,
    pub accepting_orders: Option<bool>,
    pub enable_order_book: Option<bool>,
    pub neg_risk: Option<bool>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub closed_time: Option<DateTime<Utc>>,
    pub volume: Option<Decimal>,
    pub liquidity: Option<Decimal>,
    pub tick_size: Option<Decimal>,
    pub min_order_size: Option<Decimal>,
    pub uma_resolution_status: Option<String>,
    /// Index-aligned with `tokens`' outcome index.
    pub outcome_prices: Vec<Option<Decimal>>,
    pub tokens: Vec<TokenRecord>,
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_id: String,
    pub outcome: Option<String>,
    pub outcome_index: i32,
}

impl MarketRecord {
    /// Resolved: UMA says so, or the outcome prices settled to one winner (`["1","0"]`).
    pub fn winning_outcome_index(&self) -> Option<usize> {
        let settled = self.closed == Some(true)
            && self.outcome_prices.iter().all(|p| p.is_some_and(|p| p == Decimal::ONE || p.is_zero()))
            && self.outcome_prices.iter().filter(|p| **p == Some(Decimal::ONE)).count() == 1;
        if !settled {
            return None;
        }
        self.outcome_prices.iter().position(|p| *p == Some(Decimal::ONE))
    }
}

/// A non-fatal oddity found while decoding, counted and logged by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oddity {
    pub market_id: String,
    pub what: String,
}

/// Decodes a Gamma event object; its nested full markets are returned too, with `event_id`
/// set to this event.
pub fn decode_event(obj: &Value, odd: &mut Vec<Oddity>) -> Result<(EventRecord, Vec<MarketRecord>), FieldError> {
    let id = decode::string(obj, "id").ok_or_else(|| FieldError::new("id", "missing"))?;
    let mut raw = obj.clone();
    let markets_json = match raw.as_object_mut().and_then(|o| o.remove("markets")) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let event = event_fields(&raw, id.clone(), true)?;
    let mut markets = Vec::with_capacity(markets_json.len());
    for m in &markets_json {
        match decode_market(m, odd) {
            Ok(Some(mut market)) => {
                market.event_id = Some(id.clone());
                markets.push(market);
            }
            Ok(None) => {}
            Err(e) => odd.push(Oddity { market_id: decode::string(m, "id").unwrap_or_default(), what: format!("skipped: {e}") }),
        }
    }
    Ok((event, markets))
}

fn event_fields(obj: &Value, id: String, complete: bool) -> Result<EventRecord, FieldError> {
    Ok(EventRecord {
        id,
        ticker: decode::string(obj, "ticker"),
        slug: decode::string(obj, "slug"),
        title: decode::string(obj, "title"),
        active: decode::boolean(obj, "active"),
        closed: decode::boolean(obj, "closed"),
        archived: decode::boolean(obj, "archived"),
        neg_risk: decode::boolean(obj, "negRisk"),
        start_date: decode::timestamp(obj, "startDate")?,
        end_date: decode::timestamp(obj, "endDate")?,
        created_at: decode::timestamp(obj, "createdAt")?,
        updated_at: decode::timestamp(obj, "updatedAt")?,
        closed_time: decode::timestamp(obj, "closedTime")?,
        volume: decode::decimal(obj, "volume")?,
        liquidity: decode::decimal(obj, "liquidity")?,
        open_interest: decode::decimal(obj, "openInterest")?,
        complete,
        raw: obj.clone(),
    })
}

/// The parent event stubs nested in a market from `/markets/keyset` (`events: [{id, slug,
/// title, ...}]`).
pub fn parent_events(obj: &Value) -> Vec<EventRecord> {
    let Some(Value::Array(events)) = obj.get("events") else { return Vec::new() };
    events
        .iter()
        .filter_map(|e| {
            let id = decode::string(e, "id")?;
            event_fields(e, id, false).ok()
        })
        .collect()
}

/// Decodes one Gamma market. `Ok(None)`: nothing storable (no id), recorded in `odd`.
pub fn decode_market(obj: &Value, odd: &mut Vec<Oddity>) -> Result<Option<MarketRecord>, FieldError> {
    let Some(id) = decode::string(obj, "id") else {
        odd.push(Oddity { market_id: String::new(), what: "market without id skipped".into() });
        return Ok(None);
    };
    let mut note = |what: String| odd.push(Oddity { market_id: id.clone(), what });

    let condition_id = decode::string(obj, "conditionId");
    if condition_id.is_none() {
        note("empty condition id".into());
    }
    let version = decode::string(obj, "version");
    // Protocol V2 markets carry outcome ids in `positionIds`; v1 (and unversioned) ones in
    // `clobTokenIds`. Field presence is not a reliable discriminator, `version` is.
    let (ids_field, fallback) = match version.as_deref() {
        Some("v2") => ("positionIds", "clobTokenIds"),
        _ => ("clobTokenIds", "positionIds"),
    };
    let token_ids = match decode::string_array(obj, ids_field)? {
        Some(ids) if !ids.is_empty() => ids,
        _ => decode::string_array(obj, fallback)?.unwrap_or_default(),
    };
    let outcomes = decode::string_array(obj, "outcomes")?.unwrap_or_default();
    let prices_text = decode::string_array(obj, "outcomePrices")?.unwrap_or_default();
    let outcome_prices: Vec<Option<Decimal>> = prices_text.iter().map(|p| decode::parse_decimal(p)).collect();

    if token_ids.is_empty() {
        note("no outcome token ids".into());
    } else if outcomes.len() != token_ids.len() {
        note(format!("{} outcomes for {} token ids", outcomes.len(), token_ids.len()));
    }
    let tokens = if condition_id.is_some() {
        token_ids
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .map(|(i, t)| TokenRecord { token_id: t.clone(), outcome: outcomes.get(i).cloned(), outcome_index: i as i32 })
            .collect()
    } else {
        Vec::new()
    };
    let event_id = parent_events(obj).first().map(|e| e.id.clone());

    Ok(Some(MarketRecord {
        condition_id,
        event_id,
        question: decode::string(obj, "question"),
        slug: decode::string(obj, "slug"),
        version,
        active: decode::boolean(obj, "active"),
        closed: decode::boolean(obj, "closed"),
        archived: decode::boolean(obj, "archived"),
        accepting_orders: decode::boolean(obj, "acceptingOrders"),
        enable_order_book: decode::boolean(obj, "enableOrderBook"),
        neg_risk: decode::boolean(obj, "negRisk"),
        start_date: decode::timestamp(obj, "startDate")?,
        end_date: decode::timestamp(obj, "endDate")?,
        created_at: decode::timestamp(obj, "createdAt")?,
        updated_at: decode::timestamp(obj, "updatedAt")?,
        closed_time: decode::timestamp(obj, "closedTime")?,
        volume: decode::decimal(obj, "volume")?,
        liquidity: decode::decimal(obj, "liquidity")?,
        tick_size: decode::decimal(obj, "orderPriceMinTickSize")?,
        min_order_size: decode::decimal(obj, "orderMinSize")?,
        uma_resolution_status: decode::string(obj, "umaResolutionStatus"),
        outcome_prices,
        tokens,
        raw: obj.clone(),
        id,
    }))
}

/// A keyset page: the items under `key` and the cursor for the next page (`None` = last page;
/// an empty string is treated as the end too, it is not a valid cursor).
pub fn keyset_page(body: &Value, key: &str) -> Result<(Vec<Value>, Option<String>), FieldError> {
    let items = match body.get(key) {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return Err(FieldError::new(key, "expected an array")),
    };
    Ok((items, decode::string(body, "next_cursor")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::polymarket::fixtures::json as fixture;

    #[test]
    fn captured_live_market_decodes_exactly() {
        let mut odd = Vec::new();
        let m = decode_market(&fixture("captured/gamma_market_live.json"), &mut odd).unwrap().unwrap();
        assert!(odd.is_empty(), "{odd:?}");
        assert_eq!(m.id, "612408");
        assert_eq!(m.volume.unwrap().to_string(), "18814545.294374414");
        assert_eq!(m.liquidity.unwrap().to_string(), "190438.22824");
        assert_eq!(m.tick_size.unwrap().to_string(), "0.001");
        assert_eq!(m.event_id.as_deref(), Some("41077"));
        assert_eq!(m.tokens.len(), 2);
        assert_eq!(m.tokens[0].token_id, "71093358244715600382916450012873346690018225563791045520917733608412097705531");
        assert_eq!(m.tokens[1].outcome.as_deref(), Some("No"));
        assert_eq!(m.outcome_prices[0].unwrap().to_string(), "0.1875");
        assert_eq!(m.winning_outcome_index(), None);
    }

    #[test]
    fn event_fixture_yields_event_and_nested_markets() {
        let mut odd = Vec::new();
        let (e, markets) = decode_event(&fixture("gamma_event.json"), &mut odd).unwrap();
        assert_eq!(e.id, "74102");
        assert!(e.raw.get("markets").is_none());
        assert_eq!(markets.len(), 2);
        assert!(markets.iter().all(|m| m.event_id.as_deref() == Some("74102")));
        assert_eq!(markets[1].tokens[0].outcome.as_deref(), Some("Yes"));
    }

    #[test]
    fn odd_markets_are_stored_or_skipped_with_a_note() {
        let mut odd = Vec::new();
        let no_condition = serde_json::json!({"id": "1", "conditionId": "",
            "clobTokenIds": "[\"11\", \"12\"]", "outcomes": "[\"Yes\", \"No\"]"});
        let m = decode_market(&no_condition, &mut odd).unwrap().unwrap();
        assert_eq!(m.condition_id, None);
        assert!(m.tokens.is_empty());

        let three = serde_json::json!({"id": "2", "conditionId": "0xab",
            "clobTokenIds": "[\"21\", \"22\", \"23\"]", "outcomes": "[\"A\", \"B\", \"C\"]"});
        let m = decode_market(&three, &mut odd).unwrap().unwrap();
        assert_eq!(m.tokens.iter().map(|t| t.outcome_index).collect::<Vec<_>>(), [0, 1, 2]);

        let v2 = serde_json::json!({"id": "3", "conditionId": "0xcd", "version": "v2",
            "positionIds": ["31", "32"], "clobTokenIds": "[\"old1\", \"old2\"]",
            "outcomes": "[\"Up\", \"Down\"]"});
        let m = decode_market(&v2, &mut odd).unwrap().unwrap();
        assert_eq!(m.tokens[0].token_id, "31");
        assert_eq!(m.tokens[1].outcome.as_deref(), Some("Down"));

        let empty = serde_json::json!({"id": "4", "conditionId": "0xef", "clobTokenIds": "[]"});
        assert!(decode_market(&empty, &mut odd).unwrap().unwrap().tokens.is_empty());

        let no_id = serde_json::json!({"question": "?"});
        assert!(decode_market(&no_id, &mut odd).unwrap().is_none());

        let whats: Vec<_> = odd.iter().map(|o| o.what.as_str()).collect();
        assert_eq!(whats, ["empty condition id", "no outcome token ids", "market without id skipped"],);
    }

    #[test]
    fn settled_prices_name_the_winner() {
        let mut odd = Vec::new();
        let m = serde_json::json!({"id": "5", "conditionId": "0x1", "closed": true,
            "clobTokenIds": "[\"1\", \"2\"]", "outcomes": "[\"Yes\", \"No\"]",
            "outcomePrices": "[\"0\", \"1\"]", "closedTime": "2026-11-27 20:37:01+00"});
        let m = decode_market(&m, &mut odd).unwrap().unwrap();
        assert_eq!(m.winning_outcome_index(), Some(1));
        assert_eq!(m.closed_time.unwrap().to_rfc3339(), "2026-11-27T20:37:01+00:00");
    }
}
