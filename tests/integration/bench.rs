//! Benchmarks (ignored by default; run them with the command in BENCHMARKS.md). They print
//! medians; nothing here asserts a speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::collectors::Collector;
use collector::collectors::books::BooksCollector;
use collector::collectors::catalog::{CatalogCtx, CatalogState, FullSweep};
use collector::polymarket::client::PolymarketClient;
use futures_util::SinkExt;

use crate::fake::{self, Fake};
use crate::{config_for, pg};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

const MARKETS: u64 = 10_000;
const RUNS: usize = 3;

async fn big_fake() -> Fake {
    let fake = Fake::start().await;
    fake.with(|s| s.events = (0..MARKETS / 2).map(|e| fake::event(e, 2)).collect());
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_catalog_sweep_10k_markets() {
    let fake = big_fake().await;
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let db = pg::fresh_db().await;
        let cfg = config_for(&db, &fake.url());
        let ctx = CatalogCtx {
            client: Arc::new(PolymarketClient::new(&cfg.upstream).unwrap()),
            pool: db.pool().await,
            cfg: cfg.catalog,
            state: Arc::new(CatalogState::default()),
        };
        let mut sweep = FullSweep(ctx);
        let t = Instant::now();
        assert_eq!(sweep.collect_once().await.unwrap(), MARKETS);
        first.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(sweep.collect_once().await.unwrap(), MARKETS);
        again.push(t.elapsed());
    }
    let (f, a) = (median(first), median(again));
    println!("BENCH catalog sweep, {MARKETS} markets in {} events, 100 events/page:", MARKETS / 2);
    println!("BENCH   empty database : median {:.2} s ({:.0} markets/s)", f.as_secs_f64(), MARKETS as f64 / f.as_secs_f64());
    println!("BENCH   re-sweep (upd) : median {:.2} s ({:.0} markets/s)", a.as_secs_f64(), MARKETS as f64 / a.as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_books_rows_per_second() {
    let fake = big_fake().await;
    let tokens = (MARKETS * 2) as f64;
    let (mut collector_runs, mut copy_runs) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let db = pg::fresh_db().await;
        let cfg = config_for(&db, &fake.url());
        let client = Arc::new(PolymarketClient::new(&cfg.upstream).unwrap());
        let pool = db.pool().await;
        let ctx = CatalogCtx { client: client.clone(), pool: pool.clone(), cfg: cfg.catalog.clone(), state: Arc::new(CatalogState::default()) };
        FullSweep(ctx).collect_once().await.unwrap();
        fake::books_for_all(&fake, 1_795_683_663_127 + run as u64);
        let mut books = BooksCollector::new(client, pool, cfg.books.clone());
        let t = Instant::now();
        assert_eq!(books.collect_once().await.unwrap() as f64, tokens);
        collector_runs.push(t.elapsed());

        // Baseline: the same rows with a plain text COPY into a table of the same shape.
        let c = db.client().await;
        c.batch_execute("CREATE TABLE copy_baseline (LIKE book_snapshots INCLUDING ALL)").await.unwrap();
        let rows: Vec<(String, String, String, String)> = c
            .query("SELECT token_id, source_ts::text, hash, received_at::text FROM book_snapshots", &[])
            .await.unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
        let levels_b = r#"[["0.34", "2210.17"], ["0.33", "980"], ["0.31", "420.5"], ["0.2", "1500"], ["0.01", "125000"]]"#;
        let levels_a = r#"[["0.35", "1874.9"], ["0.36", "640.4"], ["0.38", "1250"], ["0.5", "300"], ["0.99", "118000"]]"#;
        let mut text = String::new();
        for (tok, ts, h, rcv) in &rows {
            text.push_str(&format!("{tok}\t{ts}\t{h}\t{rcv}\trest\t0x1\t0.34\t0.35\t{levels_b}\t{levels_a}\t0.01\t5\t0.350\tf\n"));
        }
        let t = Instant::now();
        let sink = c.copy_in("COPY copy_baseline (token_id, source_ts, hash, received_at, source, condition_id, best_bid, best_ask, bids, asks, tick_size, min_order_size, last_trade_price, neg_risk) FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(text)).await.unwrap();
        sink.finish().await.unwrap();
        copy_runs.push(t.elapsed());
    }
    let (c, p) = (median(collector_runs), median(copy_runs));
    println!("BENCH books: {tokens} tokens, POST /books batches of 100 from the fake, decode, store:");
    println!("BENCH   collector (fetch+decode+insert): median {:.2} s = {:.0} rows/s", c.as_secs_f64(), tokens / c.as_secs_f64());
    println!("BENCH   plain COPY of the same rows    : median {:.2} s = {:.0} rows/s", p.as_secs_f64(), tokens / p.as_secs_f64());
    println!("BENCH   ratio collector/COPY           : {:.2}", p.as_secs_f64() / c.as_secs_f64());
}
