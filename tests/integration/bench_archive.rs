//! The archive's benchmark (BENCHMARKS.md, "Archive"): an hour of the real mix — level
//! changes ~88 % of rows, trades, quotes, books — stored through the writer, then archived:
//! bytes per row of each table in the files (with and without the level hashes), rows per
//! second and per CPU-second of the archive, the database's CPU for the reads, and DuckDB's
//! time for one token over the day.

use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use collector::collectors::archive;
use collector::db::stream::{Keys, Origin, Row, TradeSource, write_batch};
use collector::polymarket::decode::Side;
use collector::polymarket::ws::{LevelChange, Quote, Trade};

use crate::bench::{pg_cpu, pg_cpu_between, self_cpu};
use crate::{fake, pg};

/// The real mix, from a seed: `markets` markets (two tokens each) whose activity falls off
/// steeply (a few busy markets, a long quiet tail), prices walking by ticks around each
/// market's mid, sizes as upstream writes them (round, two decimals, some six), random 20-byte
/// hashes and 32-byte transaction hashes, times spread over the hour from `h`, each row
/// received 5–200 ms after its source time. Rows come in time order, in frames of a market's
/// events.
pub struct RealMix {
    rng: fastrand::Rng,
    markets: usize,
    mids: Vec<i64>,
    h: DateTime<Utc>,
    n: u64,
    total: u64,
}

impl RealMix {
    pub fn new(seed: u64, markets: usize, h: DateTime<Utc>, total: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mids = (0..markets).map(|_| rng.i64(5..95)).collect();
        RealMix { rng, markets, mids, h, n: 0, total }
    }

    fn size(&mut self) -> String {
        match self.rng.u8(0..10) {
            0..=1 => "0".into(),
            2..=4 => format!("{}", self.rng.u32(1..5000)),
            5..=8 => format!("{}.{:02}", self.rng.u32(0..20000), self.rng.u32(0..100)),
            _ => format!("{}.{:06}", self.rng.u32(0..2000), self.rng.u32(0..1_000_000)),
        }
    }

    fn hex(&mut self, bytes: usize) -> String {
        (0..bytes).map(|_| format!("{:02x}", self.rng.u8(..))).collect()
    }

    /// The next frame's rows (~36: 32 level changes of one market's two tokens, about one
    /// trade, one quote, now and then a book), or `None` after `total` rows.
    pub fn next_frame(&mut self) -> Option<Vec<Row>> {
        if self.n >= self.total {
            return None;
        }
        let m = ((self.rng.f64().powi(3)) * self.markets as f64) as usize;
        let (a, b) = (fake::token_id(m as u64, 0), fake::token_id(m as u64, 1));
        let cond: std::sync::Arc<str> = format!("0x{:064x}", m + 1).into();
        let at = self.h + chrono::Duration::microseconds((self.n as f64 / self.total as f64 * 3_600_000_000.0) as i64);
        let at = at.duration_trunc(chrono::Duration::milliseconds(1)).unwrap();
        let received = at + chrono::Duration::microseconds(self.rng.i64(5_000..200_000));
        // The mid walks a tick now and then.
        self.mids[m] = (self.mids[m] + self.rng.i64(-1..=1)).clamp(2, 98);
        let mid = self.mids[m];
        let cents = |c: i64| {
            let s = format!("0.{c:02}");
            s.trim_end_matches('0').to_string()
        };
        let mut rows = Vec::with_capacity(36);
        for k in 0..16 {
            // Each event its own millisecond, received a little after.
            let at = at + chrono::Duration::milliseconds(k * self.rng.i64(1..40));
            let received = at + chrono::Duration::microseconds(self.rng.i64(5_000..200_000));
            let off = self.rng.i64(0..8);
            let buy = k % 2 == 0;
            let (pa, pb) = if buy { (mid - off, 100 - mid - off) } else { (mid + 1 + off, 99 - mid + off) };
            for (token, price, bid) in [(&a, pa.clamp(1, 99), mid), (&b, pb.clamp(1, 99), 99 - mid)] {
                let hash = self.hex(20);
                let size = self.size();
                rows.push(Row::PriceChange {
                    change: LevelChange {
                        asset_id: token.clone(),
                        price: cents(price).parse().unwrap(),
                        size: size.parse().unwrap(),
                        side: if buy { Side::Buy } else { Side::Sell },
                        hash: Some(hash),
                        best_bid: Some(cents(bid).parse().unwrap()),
                        best_ask: Some(cents(bid + 1).parse().unwrap()),
                    },
                    condition_id: Some(cond.clone()),
                    source_ts: at,
                    received_at: received,
                });
            }
        }
        for _ in 0..self.rng.u8(1..4) {
            let size = format!("{}.{:06}", self.rng.u32(1..500), self.rng.u32(0..1_000_000));
            let tx = format!("0x{}", self.hex(32));
            rows.push(Row::Trade {
                trade: Trade {
                    asset_id: a.clone(),
                    condition_id: Some(cond.to_string()),
                    price: cents(mid).parse().unwrap(),
                    size: size.parse().unwrap(),
                    side: if self.rng.bool() { Side::Buy } else { Side::Sell },
                    fee_rate_bps: Some("0".parse().unwrap()),
                    source_ts: at,
                    tx_hash: Some(tx),
                },
                received_at: received,
                source: TradeSource::Ws,
            });
        }
        for _ in 0..2 {
            rows.push(Row::Quote {
                quote: Quote {
                    asset_id: b.clone(),
                    condition_id: Some(cond.to_string()),
                    best_bid: Some(cents(99 - mid).parse().unwrap()),
                    best_ask: Some(cents(100 - mid).parse().unwrap()),
                    spread: Some("0.01".parse().unwrap()),
                    source_ts: at,
                },
                received_at: received,
            });
        }
        if self.rng.u8(0..4) == 0 {
            let mut book = fake::book(&a, at.timestamp_millis() as u64, &self.hex(20));
            book["market"] = serde_json::json!(cond.to_string());
            rows.push(Row::Book { book: collector::polymarket::clob::decode_book(&book).unwrap(), received_at: received });
        }
        self.n += rows.len() as u64;
        Some(rows)
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten().map(|e| if e.path().is_dir() { dir_bytes(&e.path()) } else { e.metadata().map_or(0, |m| m.len()) }).sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: BENCHMARKS.md"]
async fn bench_archive_real_mix() {
    let rows_wanted: u64 = std::env::var("BENCH_ARCHIVE_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000_000);
    let markets: usize = std::env::var("BENCH_ARCHIVE_MARKETS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let db = pg::fresh_db().await;
    let pool = db.pool().await;
    let h = (Utc::now() - chrono::Duration::hours(4)).duration_trunc(chrono::Duration::hours(1)).unwrap();
    let mut mix = RealMix::new(7, markets, h, rows_wanted);
    let keys = Keys::default();
    let (mut batch, mut stored) = (Vec::with_capacity(10_100), 0u64);
    let t0 = Instant::now();
    while let Some(frame) = mix.next_frame() {
        batch.extend(frame);
        if batch.len() >= 10_000 {
            write_batch(&pool, &keys, &batch, Origin::Live).await.unwrap();
            stored += batch.len() as u64;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        stored += batch.len() as u64;
        write_batch(&pool, &keys, &batch, Origin::Live).await.unwrap();
    }
    println!("stored {stored} rows of the real mix over one hour, {markets} markets, in {:.1} s", t0.elapsed().as_secs_f64());
    db.client().await.batch_execute("VACUUM ANALYZE").await.unwrap();
    let until = h + chrono::Duration::hours(1);
    let counts = db
        .client()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM price_changes), (SELECT count(*) FROM trades), (SELECT count(*) FROM quotes), (SELECT count(*) FROM book_snapshots)",
            &[],
        )
        .await
        .unwrap();
    let counts: [i64; 4] = [counts.get(0), counts.get(1), counts.get(2), counts.get(3)];
    println!("rows: price_changes {} trades {} quotes {} books {}", counts[0], counts[1], counts[2], counts[3]);
    let mut results = Vec::new();
    for (hashes, runs) in [(false, 3), (true, 1)] {
        for run in 0..runs {
            db.client()
                .await
                .batch_execute("DELETE FROM archive_files; DELETE FROM archive_dirty; UPDATE stream_gaps SET archived_at = NULL")
                .await
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = crate::archive::archive_cfg(dir.path());
            cfg.level_hashes = hashes;
            cfg.row_group_rows = 1_000_000;
            let (cpu0, pg0, t) = (self_cpu(), pg_cpu(&db).await, Instant::now());
            let report = archive::pass(&pool, &cfg, until).await.unwrap();
            let (wall, cpu, pgs) = (t.elapsed(), self_cpu() - cpu0, pg_cpu_between(&pg0, &pg_cpu(&db).await));
            let rows: u64 = report.tables.values().map(|t| t.rows).sum();
            let per = |t: &str| report.tables[t].bytes as f64 / report.tables[t].rows.max(1) as f64;
            println!(
                "archive (level hashes {hashes}, run {run}): {rows} rows in {:.2} s wall = {:.0} rows/s; archive CPU {:.2} s = {:.0} rows per CPU-second; PostgreSQL CPU {:.2} s",
                wall.as_secs_f64(),
                rows as f64 / wall.as_secs_f64(),
                cpu,
                rows as f64 / cpu,
                pgs
            );
            println!(
                "  bytes per row: price_changes {:.2}, trades {:.2}, quotes {:.2}, book_snapshots {:.1}; all files {} bytes",
                per("price_changes"),
                per("trades"),
                per("quotes"),
                per("book_snapshots"),
                dir_bytes(dir.path())
            );
            results.push((hashes, wall, per("price_changes"), per("trades")));
            if let Ok(keep) = std::env::var("BENCH_ARCHIVE_KEEP").map(|k| format!("{k}-hashes-{hashes}")) {
                let _ = std::fs::remove_dir_all(&keep);
                std::process::Command::new("cp").arg("-r").arg(dir.path()).arg(&keep).status().unwrap();
                println!("  files kept in {keep}");
            }
            if !hashes && run == 0 {
                // DuckDB, one token over the day: the busiest token's level changes.
                let token = fake::token_id(0, 0);
                let code = format!(
                    "import duckdb, time, sys\ncon = duckdb.connect()\nts = []\nfor _ in range(5):\n    t = time.perf_counter()\n    r = con.execute(\"SELECT count(*), sum(size) FROM read_parquet('{}/price_changes/*/*.parquet', hive_partitioning = true) WHERE asset_id = '{token}' AND date = '{}'\").fetchall()\n    ts.append(time.perf_counter() - t)\nts.sort()\nprint(r, 'median %.1f ms' % (ts[2] * 1000))",
                    dir.path().display(),
                    h.format("%Y-%m-%d")
                );
                let out = std::process::Command::new("python3").args(["-c", &code]).output().unwrap();
                println!(
                    "  DuckDB, one token's level changes over the day: {}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let per_event_rows = counts[0] as f64 / (counts.iter().sum::<i64>() as f64);
                println!("  level changes are {:.1} % of the rows", per_event_rows * 100.0);
            }
        }
    }
    let walls: Vec<Duration> = results.iter().filter(|r| !r.0).map(|r| r.1).collect();
    println!("median wall without hashes: {:.2} s", crate::bench::median(walls).as_secs_f64());
}
