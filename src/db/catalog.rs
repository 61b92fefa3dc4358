//! `events`, `markets`, `tokens`: batched upserts (one `UNNEST` statement per table) and the
//! reads the catalog and books collectors need.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::polymarket::gamma::{EventRecord, MarketRecord};
use crate::polymarket::ws::{Lifecycle, LifecycleKind};
use crate::slice::Slice;

// The stream's dictionaries (`stream_tokens`, `stream_conditions`: integer keys of token and
// market ids, docs/schema.md "Dictionary keys"), filled here for every catalog token and by
// the stream's writer for any other id it meets. Only missing ids are proposed: each row an
// `INSERT … ON CONFLICT` proposes takes a value of the 32-bit key sequence, inserted or not.

/// The markets not in the dictionary yet (`$1`: sorted ids): only those are proposed, so no
/// key is spent on an id already there.
pub const INSERT_MISSING_CONDITIONS: &str = "INSERT INTO stream_conditions (condition_id)
    SELECT c FROM unnest($1::text[]) AS c
    WHERE NOT EXISTS (SELECT 1 FROM stream_conditions s WHERE s.condition_id = c) ORDER BY 1
    ON CONFLICT DO NOTHING";

/// The tokens not in the dictionary yet (`$1`: sorted ids, `$2`: their market keys or NULL).
pub const INSERT_MISSING_TOKENS: &str = "INSERT INTO stream_tokens (token_id, condition_key)
    SELECT u.t, u.c FROM unnest($1::text[], $2::int4[]) AS u(t, c)
    WHERE NOT EXISTS (SELECT 1 FROM stream_tokens s WHERE s.token_id = u.t) ORDER BY 1
    ON CONFLICT DO NOTHING";

/// The market of tokens the dictionary has without one (met on the stream before the catalog
/// knew them).
pub const SET_MISSING_MARKETS: &str = "UPDATE stream_tokens s SET condition_key = u.c
    FROM unnest($1::text[], $2::int4[]) AS u(t, c)
    WHERE s.token_id = u.t AND s.condition_key IS NULL AND u.c IS NOT NULL";

/// Upserts full events. Rows are sorted by id so concurrent batches lock in one order.
pub async fn upsert_events<C: GenericClient>(db: &C, events: &[EventRecord]) -> Result<u64, tokio_postgres::Error> {
    let mut by_id: BTreeMap<&str, &EventRecord> = BTreeMap::new();
    for e in events.iter().filter(|e| e.complete) {
        by_id.insert(&e.id, e);
    }
    if by_id.is_empty() {
        return Ok(0);
    }
    let rows: Vec<&EventRecord> = by_id.into_values().collect();
    let col = |f: fn(&EventRecord) -> Option<String>| rows.iter().map(|e| f(e)).collect::<Vec<_>>();
    let ids: Vec<String> = rows.iter().map(|e| e.id.clone()).collect();
    let ticker = col(|e| e.ticker.clone());
    let slug = col(|e| e.slug.clone());
    let title = col(|e| e.title.clone());
    let flags = |f: fn(&EventRecord) -> Option<bool>| rows.iter().map(|e| f(e)).collect::<Vec<_>>();
    let active = flags(|e| e.active);
    let closed = flags(|e| e.closed);
    let archived = flags(|e| e.archived);
    let neg_risk = flags(|e| e.neg_risk);
    let times = |f: fn(&EventRecord) -> Option<DateTime<Utc>>| rows.iter().map(|e| f(e)).collect::<Vec<_>>();
    let start = times(|e| e.start_date);
    let end = times(|e| e.end_date);
    let created = times(|e| e.created_at);
    let updated = times(|e| e.updated_at);
    let closed_time = times(|e| e.closed_time);
    let nums = |f: fn(&EventRecord) -> Option<Decimal>| rows.iter().map(|e| f(e)).collect::<Vec<_>>();
    let volume = nums(|e| e.volume);
    let liquidity = nums(|e| e.liquidity);
    let oi = nums(|e| e.open_interest);
    let raw: Vec<&Value> = rows.iter().map(|e| &e.raw).collect();
    db.execute(
        "INSERT INTO events (id, ticker, slug, title, active, closed, archived, neg_risk,
                start_date, end_date, created_at, updated_at, closed_time,
                volume, liquidity, open_interest, raw)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[],
                $6::bool[], $7::bool[], $8::bool[], $9::timestamptz[], $10::timestamptz[],
                $11::timestamptz[], $12::timestamptz[], $13::timestamptz[], $14::numeric[],
                $15::numeric[], $16::numeric[], $17::jsonb[])
         ON CONFLICT (id) DO UPDATE SET
            ticker = EXCLUDED.ticker, slug = EXCLUDED.slug, title = EXCLUDED.title,
            active = EXCLUDED.active, closed = EXCLUDED.closed, archived = EXCLUDED.archived,
            neg_risk = EXCLUDED.neg_risk, start_date = EXCLUDED.start_date,
            end_date = EXCLUDED.end_date, created_at = EXCLUDED.created_at,
            updated_at = EXCLUDED.updated_at, closed_time = EXCLUDED.closed_time,
            volume = EXCLUDED.volume, liquidity = EXCLUDED.liquidity,
            open_interest = EXCLUDED.open_interest, raw = EXCLUDED.raw, last_seen_at = now()",
        &[
            &ids,
            &ticker,
            &slug,
            &title,
            &active,
            &closed,
            &archived,
            &neg_risk,
            &start,
            &end,
            &created,
            &updated,
            &closed_time,
            &volume,
            &liquidity,
            &oi,
            &raw,
        ],
    )
    .await
}

/// Records parent events known only by the `{id, slug, title}` stub nested in a market:
/// inserted if new, otherwise only slug and title are refreshed.
pub async fn upsert_event_stubs<C: GenericClient>(db: &C, events: &[EventRecord]) -> Result<u64, tokio_postgres::Error> {
    let mut by_id: BTreeMap<&str, &EventRecord> = BTreeMap::new();
    for e in events {
        by_id.insert(&e.id, e);
    }
    if by_id.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = by_id.keys().copied().collect();
    let slug: Vec<Option<&str>> = by_id.values().map(|e| e.slug.as_deref()).collect();
    let title: Vec<Option<&str>> = by_id.values().map(|e| e.title.as_deref()).collect();
    db.execute(
        "INSERT INTO events (id, slug, title)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])
         ON CONFLICT (id) DO UPDATE SET slug = COALESCE(EXCLUDED.slug, events.slug),
            title = COALESCE(EXCLUDED.title, events.title), last_seen_at = now()",
        &[&ids, &slug, &title],
    )
    .await
}

/// Upserts markets and their tokens; returns the number of markets written.
pub async fn upsert_markets<C: GenericClient>(db: &C, markets: &[MarketRecord]) -> Result<u64, tokio_postgres::Error> {
    let mut by_id: BTreeMap<&str, &MarketRecord> = BTreeMap::new();
    for m in markets {
        by_id.insert(&m.id, m);
    }
    if by_id.is_empty() {
        return Ok(0);
    }
    let rows: Vec<&MarketRecord> = by_id.into_values().collect();
    let text = |f: fn(&MarketRecord) -> Option<String>| rows.iter().map(|m| f(m)).collect::<Vec<_>>();
    let flags = |f: fn(&MarketRecord) -> Option<bool>| rows.iter().map(|m| f(m)).collect::<Vec<_>>();
    let times = |f: fn(&MarketRecord) -> Option<DateTime<Utc>>| rows.iter().map(|m| f(m)).collect::<Vec<_>>();
    let nums = |f: fn(&MarketRecord) -> Option<Decimal>| rows.iter().map(|m| f(m)).collect::<Vec<_>>();
    let ids: Vec<&str> = rows.iter().map(|m| m.id.as_str()).collect();
    let condition = text(|m| m.condition_id.clone());
    let event = text(|m| m.event_id.clone());
    let question = text(|m| m.question.clone());
    let slug = text(|m| m.slug.clone());
    let version = text(|m| m.version.clone());
    let uma = text(|m| m.uma_resolution_status.clone());
    let active = flags(|m| m.active);
    let closed = flags(|m| m.closed);
    let archived = flags(|m| m.archived);
    let accepting = flags(|m| m.accepting_orders);
    let book_enabled = flags(|m| m.enable_order_book);
    let neg_risk = flags(|m| m.neg_risk);
    let start = times(|m| m.start_date);
    let end = times(|m| m.end_date);
    let created = times(|m| m.created_at);
    let updated = times(|m| m.updated_at);
    let closed_time = times(|m| m.closed_time);
    let volume = nums(|m| m.volume);
    let liquidity = nums(|m| m.liquidity);
    let tick = nums(|m| m.tick_size);
    let min_size = nums(|m| m.min_order_size);
    // UNNEST flattens nested arrays, so outcome prices travel as array literals.
    let prices: Vec<Option<String>> = rows.iter().map(|m| numeric_array_literal(&m.outcome_prices)).collect();
    let winner: Vec<Option<i32>> = rows.iter().map(|m| m.winning_outcome_index().map(|i| i as i32)).collect();
    let resolved: Vec<bool> =
        rows.iter().map(|m| m.uma_resolution_status.as_deref() == Some("resolved") || m.winning_outcome_index().is_some()).collect();
    let raw: Vec<&Value> = rows.iter().map(|m| &m.raw).collect();
    let written = db
        .execute(
            "INSERT INTO markets (id, condition_id, event_id, question, slug, version,
                uma_resolution_status, active, closed, archived, accepting_orders,
                enable_order_book, neg_risk, start_date, end_date, created_at, updated_at,
                closed_time, volume, liquidity, tick_size, min_order_size, outcome_prices,
                winning_outcome_index, resolved, raw)
             SELECT id, condition_id, event_id, question, slug, version, uma, active, closed,
                archived, accepting, book, neg_risk, start_date, end_date, created_at,
                updated_at, closed_time, volume, liquidity, tick, min_size, prices::numeric[],
                winner, resolved, raw
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::bool[], $9::bool[], $10::bool[], $11::bool[], $12::bool[],
                $13::bool[], $14::timestamptz[], $15::timestamptz[], $16::timestamptz[],
                $17::timestamptz[], $18::timestamptz[], $19::numeric[], $20::numeric[],
                $21::numeric[], $22::numeric[], $23::text[], $24::int4[], $25::bool[],
                $26::jsonb[])
                AS u(id, condition_id, event_id, question, slug, version, uma, active, closed,
                archived, accepting, book, neg_risk, start_date, end_date, created_at,
                updated_at, closed_time, volume, liquidity, tick, min_size, prices, winner,
                resolved, raw)
             ON CONFLICT (id) DO UPDATE SET
                condition_id = EXCLUDED.condition_id,
                event_id = COALESCE(EXCLUDED.event_id, markets.event_id),
                question = EXCLUDED.question, slug = EXCLUDED.slug, version = EXCLUDED.version,
                uma_resolution_status = EXCLUDED.uma_resolution_status,
                active = EXCLUDED.active, closed = EXCLUDED.closed, archived = EXCLUDED.archived,
                accepting_orders = EXCLUDED.accepting_orders,
                enable_order_book = EXCLUDED.enable_order_book, neg_risk = EXCLUDED.neg_risk,
                start_date = EXCLUDED.start_date, end_date = EXCLUDED.end_date,
                created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
                closed_time = EXCLUDED.closed_time, volume = EXCLUDED.volume,
                liquidity = EXCLUDED.liquidity, tick_size = EXCLUDED.tick_size,
                min_order_size = EXCLUDED.min_order_size,
                outcome_prices = EXCLUDED.outcome_prices,
                winning_outcome_index = COALESCE(EXCLUDED.winning_outcome_index, markets.winning_outcome_index),
                resolved = markets.resolved OR EXCLUDED.resolved,
                raw = EXCLUDED.raw, last_seen_at = now()",
            &[
                &ids,
                &condition,
                &event,
                &question,
                &slug,
                &version,
                &uma,
                &active,
                &closed,
                &archived,
                &accepting,
                &book_enabled,
                &neg_risk,
                &start,
                &end,
                &created,
                &updated,
                &closed_time,
                &volume,
                &liquidity,
                &tick,
                &min_size,
                &prices,
                &winner,
                &resolved,
                &raw,
            ],
        )
        .await?;

    let mut tokens: BTreeMap<&str, (&str, &str, Option<&str>, i32)> = BTreeMap::new();
    for m in &rows {
        let Some(cond) = m.condition_id.as_deref() else { continue };
        for t in &m.tokens {
            tokens.insert(&t.token_id, (cond, &m.id, t.outcome.as_deref(), t.outcome_index));
        }
    }
    if !tokens.is_empty() {
        let token_ids: Vec<&str> = tokens.keys().copied().collect();
        let conds: Vec<&str> = tokens.values().map(|t| t.0).collect();
        let market_ids: Vec<&str> = tokens.values().map(|t| t.1).collect();
        let outcomes: Vec<Option<&str>> = tokens.values().map(|t| t.2).collect();
        let idx: Vec<i32> = tokens.values().map(|t| t.3).collect();
        db.execute(
            "INSERT INTO tokens (token_id, condition_id, market_id, outcome, outcome_index)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[])
             ON CONFLICT (token_id) DO UPDATE SET condition_id = EXCLUDED.condition_id,
                market_id = EXCLUDED.market_id, outcome = EXCLUDED.outcome,
                outcome_index = EXCLUDED.outcome_index
             WHERE (tokens.condition_id, tokens.market_id, tokens.outcome, tokens.outcome_index)
                IS DISTINCT FROM (EXCLUDED.condition_id, EXCLUDED.market_id, EXCLUDED.outcome,
                EXCLUDED.outcome_index)",
            &[&token_ids, &conds, &market_ids, &outcomes, &idx],
        )
        .await?;
        // The stream's dictionaries too, so every catalog token has its integer key and its
        // market before the stream sees it: only the ids missing from them are proposed (a
        // proposed row takes a key whether it is inserted or not), sorted like the writer's so
        // two writers never wait on each other in opposite orders.
        let mut markets: Vec<&str> = conds.clone();
        markets.sort_unstable();
        markets.dedup();
        db.execute(INSERT_MISSING_CONDITIONS, &[&markets]).await?;
        db.execute(
            "WITH u AS (SELECT u.t, c.condition_key AS c FROM unnest($1::text[], $2::text[]) AS u(t, cond)
                JOIN stream_conditions c ON c.condition_id = u.cond)
             INSERT INTO stream_tokens (token_id, condition_key)
             SELECT u.t, u.c FROM u WHERE NOT EXISTS (SELECT 1 FROM stream_tokens s WHERE s.token_id = u.t) ORDER BY 1
             ON CONFLICT DO NOTHING",
            &[&token_ids, &conds],
        )
        .await?;
        db.execute(
            "UPDATE stream_tokens s SET condition_key = c.condition_key
             FROM unnest($1::text[], $2::text[]) AS u(t, cond) JOIN stream_conditions c ON c.condition_id = u.cond
             WHERE s.token_id = u.t AND s.condition_key IS NULL",
            &[&token_ids, &conds],
        )
        .await?;
    }
    Ok(written)
}

/// `{0.345,0.655}`; `NULL` elements for unparsable prices; `None` for no prices.
fn numeric_array_literal(prices: &[Option<Decimal>]) -> Option<String> {
    if prices.is_empty() {
        return None;
    }
    let parts: Vec<String> = prices.iter().map(|p| p.map_or_else(|| "NULL".to_string(), |d| d.to_string())).collect();
    Some(format!("{{{}}}", parts.join(",")))
}

/// Ids of markets the resolutions pass re-reads: open markets past their end date or not seen
/// by the last full sweep (`stale_before`), and closed ones not yet resolved that closed within
/// the watch window.
pub async fn markets_awaiting_resolution<C: GenericClient>(
    db: &C,
    stale_before: Option<DateTime<Utc>>,
    watch_since: DateTime<Utc>,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT id FROM markets
             WHERE (closed IS NOT TRUE AND (end_date < now() OR last_seen_at < $1))
                OR (closed AND NOT resolved AND COALESCE(closed_time, end_date, last_seen_at) >= $2)
             ORDER BY id",
            &[&stale_before, &watch_since],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Every market id already stored, among `ids`.
pub async fn known_market_ids<C: GenericClient>(db: &C, ids: &[&str]) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = db.query("SELECT id FROM markets WHERE id = ANY($1::text[])", &[&ids]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Tokens whose books are polled: every token of every open market with an order book.
pub async fn active_token_ids<C: GenericClient>(db: &C, slice: Slice) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT t.token_id, t.condition_id FROM tokens t JOIN markets m ON m.id = t.market_id
             WHERE m.closed IS NOT TRUE AND m.active IS NOT FALSE
               AND m.enable_order_book IS NOT FALSE
             ORDER BY t.token_id",
            &[],
        )
        .await?;
    Ok(rows.iter().filter(|r| slice.owns(r.get::<_, Option<&str>>(1).unwrap_or(r.get::<_, &str>(0)))).map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literal_keeps_exact_text() {
        let p = vec![Some(Decimal::new(345, 3)), None, Some(Decimal::new(6550, 4))];
        assert_eq!(numeric_array_literal(&p).unwrap(), "{0.345,NULL,0.6550}");
        assert_eq!(numeric_array_literal(&[]), None);
    }
}

/// Which markets the stream subscribes to (see `stream.*` scope keys).
#[derive(Debug, Clone, Default)]
pub struct StreamScope {
    pub min_volume_24h: Decimal,
    pub min_liquidity: Decimal,
    pub tag_slugs: Vec<String>,
}

/// The stream's subscription set: every token of every open market in `scope`, grouped by
/// market (condition), a market's tokens in outcome order.
pub async fn stream_token_ids<C: GenericClient>(
    db: &C,
    scope: &StreamScope,
    slice: Slice,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT t.token_id, t.condition_id FROM tokens t JOIN markets m ON m.id = t.market_id
             LEFT JOIN events e ON e.id = m.event_id
             WHERE m.closed IS NOT TRUE AND m.active IS NOT FALSE AND m.enable_order_book IS NOT FALSE
               AND ($1::numeric = 0 OR COALESCE((m.raw->>'volume24hr')::numeric, 0) >= $1)
               AND ($2::numeric = 0 OR COALESCE(m.liquidity, 0) >= $2)
               AND (cardinality($3::text[]) = 0 OR EXISTS (
                    SELECT 1 FROM jsonb_array_elements(COALESCE(e.raw->'tags', '[]'::jsonb)) tag
                    WHERE tag->>'slug' = ANY($3)))
             ORDER BY t.condition_id, t.outcome_index, t.token_id",
            &[&scope.min_volume_24h, &scope.min_liquidity, &scope.tag_slugs],
        )
        .await?;
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut last: Option<String> = None;
    for r in &rows {
        let (token, condition): (String, Option<String>) = (r.get(0), r.get(1));
        if !slice.owns(condition.as_deref().unwrap_or(&token)) {
            continue;
        }
        match (&last, &condition) {
            (Some(l), Some(c)) if l == c => groups.last_mut().expect("a group").push(token),
            _ => groups.push(vec![token]),
        }
        last = condition;
    }
    Ok(groups)
}

/// The condition ids of these tokens.
pub async fn conditions_of<C: GenericClient>(db: &C, token_ids: &[String]) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = db.query("SELECT DISTINCT condition_id FROM tokens WHERE token_id = ANY($1) ORDER BY 1", &[&token_ids]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Markets not closed, for health.
pub async fn open_market_count<C: GenericClient>(db: &C) -> Result<i64, tokio_postgres::Error> {
    Ok(db.query_one("SELECT count(*) FROM markets WHERE closed IS NOT TRUE", &[]).await?.get(0))
}

/// The database's size on disk, bytes.
pub async fn database_bytes<C: GenericClient>(db: &C) -> Result<u64, tokio_postgres::Error> {
    let n: i64 = db.query_one("SELECT pg_database_size(current_database())", &[]).await?.get(0);
    Ok(n.max(0) as u64)
}

/// Where the catalog history sweep stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryProgress {
    pub next_cursor: Option<String>,
    pub pages: i64,
    pub markets: i64,
    pub finished: bool,
}

/// The history sweep's progress (a fresh one when it never ran).
pub async fn history_progress<C: GenericClient>(db: &C) -> Result<HistoryProgress, tokio_postgres::Error> {
    let row = db.query_opt("SELECT next_cursor, pages, markets, finished_at IS NOT NULL FROM catalog_history WHERE id = 1", &[]).await?;
    Ok(row.map_or_else(HistoryProgress::default, |r| HistoryProgress {
        next_cursor: r.get(0),
        pages: r.get(1),
        markets: r.get(2),
        finished: r.get(3),
    }))
}

/// Records one more page of the history sweep: the cursor of the next page (`None`: done).
pub async fn history_page_done<C: GenericClient>(db: &C, next_cursor: Option<&str>, markets: i64) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO catalog_history (id, next_cursor, pages, markets, finished_at) VALUES (1, $1, 1, $2, CASE WHEN $1::text IS NULL THEN now() END)
         ON CONFLICT (id) DO UPDATE SET next_cursor = $1, pages = catalog_history.pages + 1,
            markets = catalog_history.markets + $2, updated_at = now(),
            finished_at = CASE WHEN $1::text IS NULL THEN now() END",
        &[&next_cursor, &markets],
    )
    .await?;
    Ok(())
}

/// Forgets a stored cursor upstream no longer accepts: the sweep starts over (idempotent).
pub async fn history_restart<C: GenericClient>(db: &C) -> Result<(), tokio_postgres::Error> {
    db.execute("UPDATE catalog_history SET next_cursor = NULL, pages = 0, markets = 0, started_at = now() WHERE id = 1", &[]).await?;
    Ok(())
}

/// What the stream's lifecycle events change in the catalog: `new_market` registers the
/// market and its tokens (so the stream and the books poller see them before the next catalog
/// pass); `market_resolved` closes and resolves the market.
pub async fn apply_stream_lifecycle<C: GenericClient>(db: &C, events: &[&Lifecycle]) -> Result<(), tokio_postgres::Error> {
    for e in events {
        let Some(cond) = &e.condition_id else { continue };
        match e.kind {
            LifecycleKind::NewMarket => {
                let Some(id) = &e.market_id else { continue };
                let question = crate::polymarket::decode::string(&e.payload, "question");
                let slug = crate::polymarket::decode::string(&e.payload, "slug");
                db.execute(
                    "INSERT INTO markets (id, condition_id, question, slug, active, closed) VALUES ($1, $2, $3, $4, true, false)
                     ON CONFLICT (id) DO NOTHING",
                    &[id, cond, &question, &slug],
                )
                .await?;
                let outcomes = crate::polymarket::decode::string_array(&e.payload, "outcomes").ok().flatten().unwrap_or_default();
                for (i, token) in e.assets.iter().enumerate() {
                    db.execute(
                        "INSERT INTO tokens (token_id, condition_id, market_id, outcome, outcome_index) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (token_id) DO NOTHING",
                        &[token, cond, id, &outcomes.get(i), &(i as i32)],
                    )
                    .await?;
                }
            }
            LifecycleKind::MarketResolved => {
                db.execute(
                    "UPDATE markets SET resolved = true, closed = true,
                        winning_outcome_index = COALESCE((SELECT outcome_index FROM tokens WHERE token_id = $2), winning_outcome_index)
                     WHERE condition_id = $1",
                    &[cond, &e.winning_asset_id],
                )
                .await?;
            }
        }
    }
    Ok(())
}
