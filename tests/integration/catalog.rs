use std::sync::Arc;

use collector::collectors::CollectError;
use collector::collectors::Collector;
use collector::collectors::catalog::{CatalogCtx, CatalogState, FullSweep, NewMarkets, Resolutions};
use collector::polymarket::client::PolymarketClient;
use serde_json::json;

use crate::fake::{self, Fake};
use crate::{config_for, pg};

async fn ctx(db: &pg::TestDb, fake: &Fake) -> CatalogCtx {
    let cfg = config_for(db, &fake.url());
    CatalogCtx {
        client: Arc::new(PolymarketClient::new(&cfg.upstream).unwrap()),
        pool: db.pool().await,
        cfg: cfg.catalog,
        state: Arc::new(CatalogState::default()),
    }
}

/// 30 events × 2 markets, paged 7 at a time, plus the captured live market and odd ones.
async fn populated_fake() -> Fake {
    let fake = Fake::start().await;
    fake.with(|s| {
        s.events = (0..30).map(|e| fake::event(e, 2)).collect();
        let mut live_event = fake::event(1000, 0);
        let live = fake::fixture("captured/gamma_market_live.json");
        let no_condition = json!({"id": "900001", "conditionId": "", "question": "broken",
            "clobTokenIds": "[\"1\", \"2\"]", "outcomes": "[\"Yes\", \"No\"]", "closed": false});
        let three = json!({"id": "900002", "conditionId": format!("0x{:064x}", 77),
            "question": "three-way", "clobTokenIds": "[\"31\", \"32\", \"33\"]",
            "outcomes": "[\"A\", \"B\", \"C\"]", "closed": false, "active": true});
        let no_tokens = json!({"id": "900003", "conditionId": format!("0x{:064x}", 78),
            "clobTokenIds": "[]", "closed": false});
        let no_id = json!({"question": "nameless"});
        live_event["markets"] = json!([live, no_condition, three, no_tokens, no_id]);
        s.events.push(live_event);
    });
    fake
}

#[tokio::test]
async fn full_sweep_stores_exactly_the_fakes_catalog() {
    let db = pg::fresh_db().await;
    let fake = populated_fake().await;
    let mut c = ctx(&db, &fake).await;
    c.cfg.page_size = 7;
    let mut sweep = FullSweep(c.clone());
    let stored = sweep.collect_once().await.unwrap();

    // 60 generated + live + no-condition + three-way + no-tokens; the id-less one is skipped.
    assert_eq!(stored, 64);
    assert_eq!(db.count("SELECT count(*) FROM markets").await, 64);
    assert_eq!(db.count("SELECT count(*) FROM events").await, 31);
    // 2 per generated market, 2 for the live one, 3 for the three-way market.
    assert_eq!(db.count("SELECT count(*) FROM tokens").await, 60 * 2 + 2 + 3);
    assert_eq!(c.state.oddities.load(std::sync::atomic::Ordering::Relaxed), 3);
    // Pages followed with after_cursor: 31 events / 7 per page = 5 pages.
    assert_eq!(fake.hits("events/keyset"), 5);
    let queries = fake.with(|s| s.queries["events/keyset"].clone());
    assert!(queries[1].contains("after_cursor=ks1.7") && queries[1].contains("closed=false"), "{queries:?}");

    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT volume::text, liquidity::text, tick_size::text, outcome_prices::text, event_id, condition_id
             FROM markets WHERE id = '612408'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "18814545.294374414");
    assert_eq!(row.get::<_, String>(1), "190438.22824");
    assert_eq!(row.get::<_, String>(2), "0.001");
    assert_eq!(row.get::<_, String>(3), "{0.1875,0.8125}");
    assert_eq!(row.get::<_, String>(4), "91000");
    assert_eq!(row.get::<_, String>(5), "0x5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f");
    let v: String = client.query_one("SELECT volume::text FROM markets WHERE id = '700005'", &[]).await.unwrap().get(0);
    assert_eq!(v, "5.000000000000000001", "a decimal that f64 cannot hold");
    let t = client
        .query_one(
            "SELECT outcome, outcome_index, market_id FROM tokens
             WHERE token_id = '19847702268351190846628314559907462311105599873240021946674358801126630044472'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((t.get::<_, String>(0), t.get::<_, i32>(1), t.get::<_, String>(2)), ("No".into(), 1, "612408".into()));
    let broken: Option<String> = client.query_one("SELECT condition_id FROM markets WHERE id = '900001'", &[]).await.unwrap().get(0);
    assert_eq!(broken, None, "an empty condition id is stored as NULL, without tokens");
    // Every stored token has its stream dictionary key and, through it, its market.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM tokens k JOIN stream_tokens s ON s.token_id = k.token_id
                  JOIN stream_conditions c ON c.condition_key = s.condition_key AND c.condition_id = k.condition_id"
        )
        .await,
        60 * 2 + 2 + 3
    );
}

#[tokio::test]
async fn rerunning_the_sweep_stores_no_duplicates() {
    let db = pg::fresh_db().await;
    let fake = populated_fake().await;
    let mut sweep = FullSweep(ctx(&db, &fake).await);
    sweep.collect_once().await.unwrap();
    let before = (
        db.count("SELECT count(*) FROM markets").await,
        db.count("SELECT count(*) FROM tokens").await,
        db.count("SELECT count(*) FROM events").await,
    );
    fake.update_market("700003", |m| m["volume"] = json!("42.5"));
    sweep.collect_once().await.unwrap();
    let after = (
        db.count("SELECT count(*) FROM markets").await,
        db.count("SELECT count(*) FROM tokens").await,
        db.count("SELECT count(*) FROM events").await,
    );
    assert_eq!(before, after);
    let v: String = db.client().await.query_one("SELECT volume::text FROM markets WHERE id = '700003'", &[]).await.unwrap().get(0);
    assert_eq!(v, "42.5", "the second sweep updated the market in place");
}

/// The dictionaries' 32-bit key sequences: (tokens, conditions) values handed out so far.
pub async fn key_sequences(db: &pg::TestDb) -> (i64, i64) {
    let c = db.client().await;
    let row = c
        .query_one(
            "SELECT (SELECT COALESCE(last_value, 0) FROM pg_sequences WHERE sequencename = 'stream_tokens_token_key_seq'),
                    (SELECT COALESCE(last_value, 0) FROM pg_sequences WHERE sequencename = 'stream_conditions_condition_key_seq')",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// An unchanged catalog swept again and again spends no dictionary key (each proposed row of
/// an `INSERT … ON CONFLICT` takes one: 30 sweeps of 607 tokens once spent ~20,000); a new
/// market spends exactly its own; a writer with a cold cache meeting known tokens spends none.
#[tokio::test]
async fn sweeping_an_unchanged_catalog_spends_no_dictionary_keys() {
    let db = pg::fresh_db().await;
    let fake = populated_fake().await;
    let mut c = ctx(&db, &fake).await;
    c.cfg.page_size = 7;
    let mut sweep = FullSweep(c.clone());
    sweep.collect_once().await.unwrap();
    let first = key_sequences(&db).await;
    let dictionary = (db.count("SELECT count(*) FROM stream_tokens").await, db.count("SELECT count(*) FROM stream_conditions").await);
    assert_eq!(first, dictionary, "the keys are compact: 1..n");
    for _ in 0..30 {
        sweep.collect_once().await.unwrap();
    }
    assert_eq!(key_sequences(&db).await, first, "30 more sweeps of the same catalog spent no key");

    fake.with(|s| s.events.push(fake::event(500, 1)));
    sweep.collect_once().await.unwrap();
    assert_eq!(key_sequences(&db).await, (first.0 + 2, first.1 + 1), "a new market spends its two tokens' keys and its own");

    // The stream's writer, with a cold cache (a new process), meets known tokens: no key spent.
    let pool = db.pool().await;
    use collector::db::stream::{Keys, Origin, Row, TradeSource, write_batch};
    let rows: Vec<Row> = (0..20u64)
        .map(|m| Row::Trade {
            trade: collector::polymarket::ws::Trade {
                asset_id: fake::token_id(m, 0),
                condition_id: Some(format!("0x{:064x}", m + 1)),
                price: "0.5".parse().unwrap(),
                size: "10".parse().unwrap(),
                side: collector::polymarket::decode::Side::Buy,
                fee_rate_bps: None,
                source_ts: chrono::Utc::now(),
                tx_hash: None,
            },
            received_at: chrono::Utc::now(),
            source: TradeSource::Ws,
        })
        .collect();
    for _ in 0..5 {
        let keys = Keys::default();
        write_batch(&pool, &keys, &rows, Origin::Live).await.unwrap();
    }
    assert_eq!(key_sequences(&db).await, (first.0 + 2, first.1 + 1), "known tokens took no key");
}

#[tokio::test]
async fn a_cursor_that_repeats_aborts_the_sweep() {
    let db = pg::fresh_db().await;
    let fake = populated_fake().await;
    let mut c = ctx(&db, &fake).await;
    c.cfg.page_size = 10;
    // Simulate upstream ignoring our cursor: every page answers with the same next_cursor.
    // The fake honours after_cursor, so point the client at a route that ignores it instead.
    let stuck = Fake::start().await;
    let events = fake.with(|s| s.events.clone());
    stuck.with(|s| s.events = events);
    let app_url = stuck_url(&stuck).await;
    let cfg = crate::config_for(&db, &app_url);
    c.client = Arc::new(PolymarketClient::new(&cfg.upstream).unwrap());
    let err = FullSweep(c).collect_once().await.unwrap_err();
    assert!(matches!(err, CollectError::CursorRepeated(_)), "{err}");
}

/// A proxy in front of `fake` that renames `after_cursor` to `cursor`, which upstream ignores.
async fn stuck_url(fake: &Fake) -> String {
    use axum::extract::{Query, State};
    let target = fake.url();
    let app = axum::Router::new()
        .route(
            "/events/keyset",
            axum::routing::get(|State(t): State<String>, Query(p): Query<Vec<(String, String)>>| async move {
                let q: Vec<String> =
                    p.iter().map(|(k, v)| format!("{}={v}", if k == "after_cursor" { "cursor" } else { k.as_str() })).collect();
                let body = reqwest::get(format!("{t}/events/keyset?{}", q.join("&"))).await.unwrap().text().await.unwrap();
                ([("content-type", "application/json")], body)
            }),
        )
        .with_state(target);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn new_markets_pass_picks_up_listings_and_stops_at_known_ones() {
    let db = pg::fresh_db().await;
    let fake = populated_fake().await;
    let c = ctx(&db, &fake).await;
    FullSweep(c.clone()).collect_once().await.unwrap();
    fake.with(|s| {
        let mut m = fake::market(5000);
        m["createdAt"] = json!("2026-11-28T00:00:00Z");
        s.events[0]["markets"].as_array_mut().unwrap().push(m);
    });
    let before = fake.hits("markets/keyset");
    let stored = NewMarkets(c.clone()).collect_once().await.unwrap();
    assert_eq!(stored, 1);
    assert_eq!(fake.hits("markets/keyset") - before, 1, "one page: the rest were known");
    let row = db.client().await.query_one("SELECT event_id FROM markets WHERE id = '705000'", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "90000");
    assert_eq!(db.count("SELECT count(*) FROM tokens WHERE market_id = '705000'").await, 2);
}

#[tokio::test]
async fn resolutions_pass_captures_a_closed_and_resolved_market() {
    let db = pg::fresh_db().await;
    let fake = populated_fake().await;
    let c = ctx(&db, &fake).await;
    FullSweep(c.clone()).collect_once().await.unwrap();
    // Event 90002 closes: market 700004 resolves to "No", 700005 closes awaiting resolution.
    // Both leave the open list the full sweep reads.
    fake.with(|s| s.events[2]["closed"] = json!(true));
    let closed_time = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S+00").to_string();
    for id in ["700004", "700005"] {
        fake.update_market(id, |m| {
            m["closed"] = json!(true);
            m["closedTime"] = json!(closed_time.clone());
        });
    }
    fake.update_market("700004", |m| {
        m["outcomePrices"] = json!("[\"0\", \"1\"]");
        m["umaResolutionStatus"] = json!("resolved");
    });
    fake.update_market("700005", |m| m["umaResolutionStatus"] = json!("proposed"));
    FullSweep(c.clone()).collect_once().await.unwrap();
    let stored = Resolutions(c.clone()).collect_once().await.unwrap();
    assert_eq!(stored, 2);
    let row = db
        .client()
        .await
        .query_one("SELECT closed, resolved, winning_outcome_index, closed_time IS NOT NULL FROM markets WHERE id = '700004'", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1), row.get::<_, i32>(2), row.get::<_, bool>(3)), (true, true, 1, true));
    let row = db.client().await.query_one("SELECT closed, resolved FROM markets WHERE id = '700005'", &[]).await.unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (true, false));
    let queries = fake.with(|s| s.queries["markets/keyset"].clone());
    let last = queries.last().unwrap();
    assert!(last.contains("id=700004") && last.contains("id=700005") && last.contains("closed=true"), "{queries:?}");
    // The resolved market is not asked for again; the unresolved one is, until it resolves.
    assert_eq!(Resolutions(c).collect_once().await.unwrap(), 1);
    let queries = fake.with(|s| s.queries["markets/keyset"].clone());
    let last = queries.last().unwrap();
    assert!(last.contains("id=700005") && !last.contains("id=700004"), "{last}");
}

/// The example queries of docs/schema.md run against a real catalog, and the first one finds
/// the fixture event's markets.
#[tokio::test]
async fn schema_doc_example_queries_run() {
    let db = pg::fresh_db().await;
    let fake = Fake::start().await;
    let mut ev = fake::fixture("gamma_event.json");
    for m in ev["markets"].as_array_mut().unwrap() {
        m["closed"] = json!(false);
    }
    fake.with(|s| s.events = vec![ev]);
    FullSweep(ctx(&db, &fake).await).collect_once().await.unwrap();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema.md")).unwrap();
    let queries: Vec<&str> = doc.split("```sql").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert!(queries.len() >= 5, "found {} queries", queries.len());
    let client = db.client().await;
    for q in &queries {
        client.query(*q, &[]).await.unwrap_or_else(|e| panic!("{e:?} in:\n{q}"));
    }
    assert_eq!(client.query(queries[0], &[]).await.unwrap().len(), 4, "2 markets × 2 outcomes");
}

/// The history sweep stores every closed event once — markets with how they resolved, and
/// their tokens — a page per pass here, resuming from the stored cursor after a restart.
#[tokio::test]
async fn the_history_sweep_stores_closed_markets_once_and_resumes_after_a_restart() {
    use collector::collectors::catalog::History;
    let db = pg::fresh_db().await;
    let fake = Fake::start().await;
    fake.with(|s| {
        s.events = (0..4).map(|e| fake::event(e, 2)).collect();
        for e in 100..112 {
            let mut ev = fake::event(e, 2);
            ev["closed"] = json!(true);
            for m in ev["markets"].as_array_mut().unwrap() {
                m["closed"] = json!(true);
                m["active"] = json!(false);
                m["outcomePrices"] = json!("[\"0\", \"1\"]");
                m["closedTime"] = json!("2025-03-01 12:00:00+00");
            }
            s.events.push(ev);
        }
    });
    let mut c = ctx(&db, &fake).await;
    c.cfg.page_size = 5;
    c.cfg.history_pages_per_pass = 1;
    assert_eq!(History(c.clone()).collect_once().await.unwrap(), 10, "one page: 5 events × 2 markets");
    // A restart: a new collector (and context) resumes from the stored cursor.
    let mut c2 = ctx(&db, &fake).await;
    c2.cfg.page_size = 5;
    c2.cfg.history_pages_per_pass = 1;
    let mut h = History(c2);
    let mut total = 10;
    for _ in 0..10 {
        total += h.collect_once().await.unwrap();
    }
    assert_eq!(total, 24, "12 closed events × 2 markets, each once");
    let queries = fake.with(|s| s.queries["events/keyset"].clone());
    assert!(queries.iter().all(|q| q.contains("closed=true")), "{queries:?}");
    assert!(queries[1].contains("after_cursor=ks1.5"), "the restart resumed: {queries:?}");
    assert_eq!(queries.len(), 3, "three pages, none twice, then nothing: {queries:?}");
    assert_eq!(db.count("SELECT count(*) FROM markets WHERE closed AND winning_outcome_index = 1").await, 24);
    assert_eq!(db.count("SELECT count(*) FROM tokens t JOIN markets m ON m.id = t.market_id WHERE m.closed").await, 48);
    assert_eq!(db.count("SELECT count(*) FROM markets WHERE NOT closed").await, 0, "open markets are the other passes' job");
    assert_eq!(db.count("SELECT count(*) FROM catalog_history WHERE finished_at IS NOT NULL AND markets = 24").await, 1);
}
