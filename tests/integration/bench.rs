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

/// Waits until the collector has committed `rows` rows since `before` (its `rows_written`),
/// looking every millisecond: the timed benchmarks end when the rows are in, not up to a
/// 50 ms poll later (`crate::eventually`'s step, 5 % of a one-second burst).
async fn committed(stats: &collector::collectors::stream::sink::WriteStats, before: u64, rows: u64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while stats.rows_written.load(Ordering::Relaxed) - before < rows {
        assert!(Instant::now() < deadline, "timed out waiting for {rows} rows committed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The machine's CPU ticks so far: (busy, all), from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: Vec<u64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|t| t.parse().unwrap()).collect();
    let all: u64 = ticks.iter().take(8).sum();
    // idle and iowait
    (all - ticks[3] - ticks[4], all)
}

/// The share of the machine's CPU time that was busy between two [`machine_ticks`].
fn busy_between(a: (u64, u64), b: (u64, u64)) -> f64 {
    (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64
}

pub fn median(mut v: Vec<Duration>) -> Duration {
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
        let ctx =
            CatalogCtx { client: client.clone(), pool: pool.clone(), cfg: cfg.catalog.clone(), state: Arc::new(CatalogState::default()) };
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
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
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

// ---- the stream (issue 3) ------------------------------------------------------------------

use crate::fake_ws::trade_frame;
use crate::stream::Harness;
use std::sync::atomic::Ordering;

/// `n` trades as frames of `per_frame` events (JSON arrays), spread over `assets`.
fn trade_frames(assets: &[String], n: u64, per_frame: u64, t0: u64) -> Vec<(String, String)> {
    (0..n / per_frame)
        .map(|f| {
            let asset = &assets[(f as usize) % assets.len()];
            let events: Vec<String> = (0..per_frame).map(|i| trade_frame(asset, f * per_frame + i, t0 + f)).collect();
            (asset.clone(), format!("[{}]", events.join(",")))
        })
        .collect()
}

/// Extra `[stream]` keys for the stream benchmarks, from `BENCH_STREAM_EXTRA` (`;` between keys).
fn bench_extra() -> String {
    std::env::var("BENCH_STREAM_EXTRA").unwrap_or_default().replace(";", "\n")
}

async fn stream_harness(markets: u64, extra: &str) -> Harness {
    elected_harness(markets, extra, false).await
}

/// [`stream_harness`], with the leader election when `election` (the stream then writes its
/// level changes as its slice's fenced writer, once the takeover is done).
async fn elected_harness(markets: u64, extra: &str, election: bool) -> Harness {
    let db = pg::fresh_db().await;
    let section = format!("[stream]\nmax_assets_per_connection = 50\nconnect_interval_ms = 10\n{extra}");
    let h = Harness::start_elected(db, markets, &section, election).await;
    if election {
        crate::eventually(60, "the slice taken", || async {
            h.sink.gate.role() == "writer" && h.sink.gate.stats.takeovers.load(Ordering::Relaxed) >= 1
        })
        .await;
    }
    let want = (markets * 2) as usize;
    crate::eventually(60, "all assets subscribed and dumped", || async {
        h.ws.live_assets().len() == want
            && h.db.try_count("SELECT count(*) FROM book_snapshots WHERE source = 'ws'").await == Some(want as i64)
    })
    .await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_stream_throughput_vs_copy() {
    const EVENTS: u64 = 300_000;
    let (mut ours, mut copy) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        // A queue that holds the whole burst: this measures the pipeline, not the spool.
        let mut h = stream_harness(100, &format!("queue_capacity = 1000000\n{}", bench_extra())).await;
        let assets: Vec<String> = (0..100).map(|m| fake::token_id(m, 0)).collect();
        if let Ok(sql) = std::env::var("BENCH_STREAM_SQL") {
            h.db.client().await.batch_execute(&sql).await.unwrap();
        }
        let frames = trade_frames(&assets, EVENTS, 100, crate::now_ms());
        let before = h.sink.stats.trades_inserted.load(Ordering::Relaxed);
        let t = Instant::now();
        for (asset, frame) in &frames {
            assert!(h.ws.send_to_asset(asset, frame));
        }
        crate::eventually(300, "all trades committed", || async {
            h.sink.stats.trades_inserted.load(Ordering::Relaxed) - before == EVENTS
        })
        .await;
        ours.push(t.elapsed());
        assert_eq!(h.db.try_count("SELECT count(*) FROM trades").await, Some(EVENTS as i64));
        println!(
            "BENCH   run {run}: {:.2} s, spooled rows {}",
            t.elapsed().as_secs_f64(),
            h.sink.stats.spooled_rows.load(Ordering::Relaxed)
        );
        h.stop().await;

        // Baseline: the same rows, binary COPY straight into a table shaped (and indexed)
        // like `trades`.
        let rows =
            h.db.client()
                .await
                .query(
                    "SELECT asset_id, condition_id, price, size, side, source_ts, received_at, source, tx_hash, fee_rate_bps FROM trades",
                    &[],
                )
                .await
                .unwrap();
        let c = h.db.client().await;
        c.batch_execute("CREATE TABLE trades_baseline (LIKE trades INCLUDING ALL)").await.unwrap();
        type R = (
            String,
            Option<String>,
            rust_decimal::Decimal,
            rust_decimal::Decimal,
            String,
            chrono::DateTime<chrono::Utc>,
            chrono::DateTime<chrono::Utc>,
            String,
            Option<String>,
            Option<rust_decimal::Decimal>,
        );
        let rows: Vec<R> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7), r.get(8), r.get(9)))
            .collect();
        use tokio_postgres::types::Type;
        let types = [
            Type::TEXT,
            Type::TEXT,
            Type::NUMERIC,
            Type::NUMERIC,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TEXT,
            Type::NUMERIC,
        ];
        let t = Instant::now();
        let sink = c.copy_in("COPY trades_baseline (asset_id, condition_id, price, size, side, source_ts, received_at, source, tx_hash, fee_rate_bps) FROM STDIN (FORMAT binary)").await.unwrap();
        let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(sink, &types);
        futures_util::pin_mut!(writer);
        for r in &rows {
            writer.as_mut().write(&[&r.0, &r.1, &r.2, &r.3, &r.4, &r.5, &r.6, &r.7, &r.8, &r.9]).await.unwrap();
        }
        writer.finish().await.unwrap();
        copy.push(t.elapsed());
    }
    let (o, c) = (median(ours), median(copy));
    let (ro, rc) = (EVENTS as f64 / o.as_secs_f64(), EVENTS as f64 / c.as_secs_f64());
    println!("BENCH stream throughput: {EVENTS} trades in frames of 100 over 4 connections, socket → committed rows:");
    println!("BENCH   collector           : median {:.2} s = {:.0} events/s", o.as_secs_f64(), ro);
    println!("BENCH   plain binary COPY   : median {:.2} s = {:.0} rows/s (same rows, same indexes)", c.as_secs_f64(), rc);
    println!("BENCH   ratio collector/COPY: {:.2}", ro / rc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_stream_latency_at_10k_per_second() {
    let mut h = stream_harness(100, "").await;
    let assets: Vec<String> = (0..100).map(|m| fake::token_id(m, 0)).collect();
    // 10,000 events/s for 10 s: a frame of 50 events every 5 ms.
    let frames = trade_frames(&assets, 100_000, 50, crate::now_ms());
    h.sink.stats.commit_latency.reset();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t = Instant::now();
    for (asset, frame) in &frames {
        tick.tick().await;
        assert!(h.ws.send_to_asset(asset, frame));
    }
    let sent_in = t.elapsed();
    crate::eventually(60, "all committed", || async { h.db.try_count("SELECT count(*) FROM trades").await == Some(100_000) }).await;
    let l = &h.sink.stats.commit_latency;
    println!("BENCH stream latency, 100,000 trades at {:.0} events/s, frame received → row committed:", 100_000.0 / sent_in.as_secs_f64());
    println!("BENCH   p50 {} ms, p99 {} ms, max {} ms", l.quantile(0.5).unwrap(), l.quantile(0.99).unwrap(), l.quantile(1.0).unwrap());
    h.stop().await;
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds used so far by the database's processes (every pid `pg_stat_activity` lists:
/// client backends and the background processes), with each one's `backend_type`, from
/// `/proc/<pid>/stat` (utime + stime, in USER_HZ = 100 ticks per second on Linux).
pub async fn pg_cpu(db: &pg::TestDb) -> PgCpu {
    let c = db.client().await;
    let rows = c.query("SELECT pid, coalesce(backend_type, '') FROM pg_stat_activity", &[]).await.unwrap();
    rows.iter()
        .filter_map(|r| {
            let pid: i32 = r.get(0);
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some((pid, (r.get::<_, String>(1), ticks / 100.0)))
        })
        .collect()
}

pub type PgCpu = std::collections::HashMap<i32, (String, f64)>;

/// Diagnostic (BENCH_WAL_STATS=1): the WAL records between two LSNs by type.
async fn wal_stats(db: &pg::TestDb, from: &str, to: &str) {
    if std::env::var("BENCH_WAL_STATS").is_err() {
        return;
    }
    let c = db.client().await;
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect").await.unwrap();
    for r in c.query(&format!("SELECT \"resource_manager/record_type\", count, record_size::float8, fpi_size::float8 FROM pg_get_wal_stats('{from}', '{to}', true) ORDER BY count DESC LIMIT 12"), &[]).await.unwrap() {
        println!("BENCH WAL {:<40} {:>10} records {:>14.0} bytes {:>10.0} fpi", r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, f64>(2), r.get::<_, f64>(3));
    }
}

/// Diagnostic (BENCH_STATEMENTS=1, with `COLLECTOR_TEST_PG_OPTIONS='-c
/// shared_preload_libraries=pg_stat_statements'`): the statements that took the most time
/// since the last call (printed if `print`), then reset.
async fn statement_stats(db: &pg::TestDb, print: bool) {
    if std::env::var("BENCH_STATEMENTS").is_err() {
        return;
    }
    let c = db.client().await;
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await.unwrap();
    for r in c
        .query(
            "SELECT total_exec_time, calls, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) FROM pg_stat_statements
                      ORDER BY total_exec_time DESC LIMIT 12",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|_| print)
    {
        println!(
            "BENCH SQL {:>9.0} ms {:>7} calls {:>9} rows  {}",
            r.get::<_, f64>(0),
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
            r.get::<_, String>(3)
        );
    }
    c.batch_execute("SELECT pg_stat_statements_reset()").await.unwrap();
}

async fn lsn(db: &pg::TestDb) -> String {
    db.client().await.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0)
}

/// WAL records and bytes written so far (`pg_stat_wal`), and transactions committed in the
/// database (`pg_stat_database`; the collector commits one per batch).
async fn wal(db: &pg::TestDb) -> (i64, f64, i64) {
    let c = db.client().await;
    let r = c
        .query_one(
            "SELECT pg_stat_force_next_flush(), wal_records, wal_bytes::float8, \
        (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) FROM pg_stat_wal",
            &[],
        )
        .await
        .unwrap();
    (r.get(1), r.get(2), r.get(3))
}

/// The database's CPU seconds between two [`pg_cpu`] readings, by `backend_type` (a process
/// started in between counts from zero).
fn pg_cpu_by_kind(before: &PgCpu, after: &PgCpu) -> std::collections::BTreeMap<String, f64> {
    let mut kinds = std::collections::BTreeMap::new();
    for (pid, (kind, t)) in after {
        *kinds.entry(kind.clone()).or_insert(0.0) += t - before.get(pid).map_or(0.0, |b| b.1);
    }
    kinds
}

/// "client backend 2.1, autovacuum worker 0.4, …" µs per row (the kinds that used any CPU).
fn per_row_by_kind(kinds: &std::collections::BTreeMap<String, f64>, rows: u64) -> String {
    kinds.iter().filter(|(_, s)| **s > 0.0).map(|(k, s)| format!("{k} {:.2}", s * 1e6 / rows as f64)).collect::<Vec<_>>().join(", ")
}

/// CPU seconds used so far by this process (the collector's tasks and the in-process fake).
pub fn self_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

/// The database's CPU seconds between two [`pg_cpu`] readings.
pub fn pg_cpu_between(before: &PgCpu, after: &PgCpu) -> f64 {
    pg_cpu_by_kind(before, after).values().sum()
}

/// The real binary holding 40,000 assets over 200 connections (books dumped and stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_stream_memory_40k_assets() {
    let db = pg::fresh_db().await;
    let http = Fake::start().await;
    let ws = crate::fake_ws::FakeWs::start().await;
    let tokens: Vec<String> = (0..20_000).flat_map(|m| [fake::token_id(m, 0), fake::token_id(m, 1)]).collect();
    let list = tokens.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    let text = crate::config_text_ws(
        &db,
        &http.url(),
        &ws.url(),
        &format!(
            "[catalog]\nenabled = false\n[books]\nenabled = false\n[stream]\nmax_assets_per_connection = 200\nconnect_interval_ms = 5\ntoken_ids = [{list}]\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["collect", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let t = Instant::now();
    crate::eventually(120, "40,000 assets over 200 connections", || async {
        ws.live_connections() == 200 && ws.live_assets().len() == 40_000
    })
    .await;
    let connected = t.elapsed();
    crate::eventually(120, "every initial book stored", || async {
        db.try_count("SELECT count(*) FROM book_snapshots WHERE source = 'ws'").await == Some(40_000)
    })
    .await;
    // BENCH_MEMORY_SETTLE_SECS: wait this long before measuring (does freed memory go back?).
    let settle: u64 = std::env::var("BENCH_MEMORY_SETTLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let mut peak_rss = 0;
    for _ in 0..20 {
        peak_rss = peak_rss.max(rss_kib(pid).0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, hwm) = rss_kib(pid);
    // BENCH_SMAPS=1: the largest resident mappings (is it the heap, and how much).
    if std::env::var("BENCH_SMAPS").is_ok() {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut maps: Vec<(u64, String)> = Vec::new();
        let mut name = String::new();
        for l in smaps.lines() {
            let first = l.split_whitespace().next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                name = l.to_string();
            } else if let Some(v) = l.strip_prefix("Rss:") {
                maps.push((v.trim().trim_end_matches(" kB").parse().unwrap_or(0), name.clone()));
            }
        }
        maps.sort_by_key(|m| std::cmp::Reverse(m.0));
        for (kb, n) in maps.iter().take(12) {
            println!("BENCH   smaps {kb} kB {n}");
        }
    }
    println!(
        "BENCH stream memory: 40,000 assets over 200 connections (all connected in {:.1} s, 40,000 books stored):",
        connected.as_secs_f64()
    );
    println!("BENCH   resident {:.1} MB (steady), high-water mark {:.1} MB", peak_rss as f64 / 1024.0, hwm as f64 / 1024.0);
    let _ = child.start_kill();
}

/// The real mix, per 20 events of one market: 16 `price_change` messages (each a level
/// change for both tokens: 32 rows), 2 trades, 1 book, 1 `best_bid_ask` — 36 rows, 89 % of
/// them level changes (the PMXT archive of the whole stream: ~99.7 %). Frames of 20 events,
/// one market per frame, round robin over `markets`; every event a millisecond of its own, as
/// upstream's millisecond timestamps mostly are (rows sharing a token and a time would let the
/// `(token, time)` indexes deduplicate, which the real stream does not).
fn real_mix_frames(markets: u64, events: u64, t0: u64) -> (Vec<(String, String)>, u64) {
    let mut frames = Vec::new();
    let mut rows = 0;
    for f in 0..events / 20 {
        let m = f % markets;
        let (a, b) = (fake::token_id(m, 0), fake::token_id(m, 1));
        let cond = format!("0x{:064x}", m + 1);
        let ts = t0 + f * 20;
        let mut ev = Vec::with_capacity(20);
        for k in 0..16u64 {
            let level = (f * 16 + k) % 40 + 1;
            // Prices as upstream writes them: no trailing zero ("0.1", not "0.10").
            let cents = |c: u64| format!("0.{c:02}").trim_end_matches('0').to_string();
            let (pa, pb) = (cents(level + 5), cents(95 - level));
            let size = format!("{}.{:02}", 100 + (f % 900), k);
            ev.push(serde_json::json!({"event_type": "price_change", "market": cond, "timestamp": (ts + k).to_string(),
                "price_changes": [
                    {"asset_id": a, "price": pa, "size": size, "side": "BUY", "hash": format!("{:040x}", f * 32 + 2 * k), "best_bid": "0.47", "best_ask": "0.48"},
                    {"asset_id": b, "price": pb, "size": size, "side": "SELL", "hash": format!("{:040x}", f * 32 + 2 * k + 1), "best_bid": "0.52", "best_ask": "0.53"}]}));
        }
        for k in 0..2u64 {
            let n = f * 2 + k;
            let mut t: serde_json::Value =
                serde_json::from_str(&crate::fake_ws::trade_frame(if k == 0 { &a } else { &b }, n, ts + 16 + k)).unwrap();
            t["market"] = serde_json::json!(cond);
            ev.push(t);
        }
        let mut book = fake::book(&a, ts + 18, &format!("{:040x}", f));
        book["event_type"] = serde_json::json!("book");
        ev.push(book);
        ev.push(serde_json::json!({"event_type": "best_bid_ask", "market": cond, "asset_id": b, "best_bid": "0.52", "best_ask": "0.53", "spread": "0.01", "timestamp": (ts + 19).to_string()}));
        rows += 32 + 2 + 1 + 1;
        frames.push((a, serde_json::Value::Array(ev).to_string()));
    }
    (frames, rows)
}

/// The frames as the fake sends them without a copy per send: building the frames is not the
/// collector's work, and neither is copying them.
fn shared((frames, rows): (Vec<(String, String)>, u64)) -> (Vec<(String, tokio_tungstenite::tungstenite::Utf8Bytes)>, u64) {
    (frames.into_iter().map(|(asset, frame)| (asset, frame.into())).collect(), rows)
}

/// One burst through the collector: what it cost, measured from the first frame sent to its
/// last row committed.
struct Burst {
    wall: Duration,
    /// PostgreSQL's CPU seconds by process kind.
    pg: std::collections::BTreeMap<String, f64>,
    /// This process's CPU seconds (the collector's tasks and the in-process fake).
    own: f64,
    /// The share of the machine's cores that was busy.
    busy: f64,
}

/// Sends `frames` (`rows` rows) at once and waits until every row is committed.
async fn send_burst(h: &Harness, frames: &[(String, tokio_tungstenite::tungstenite::Utf8Bytes)], rows: u64) -> Burst {
    let before = h.sink.stats.rows_written.load(Ordering::Relaxed);
    let (cpu, own, machine) = (pg_cpu(&h.db).await, self_cpu(), machine_ticks());
    let t = Instant::now();
    for (asset, frame) in frames {
        assert!(h.ws.send_shared_to_asset(asset, frame));
    }
    committed(&h.sink.stats, before, rows, 600).await;
    let wall = t.elapsed();
    let busy = busy_between(machine, machine_ticks());
    Burst { wall, pg: pg_cpu_by_kind(&cpu, &pg_cpu(&h.db).await), own: self_cpu() - own, busy }
}

/// Bytes per row of `table` (heap + indexes + toast, after VACUUM; a partitioned table's
/// partitions summed): rows, heap bytes, total bytes, and the fixed bytes among them — the
/// free-space and visibility maps (~32 KB a relation) and the empty days' partitions (a page
/// per index and toast index): nothing beside a day's millions of rows, but ~5 bytes a row
/// beside a benchmark's 20,000 trades.
async fn bytes_per_row(db: &pg::TestDb, table: &str) -> (i64, f64, f64, f64) {
    let c = db.client().await;
    c.batch_execute(&format!("VACUUM ANALYZE {table}")).await.unwrap();
    let r = c
        .query_one(
            &format!(
                "WITH parts AS (SELECT inhrelid AS oid FROM pg_inherits WHERE inhparent = '{table}'::regclass
                        UNION ALL SELECT '{table}'::regclass::oid),
              full_parts AS (SELECT oid FROM parts WHERE pg_relation_size(oid) > 0),
              rels AS (SELECT oid FROM full_parts UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT oid FROM full_parts)
                       UNION ALL SELECT reltoastrelid FROM pg_class WHERE oid IN (SELECT oid FROM full_parts) AND reltoastrelid <> 0)
         SELECT (SELECT count(*) FROM {table}),
                (SELECT sum(pg_table_size(oid)) FROM parts)::float8,
                (SELECT sum(pg_total_relation_size(oid)) FROM parts)::float8,
                COALESCE((SELECT sum(pg_relation_size(oid)) FROM rels), 0)::float8"
            ),
            &[],
        )
        .await
        .unwrap();
    let n: i64 = r.get(0);
    let (heap, total, proportional): (f64, f64, f64) = (r.get(1), r.get(2), r.get(3));
    let per = |b: f64| b / n.max(1) as f64;
    (n, per(heap), per(total), per(total - proportional))
}

/// The baseline: the rows the collector stored, copied out (binary, as stored), the tables
/// emptied, and the rows copied back in by one plain binary `COPY` per table — the same tables,
/// partitions and indexes.
async fn plain_copy_into_the_same_tables(db: &pg::TestDb, tables: &[&str]) -> PlainCopy {
    let c = db.client().await;
    let mut data = Vec::new();
    for table in tables {
        let out = c.copy_out(&format!("COPY (SELECT * FROM {table}) TO STDOUT (FORMAT binary)")).await.unwrap();
        futures_util::pin_mut!(out);
        let mut bytes = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut out).await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        data.push((table, bytes::Bytes::from(bytes)));
    }
    c.batch_execute(&format!("TRUNCATE {}", tables.join(", "))).await.unwrap();
    let (cpu, wal_before, lsn0) = (pg_cpu(db).await, wal(db).await, lsn(db).await);
    let t = Instant::now();
    let mut rows = 0;
    for (table, bytes) in data {
        let sink = c.copy_in(&format!("COPY {table} FROM STDIN (FORMAT binary)")).await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes).await.unwrap();
        rows += sink.finish().await.unwrap();
    }
    let elapsed = t.elapsed();
    let w = wal(db).await;
    wal_stats(db, &lsn0, &lsn(db).await).await;
    PlainCopy { elapsed, rows, cpu: pg_cpu_by_kind(&cpu, &pg_cpu(db).await), wal: (w.0 - wal_before.0, w.1 - wal_before.1) }
}

/// What [`plain_copy_into_the_same_tables`] measured: the wall time of the copies in, the rows
/// copied, and the database's CPU seconds by process kind.
struct PlainCopy {
    elapsed: Duration,
    rows: u64,
    cpu: std::collections::BTreeMap<String, f64>,
    /// WAL records and bytes.
    wal: (i64, f64),
}

/// The tables the stream writes: `price_changes`, `trades` and `quotes` are views over
/// compact, partitioned tables (migrations 5, 7, 8 and 9; level changes whose prices fit in
/// ticks — all of this mix's — in `price_changes_ticks`).
const STREAM_TABLES: [&str; 5] = ["price_changes_ticks", "price_changes_compact", "trades_compact", "quotes_compact", "book_snapshots"];

/// The real event mix, socket → committed, against a plain binary COPY of the same rows into
/// the same tables, in the same run; and bytes per row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_stream_real_mix_vs_copy() {
    // BENCH_EVENTS: another burst size (default 200,000 events).
    let events: u64 = std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    const MARKETS: u64 = 100;
    let tables = STREAM_TABLES;
    let (mut ours, mut copy, mut last_sizes, mut closed_sizes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ours_cpu, mut copy_cpu, mut own_cpu, mut busy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        let mut h = stream_harness(MARKETS, &format!("queue_capacity = 2000000\n{}", bench_extra())).await;
        let (frames, rows) = shared(real_mix_frames(MARKETS, events, crate::now_ms()));
        let burst = send_burst(&h, &frames, rows).await;
        ours.push(burst.wall);
        busy.push(burst.busy);
        let kinds = burst.pg;
        ours_cpu.push(Duration::from_secs_f64(kinds.values().sum()));
        own_cpu.push(Duration::from_secs_f64(burst.own));
        println!(
            "BENCH   run {run}: {:.2} s for {events} events ({rows} rows); withheld {}, quarantined {}",
            burst.wall.as_secs_f64(),
            h.stats.withheld.load(Ordering::Relaxed),
            h.stats.quarantined.load(Ordering::Relaxed)
        );
        h.stop().await;
        let mut sizes = Vec::new();
        for table in tables {
            sizes.push((table, bytes_per_row(&h.db, table).await));
        }
        last_sizes = sizes;
        let plain = plain_copy_into_the_same_tables(&h.db, &tables).await;
        copy.push(plain.elapsed);
        copy_cpu.push(Duration::from_secs_f64(plain.cpu.values().sum()));
        println!(
            "BENCH   run {run}: PostgreSQL µs per row by process: collector: {}; plain COPY: {}",
            per_row_by_kind(&kinds, rows),
            per_row_by_kind(&plain.cpu, rows)
        );
        // The same rows once their day is closed: the daemon compacts its partitions.
        let pool = h.db.pool().await;
        for table in collector::db::partitions::TABLES {
            for day in collector::db::partitions::days(&pool, table).await.unwrap() {
                collector::db::partitions::compact(&pool, table, day).await.unwrap();
            }
        }
        let mut sizes = Vec::new();
        for table in tables {
            sizes.push((table, bytes_per_row(&h.db, table).await));
        }
        closed_sizes = sizes;
    }
    let (o, c) = (median(ours), median(copy));
    let rows = real_mix_frames(MARKETS, events, 0).1 as f64;
    println!("BENCH stream, real mix ({events} events, {rows} rows, 89 % level changes), {MARKETS} markets, socket → committed:");
    println!(
        "BENCH   collector           : median {:.2} s = {:.0} events/s ({:.0} rows/s)",
        o.as_secs_f64(),
        events as f64 / o.as_secs_f64(),
        rows / o.as_secs_f64()
    );
    println!(
        "BENCH   plain binary COPY   : median {:.2} s = {:.0} rows/s (same rows into the same tables, partitions and indexes)",
        c.as_secs_f64(),
        rows / c.as_secs_f64()
    );
    println!("BENCH   ratio collector/COPY: {:.2}", c.as_secs_f64() / o.as_secs_f64());
    let (oc, cc) = (median(ours_cpu), median(copy_cpu));
    println!(
        "BENCH   PostgreSQL CPU per row: collector {:.1} µs, plain COPY {:.1} µs",
        oc.as_secs_f64() * 1e6 / rows,
        cc.as_secs_f64() * 1e6 / rows
    );
    println!(
        "BENCH   collector process CPU per row (with the in-process fake sending): {:.1} µs",
        median(own_cpu).as_secs_f64() * 1e6 / rows
    );
    busy.sort_by(f64::total_cmp);
    println!("BENCH   machine busy while the collector ran: {:.0} % of its cores (median)", busy[busy.len() / 2] * 100.0);
    for (when, sizes) in [("while its day is open", last_sizes), ("once its day is closed and compacted", closed_sizes)] {
        println!("BENCH   storage {when}:");
        let mut per_day = 0.0;
        for (table, (n, heap, total, fixed)) in sizes {
            if n == 0 {
                println!("BENCH     {table:<22}: no rows");
                continue;
            }
            println!(
                "BENCH     {table:<22}: {n} rows, {heap:.0} B/row heap, {total:.0} B/row with indexes, {:.1} of them per row (the fixed {fixed:.1} apart)",
                total - fixed
            );
            // This mix at 30,000 events/s: the table's share of the rows at 1.8 rows per event
            // (a day's rows: the fixed bytes are nothing).
            per_day += (total - fixed) * n as f64 / rows * 30_000.0 * rows / events as f64 * 86_400.0;
        }
        println!("BENCH     projected at 30,000 events/s of this mix: {:.0} GB/day", per_day / 1e9);
    }
}

/// The real mix at sustained rates, as the collector meets the stream: frames paced every 5 ms
/// for `BENCH_SUSTAIN_SECS` (default 30, the issue's window) seconds at each rate of
/// `BENCH_RATES` (events/s, comma-separated, ascending; default 60,000 to 200,000), with the
/// default queue (100,000
/// rows). A rate is kept up with when the fake delivered it (≥ 95 %), the 99th percentile of
/// receive → commit stayed within 250 ms (the latency target), no row spilled to the spool,
/// and the rows left queued at the end were committed within a second; the sweep stops at the
/// first rate that is not. Then a plain binary COPY of the last run's rows into the same
/// tables, for the ratio.
///
/// First a warm-up, not counted (the issue's protocol: "30 s windows after warm-up"): the
/// first rate for `BENCH_WARMUP_SECS` (default 20; 0: none), then a `CHECKPOINT`. A fresh
/// cluster creates (and zero-fills) a 16 MB WAL segment every ~0.3 s of this load, which the
/// COPY at the end never paid (it found them recycled): 0.2–0.3 µs a row in the walwriter in
/// the first rate of a sweep, ~0.05 after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_stream_real_mix_sustained() {
    const MARKETS: u64 = 100;
    let secs: u64 = std::env::var("BENCH_SUSTAIN_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "60000,80000,100000,120000,140000,160000,180000,200000".into())
        .split(',')
        .map(|r| r.trim().parse().unwrap())
        .collect();
    let extra = bench_extra();
    // BENCH_LOG=warn (a tracing filter) shows the collector's own log lines.
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
    let tables = STREAM_TABLES;
    let mut kept_up = None;
    let mut last_db = None;
    let warmup: u64 = std::env::var("BENCH_WARMUP_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    println!("BENCH stream, real mix sustained for {secs} s, {MARKETS} markets, socket → committed:");
    let runs = (warmup > 0).then(|| (rates[0], warmup, true)).into_iter().chain(rates.iter().map(|&r| (r, secs, false)));
    for (rate, secs, warming_up) in runs {
        if warming_up {
            println!("BENCH   warm-up, not counted:");
        }
        // The default queue (100,000 rows): past it rows spill to the spool, as in production.
        let mut h = stream_harness(MARKETS, &extra).await;
        // One event per ms: centred on now, so that no event is further than the collector's
        // clock-skew bound (an hour, `domain::MAX_CLOCK_SKEW`) from its receive time. Starting at
        // now, every event past 3.6 M was quarantined as out of domain (140,000 events/s × 30 s).
        let events = rate * secs;
        assert!(events / 2 < 3_300_000, "{events} events at one per ms would span more than the clock-skew bound");
        let (frames, rows) = shared(real_mix_frames(MARKETS, events, crate::now_ms() - events / 2));
        let ticks = secs * 200;
        let per_tick = (frames.len() as u64).div_ceil(ticks) as usize;
        let before = h.sink.stats.rows_written.load(Ordering::Relaxed);
        h.sink.stats.commit_latency.reset();
        statement_stats(&h.db, false).await;
        let (cpu, own, wal_before, lsn0) = (pg_cpu(&h.db).await, self_cpu(), wal(&h.db).await, lsn(&h.db).await);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let t = Instant::now();
        // Every 5 s: the database's CPU per row committed in those 5 s (does it grow?).
        let (mut series, mut mark) = (Vec::new(), (cpu.clone(), before));
        for (i, chunk) in frames.chunks(per_tick).enumerate() {
            tick.tick().await;
            for (asset, frame) in chunk {
                assert!(h.ws.send_shared_to_asset(asset, frame));
            }
            if i % 1000 == 999 {
                let now = (pg_cpu(&h.db).await, h.sink.stats.rows_written.load(Ordering::Relaxed));
                series.push(format!("{:.1}", pg_cpu_between(&mark.0, &now.0) * 1e6 / (now.1 - mark.1).max(1) as f64));
                mark = now;
            }
        }
        let sent_in = t.elapsed();
        let behind = rows - (h.sink.stats.rows_written.load(Ordering::Relaxed) - before);
        // A rate that spilled drains its spool through the replay path: that can take minutes.
        // A collector far enough behind that its connections were rebuilt has lost the frames
        // the fake still held for the old ones (upstream would drop them too; the gap is
        // recorded): stop waiting once nothing more is committed for 15 s.
        let (mut last, mut since) = (0, Instant::now());
        let lost = loop {
            let written = h.sink.stats.rows_written.load(Ordering::Relaxed) - before;
            if written >= rows {
                break 0;
            }
            if written != last {
                (last, since) = (written, Instant::now());
            } else if since.elapsed() > Duration::from_secs(15) {
                break rows - written;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let drained = t.elapsed() - sent_in - if lost > 0 { Duration::from_secs(15) } else { Duration::ZERO };
        let kinds = pg_cpu_by_kind(&cpu, &pg_cpu(&h.db).await);
        let (pg, process) = (kinds.values().sum::<f64>(), self_cpu() - own);
        let delivered = (rate * secs) as f64 / sent_in.as_secs_f64();
        let l = &h.sink.stats.commit_latency;
        // Spooled rows are not in the latency histogram: a spill is falling behind.
        let spooled = h.sink.stats.spooled_rows.load(Ordering::Relaxed);
        let quarantined = h.stats.quarantined.load(Ordering::Relaxed);
        let kept = delivered >= 0.95 * rate as f64
            && l.quantile(0.99).unwrap_or(u64::MAX) <= 250
            && drained <= Duration::from_secs(1)
            && spooled == 0
            && lost == 0
            && quarantined == 0;
        println!(
            "BENCH   {rate:>7} events/s: delivered {delivered:.0}/s, {behind} rows behind at the end, {spooled} spooled, drained in {:.2} s, \
                  p99 receive → commit {} ms; CPU per row: PostgreSQL {:.1} µs, collector process {:.1} µs{} → {}",
            drained.as_secs_f64(),
            l.quantile(0.99).unwrap_or(0),
            pg * 1e6 / rows as f64,
            process * 1e6 / rows as f64,
            if lost > 0 { format!("; {lost} rows never committed (see the counts below)") } else { String::new() },
            if kept { "kept up" } else { "FELL BEHIND" }
        );
        let w = wal(&h.db).await;
        wal_stats(&h.db, &lsn0, &lsn(&h.db).await).await;
        statement_stats(&h.db, true).await;
        println!(
            "BENCH            quarantined {quarantined}, withheld {}, reconnects {}, gaps {}, dropped {}, spool bytes now {}",
            h.stats.withheld.load(Ordering::Relaxed),
            h.stats.reconnects.load(Ordering::Relaxed),
            h.stats.gaps.load(Ordering::Relaxed),
            h.sink.stats.dropped_rows.load(Ordering::Relaxed),
            h.sink.stats.spool_bytes.load(Ordering::Relaxed)
        );
        println!(
            "BENCH            PostgreSQL µs per row by process: {}; each 5 s while sending: {}; WAL per row {:.2} records, {:.0} bytes; \
                  {:.0} rows per committed transaction (all of the database's)",
            per_row_by_kind(&kinds, rows),
            series.join(" "),
            (w.0 - wal_before.0) as f64 / rows as f64,
            (w.1 - wal_before.1) / rows as f64,
            rows as f64 / (w.2 - wal_before.2).max(1) as f64
        );
        if warming_up {
            h.db.client().await.batch_execute("CHECKPOINT").await.unwrap();
            h.stop().await;
            continue;
        }
        if kept {
            kept_up = Some((rate, rows as f64 / (rate * secs) as f64));
        }
        h.stop().await;
        last_db = Some(h.db);
        if !kept {
            break; // the rates are ascending
        }
    }
    let db = last_db.expect("a rate");
    let plain = plain_copy_into_the_same_tables(&db, &tables).await;
    let copy_rows = plain.rows as f64 / plain.elapsed.as_secs_f64();
    println!(
        "BENCH   plain binary COPY of the last run's {} stored rows into the same tables: {copy_rows:.0} rows/s; PostgreSQL µs per row by process: {}; \
              WAL per row {:.2} records, {:.0} bytes",
        plain.rows,
        per_row_by_kind(&plain.cpu, plain.rows),
        plain.wal.0 as f64 / plain.rows as f64,
        plain.wal.1 / plain.rows as f64
    );
    match kept_up {
        Some((rate, rows_per_event)) => println!(
            "BENCH   highest rate kept up with: {rate} events/s = {:.0} rows/s; ratio to COPY {:.2}",
            rate as f64 * rows_per_event,
            rate as f64 * rows_per_event / copy_rows
        ),
        None => println!("BENCH   no rate kept up with"),
    }
}

/// The spool path on the real mix: with a 1,000-row queue, a burst of 200,000 events spills
/// to the spool almost whole and is replayed from it, as after an outage or a burst the
/// database could not take. How fast a spool drains, against the live path's burst
/// (`bench_stream_real_mix_vs_copy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_stream_real_mix_spool_replay() {
    const EVENTS: u64 = 200_000;
    const MARKETS: u64 = 100;
    let (mut times, mut pg, mut own) = (Vec::new(), Vec::new(), Vec::new());
    let mut rows_total = 0;
    for run in 0..RUNS {
        let mut h = stream_harness(MARKETS, &format!("queue_capacity = 1000\n{}", bench_extra())).await;
        let (frames, rows) = shared(real_mix_frames(MARKETS, EVENTS, crate::now_ms()));
        rows_total = rows;
        let burst = send_burst(&h, &frames, rows).await;
        times.push(burst.wall);
        pg.push(Duration::from_secs_f64(burst.pg.values().sum()));
        own.push(Duration::from_secs_f64(burst.own));
        let (spooled, replayed) = (h.sink.stats.spooled_rows.load(Ordering::Relaxed), h.sink.stats.replayed_rows.load(Ordering::Relaxed));
        let bytes = h.sink.stats.spooled_bytes.load(Ordering::Relaxed);
        println!(
            "BENCH   run {run}: {:.2} s for {rows} rows; {spooled} spooled ({:.1} bytes a row in the spool), {replayed} replayed",
            burst.wall.as_secs_f64(),
            bytes as f64 / spooled.max(1) as f64
        );
        assert!(replayed >= rows * 9 / 10, "the spool path was measured ({replayed} of {rows} rows replayed)");
        h.stop().await;
    }
    let rows = rows_total as f64;
    println!(
        "BENCH stream, real mix through the spool ({EVENTS} events, {rows} rows, queue of 1,000 rows): median {:.2} s = {:.0} rows/s; \
              CPU per row: PostgreSQL {:.1} µs, collector process {:.1} µs",
        median(times.clone()).as_secs_f64(),
        rows / median(times).as_secs_f64(),
        median(pg).as_secs_f64() * 1e6 / rows,
        median(own).as_secs_f64() * 1e6 / rows
    );
}

/// Receive → commit latency on the real mix at 20,000 events/s (5 frames of 20 events every
/// 5 ms for 10 s), from the writer's per-row histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_stream_real_mix_latency_at_20k_per_second() {
    const EVENTS: u64 = 200_000;
    let mut h = stream_harness(100, "").await;
    let (frames, rows) = shared(real_mix_frames(100, EVENTS, crate::now_ms()));
    h.sink.stats.commit_latency.reset();
    let before = h.sink.stats.rows_written.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t = Instant::now();
    for chunk in frames.chunks(5) {
        tick.tick().await;
        for (asset, frame) in chunk {
            assert!(h.ws.send_shared_to_asset(asset, frame));
        }
    }
    let sent_in = t.elapsed();
    crate::eventually(120, "all committed", || async { h.sink.stats.rows_written.load(Ordering::Relaxed) - before >= rows }).await;
    let l = &h.sink.stats.commit_latency;
    println!(
        "BENCH stream latency, real mix, {EVENTS} events at {:.0} events/s, frame received → row committed:",
        EVENTS as f64 / sent_in.as_secs_f64()
    );
    println!("BENCH   p50 {} ms, p99 {} ms, max {} ms", l.quantile(0.5).unwrap(), l.quantile(0.99).unwrap(), l.quantile(1.0).unwrap());
    h.stop().await;
}

/// Decoding alone: the real mix's frames through `decode_frame` (one core, no I/O).
#[test]
#[ignore = "benchmark"]
fn bench_decode_real_mix() {
    let (frames, rows) = real_mix_frames(100, 200_000, crate::now_ms());
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let mut n = 0;
        for (_, f) in &frames {
            if let collector::polymarket::ws::Frame::Events { events, .. } = collector::polymarket::ws::decode_frame(f) {
                n += events.len();
            }
        }
        assert_eq!(n, 200_000);
        times.push(t.elapsed());
    }
    let m = median(times);
    println!(
        "BENCH decode, real mix: 200000 events ({rows} rows) in {:.3} s = {:.2} µs per row",
        m.as_secs_f64(),
        m.as_secs_f64() * 1e6 / rows as f64
    );
}

/// Issue 24's write-path target: the real mix, socket → committed, written by an instance
/// alone (no election: level changes unchecked) and by its slice's fenced writer (the daemon's
/// default: each batch of level changes checks the slice's epoch in its transaction), in
/// alternating runs of the same burst. Compared in rows per CPU second — the collector's
/// process (with the in-process fake) plus PostgreSQL's — the target is at most 10 % more
/// CPU per row for the fenced writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_fenced_writer_vs_alone() {
    let events: u64 = std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    const MARKETS: u64 = 100;
    // BENCH_RUNS: pairs of runs (default 5; the machine is noisy, a median of pairs it needs).
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let mut per_row: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut rows = 0;
    for run in 0..runs {
        // Alternating which goes first: the machine drifts over a run of minutes.
        let order = if run % 2 == 0 { [false, true] } else { [true, false] };
        for election in order {
            let k = usize::from(election);
            let mut h = elected_harness(MARKETS, &format!("queue_capacity = 2000000\n{}", bench_extra()), election).await;
            let (frames, n) = shared(real_mix_frames(MARKETS, events, crate::now_ms()));
            rows = n;
            let Burst { wall, pg, own, .. } = send_burst(&h, &frames, n).await;
            let pg: f64 = pg.values().sum();
            per_row[k].push((pg + own) * 1e6 / n as f64);
            let stored = h.db.try_count("SELECT count(*) FROM price_changes").await.unwrap_or(0);
            println!(
                "BENCH   run {run} {}: {:.2} s wall, PostgreSQL {:.2} s + collector {:.2} s CPU = {:.2} µs/row; level changes stored {stored}",
                if election { "fenced writer" } else { "alone        " },
                wall.as_secs_f64(),
                pg,
                own,
                (pg + own) * 1e6 / n as f64
            );
            h.stop().await;
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut pairs: Vec<f64> = per_row[1].iter().zip(&per_row[0]).map(|(f, a)| f / a - 1.0).collect();
    let (alone, fenced) = (med(&mut per_row[0]), med(&mut per_row[1]));
    println!(
        "BENCH fenced writer vs alone, real mix ({events} events, {rows} rows), CPU (PostgreSQL + collector) per row, medians of {runs}:"
    );
    println!("BENCH   alone (no election)  : {alone:.2} µs/row = {:.0} rows per CPU second", 1e6 / alone);
    println!("BENCH   fenced slice writer  : {fenced:.2} µs/row = {:.0} rows per CPU second", 1e6 / fenced);
    println!("BENCH   cost of the fence    : {:+.1} % per row (target: at most +10 %)", (fenced / alone - 1.0) * 100.0);
    println!("BENCH   same, median of the runs' pairs: {:+.1} %", med(&mut pairs) * 100.0);
}
