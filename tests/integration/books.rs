use std::sync::Arc;

use collector::collectors::Collector;
use collector::collectors::books::BooksCollector;
use collector::collectors::catalog::{CatalogCtx, CatalogState, FullSweep};
use collector::polymarket::client::PolymarketClient;
use serde_json::json;

use crate::fake::{self, Fake};
use crate::{config_for, pg};

/// A database holding the catalog of `markets` fake markets, and a books collector.
async fn setup(markets: u64) -> (pg::TestDb, Fake, BooksCollector) {
    let db = pg::fresh_db().await;
    let fake = Fake::start().await;
    fake.with(|s| s.events = (0..markets).map(|e| fake::event(e, 1)).collect());
    let cfg = config_for(&db, &fake.url());
    let client = Arc::new(PolymarketClient::new(&cfg.upstream).unwrap());
    let pool = db.pool().await;
    let ctx = CatalogCtx { client: client.clone(), pool: pool.clone(), cfg: cfg.catalog.clone(), state: Arc::new(CatalogState::default()) };
    FullSweep(ctx).collect_once().await.unwrap();
    let mut books_cfg = cfg.books.clone();
    books_cfg.batch_size = 7;
    (db, fake, BooksCollector::new(client, pool, books_cfg))
}

#[tokio::test]
async fn books_are_stored_once_per_token_timestamp_and_hash() {
    let (db, fake, mut books) = setup(10).await;
    fake::books_for_all(&fake, 1_795_683_663_127);
    assert_eq!(books.collect_once().await.unwrap(), 20);
    // 20 tokens in batches of 7.
    assert_eq!(fake.hits("books"), 3);

    // Unchanged books: nothing new, whether skipped in memory or by the key.
    assert_eq!(books.collect_once().await.unwrap(), 0);
    let cfg = config_for(&db, &fake.url());
    let client = Arc::new(PolymarketClient::new(&cfg.upstream).unwrap());
    let mut restarted = BooksCollector::new(client, db.pool().await, cfg.books);
    assert_eq!(restarted.collect_once().await.unwrap(), 0, "a restarted collector stores no duplicates");

    // One book moves: one new row.
    let token = fake::token_id(3, 1);
    fake.with(|s| {
        s.books.insert(token.clone(), fake::book(&token, 1_795_683_664_000, "ffffffffffffffffffffffffffffffffffffffff"));
    });
    assert_eq!(books.collect_once().await.unwrap(), 1);
    assert_eq!(db.count("SELECT count(*) FROM book_snapshots").await, 21);

    let row = db
        .client()
        .await
        .query_one(
            "SELECT best_bid::text, best_ask::text, bids::text, asks->-1->>1, source, last_trade_price::text,
                    (extract(epoch from source_ts) * 1000)::bigint, condition_id
             FROM book_snapshots WHERE token_id = $1 ORDER BY source_ts DESC LIMIT 1",
            &[&token],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "0.34", "best bid is the highest, wherever it stood");
    assert_eq!(row.get::<_, String>(1), "0.35", "best ask is the lowest, wherever it stood");
    assert_eq!(
        row.get::<_, String>(2),
        r#"[["0.34", "1980.42"], ["0.32", "760"], ["0.3", "505.25"], ["0.25", "1320"], ["0.02", "90000"]]"#,
        "full depth, best first, text exactly as sent"
    );
    assert_eq!(row.get::<_, String>(3), "118000");
    assert_eq!(row.get::<_, String>(4), "rest");
    assert_eq!(row.get::<_, String>(5), "0.350");
    assert_eq!(row.get::<_, i64>(6), 1_795_683_664_000);
}

#[tokio::test]
async fn a_rejected_batch_is_split_and_the_good_tokens_still_stored() {
    let (db, fake, mut books) = setup(5).await;
    fake::books_for_all(&fake, 1_795_683_663_127);
    // A malformed token id in the catalog makes upstream reject any batch holding it.
    db.client()
        .await
        .execute(
            "INSERT INTO tokens (token_id, condition_id, market_id, outcome, outcome_index)
                  VALUES ('not-a-token', '0x1', '700000', 'Maybe', 2)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(books.collect_once().await.unwrap(), 10);
    assert!(fake.hits("books") > 2, "the failing batch was split");
}

#[tokio::test]
async fn an_undecodable_book_is_counted_and_the_rest_stored() {
    let (db, fake, mut books) = setup(3).await;
    fake::books_for_all(&fake, 1_795_683_663_127);
    let bad = fake::token_id(1, 0);
    fake.with(|s| {
        let b = s.books.get_mut(&bad).unwrap();
        b["bids"] = json!([{"price": "zero point five", "size": "1"}]);
    });
    assert_eq!(books.collect_once().await.unwrap(), 5);
    assert_eq!(books.bad_books.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(db.count("SELECT count(*) FROM book_snapshots").await, 5);
}

#[tokio::test]
async fn closed_markets_are_not_polled() {
    let (db, fake, mut books) = setup(4).await;
    fake::books_for_all(&fake, 1_795_683_663_127);
    db.client().await.execute("UPDATE markets SET closed = true WHERE id = '700002'", &[]).await.unwrap();
    assert_eq!(books.collect_once().await.unwrap(), 6);
    let polled = db.count(&format!("SELECT count(*) FROM book_snapshots WHERE token_id = '{}'", fake::token_id(2, 0))).await;
    assert_eq!(polled, 0);
}
