//! V1: the catalog (events, markets, tokens) and polled order-book snapshots.
//!
//! Written with barrel; raw SQL is injected where barrel has no builder (TIMESTAMPTZ, NUMERIC,
//! JSONB, composite keys, CHECK constraints). Never edit a released migration: the binary
//! refuses to start when an applied migration's checksum changes. Add a new file instead.

use barrel::backend::Pg;
use barrel::{Migration, types};

pub fn migration() -> String {
    let ts = || types::custom("TIMESTAMPTZ").nullable(true);
    let seen = || types::custom("TIMESTAMPTZ DEFAULT now()");
    let num = || types::custom("NUMERIC").nullable(true);
    let text = || types::text().nullable(true);
    let flag = || types::boolean().nullable(true);

    let mut m = Migration::new();
    m.create_table("events", move |t| {
        t.add_column("id", types::text().primary(true));
        t.add_column("ticker", text());
        t.add_column("slug", text());
        t.add_column("title", text());
        t.add_column("active", flag());
        t.add_column("closed", flag());
        t.add_column("archived", flag());
        t.add_column("neg_risk", flag());
        t.add_column("start_date", ts());
        t.add_column("end_date", ts());
        t.add_column("created_at", ts());
        t.add_column("updated_at", ts());
        t.add_column("closed_time", ts());
        t.add_column("volume", num());
        t.add_column("liquidity", num());
        t.add_column("open_interest", num());
        t.add_column("raw", types::custom("JSONB").nullable(true));
        t.add_column("first_seen_at", seen());
        t.add_column("last_seen_at", seen());
        t.add_index("events_slug", types::index(vec!["slug"]));
    });
    m.create_table("markets", move |t| {
        t.add_column("id", types::text().primary(true));
        t.add_column("condition_id", text());
        t.add_column("event_id", text());
        t.add_column("question", text());
        t.add_column("slug", text());
        t.add_column("version", text());
        t.add_column("active", flag());
        t.add_column("closed", flag());
        t.add_column("archived", flag());
        t.add_column("accepting_orders", flag());
        t.add_column("enable_order_book", flag());
        t.add_column("neg_risk", flag());
        t.add_column("start_date", ts());
        t.add_column("end_date", ts());
        t.add_column("created_at", ts());
        t.add_column("updated_at", ts());
        t.add_column("closed_time", ts());
        t.add_column("volume", num());
        t.add_column("liquidity", num());
        t.add_column("tick_size", num());
        t.add_column("min_order_size", num());
        t.add_column("uma_resolution_status", text());
        t.add_column("outcome_prices", types::custom("NUMERIC[]").nullable(true));
        t.add_column("resolved", types::boolean().default(false));
        t.add_column("winning_outcome_index", types::integer().nullable(true));
        t.add_column("raw", types::custom("JSONB").nullable(true));
        t.add_column("first_seen_at", seen());
        t.add_column("last_seen_at", seen());
        t.add_index("markets_condition_id", types::index(vec!["condition_id"]));
        t.add_index("markets_event_id", types::index(vec!["event_id"]));
        t.add_index("markets_slug", types::index(vec!["slug"]));
    });
    m.create_table("tokens", |t| {
        t.add_column("token_id", types::text().primary(true));
        t.add_column("condition_id", types::text());
        t.add_column("market_id", types::text());
        t.add_column("outcome", types::text().nullable(true));
        t.add_column("outcome_index", types::integer());
        t.add_column("first_seen_at", types::custom("TIMESTAMPTZ DEFAULT now()"));
        t.add_index("tokens_condition_id", types::index(vec!["condition_id"]));
        t.add_index("tokens_market_id", types::index(vec!["market_id"]));
    });
    m.create_table("book_snapshots", |t| {
        t.add_column("token_id", types::text());
        t.add_column("source_ts", types::custom("TIMESTAMPTZ"));
        t.add_column("hash", types::text());
        t.add_column("received_at", types::custom("TIMESTAMPTZ"));
        t.add_column("source", types::text());
        t.add_column("condition_id", types::text().nullable(true));
        t.add_column("best_bid", types::custom("NUMERIC").nullable(true));
        t.add_column("best_ask", types::custom("NUMERIC").nullable(true));
        t.add_column("bids", types::custom("JSONB"));
        t.add_column("asks", types::custom("JSONB"));
        t.add_column("tick_size", types::custom("NUMERIC").nullable(true));
        t.add_column("min_order_size", types::custom("NUMERIC").nullable(true));
        t.add_column("last_trade_price", types::custom("NUMERIC").nullable(true));
        t.add_column("neg_risk", types::boolean().nullable(true));
        t.set_primary_key(&["token_id", "source_ts", "hash"]);
        t.add_index("book_snapshots_received_at", types::index(vec!["received_at"]));
    });
    let mut sql = m.make::<Pg>();
    sql.push_str(
        "\nALTER TABLE book_snapshots ADD CONSTRAINT book_snapshots_source_check \
         CHECK (source IN ('rest', 'ws'));\n\
         CREATE INDEX markets_open ON markets (id) WHERE closed IS NOT TRUE;\n",
    );
    sql
}
