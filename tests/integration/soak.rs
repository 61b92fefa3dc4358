//! The soak test, on demand (`BENCHMARKS.md`, "Soak"): the real daemon for `SOAK_SECS` (default
//! 600) on a clock `SOAK_SPEED` times as fast (default 1440: a day a minute), with a fast
//! catalog churn (a market opens and the oldest closes every `SOAK_CHURN_SECS`, default 3),
//! retention and compaction on, the database restarted every `SOAK_DB_RESTART_SECS` (default
//! 180) for 15 s, and the spool's disk filled once (during the second outage). At the end:
//! every generated trade still within the retention stored once, resident memory over time,
//! the dictionaries' sequences against their rows, and the ERROR lines by kind.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use collector::clock::{Accelerated, TEST_CLOCK_ENV};
use serde_json::json;

use crate::daemon::{Daemon, FAST};
use crate::fake::{self, Fake};
use crate::fake_ws::{FakeWs, trade_frame};
use crate::pg;
use crate::years::SmallDisk;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// A trade the generator sent: asset, side's parity and size (its identity here), clock time.
struct Sent {
    asset: String,
    size: String,
    ts_ms: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak test, on demand: see BENCHMARKS.md"]
async fn soak_years_on_an_accelerated_clock() {
    let secs = env_u64("SOAK_SECS", 600);
    let speed = env_u64("SOAK_SPEED", 1440) as u32;
    let churn = Duration::from_secs(env_u64("SOAK_CHURN_SECS", 3));
    let restart_every = Duration::from_secs(env_u64("SOAK_DB_RESTART_SECS", 180));
    let Some(disk) = SmallDisk::mount(4096) else {
        eprintln!("SKIPPED soak: mounting the spool's small disk needs root");
        return;
    };
    let cluster = pg::PrivateCluster::start();
    let db = cluster.test_db();
    drop(db.pool().await);
    let http = Fake::start().await;
    let open_markets = 40u64;
    http.with(|s| s.events = (0..open_markets).map(|e| fake::event(e, 1)).collect());
    let ws = FakeWs::start().await;
    let started = Utc::now();
    let clock = Accelerated { real_ms: started.timestamp_millis(), clock_ms: started.timestamp_millis(), speed };
    let extra = format!(
        "{FAST}[stream]\nspool_dir = \"{}\"\nspool_max_bytes = 3000000\nping_interval_secs = 1\nrefresh_interval_secs = 1\n\
         reconnect_base_ms = 100\nconnect_interval_ms = 10\nflush_interval_ms = 20\nqueue_capacity = 2000\n\
         retention_days = 2\ntrades_retention_days = 3\nquotes_retention_days = 2\n",
        disk.dir.path().display()
    );
    let d =
        Daemon::start_ws(&db, &http, &ws.url(), &extra, &[(TEST_CLOCK_ENV, &clock.to_env()), ("RUST_LOG", "warn,collector=info")]).await;
    let pid = d.child.id().unwrap();
    crate::eventually(60, "ready", || async { d.notes.has("READY=1") }).await;

    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // The generator: trades (each also known to the Data API, as upstream's are), level changes
    // and quotes to live assets, ~100 trades and ~500 level changes a second.
    let generator = {
        let (ws, http, sent, stop) = (ws.clone(), http.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let live: Vec<String> = ws.live_assets().into_iter().collect();
                if live.is_empty() {
                    continue;
                }
                for _ in 0..2 {
                    let asset = &live[(n as usize) % live.len()];
                    let ts = clock.at(Utc::now()).timestamp_millis();
                    if ws.send_to_asset(asset, &trade_frame(asset, n, ts as u64)) {
                        let size = format!("{}.{:06}", 10 + n / 1_000_000, n % 1_000_000);
                        let side = if n % 2 == 0 { "BUY" } else { "SELL" };
                        let cond = http.with(|s| {
                            s.events.iter().flat_map(|e| e["markets"].as_array().cloned().unwrap_or_default()).find_map(|m| {
                                m["clobTokenIds"]
                                    .as_str()
                                    .filter(|t| t.contains(asset.as_str()))
                                    .map(|_| m["conditionId"].as_str().unwrap().to_string())
                            })
                        });
                        if let Some(cond) = cond {
                            let trade = fake::data_trade(asset, &cond, "0.35", &size, side, ts / 1000, &format!("0x{n:064x}"));
                            http.with(|s| s.trades.push(trade));
                        }
                        sent.lock().unwrap().push(Sent { asset: asset.clone(), size, ts_ms: ts });
                    }
                    n += 1;
                }
                let asset = &live[(n as usize / 2) % live.len()];
                let ts = clock.at(Utc::now()).timestamp_millis();
                let changes: Vec<serde_json::Value> = (0..10u64)
                    .map(|k| json!({"asset_id": asset, "price": format!("0.{}", 10 + (n + k) % 80), "size": format!("{}.5", k + 1),
                        "side": if k % 2 == 0 { "BUY" } else { "SELL" }, "hash": format!("{:040x}", n * 16 + k), "best_bid": "0.3", "best_ask": "0.7"}))
                    .collect();
                let frame = json!({"event_type": "price_change", "market": "0xc", "timestamp": ts.to_string(), "price_changes": changes});
                ws.send_to_asset(asset, &frame.to_string());
            }
        })
    };

    // Churn, restarts, the disk filled once, and samples, until the time is up.
    let t0 = Instant::now();
    let (mut next_market, mut closed) = (open_markets, 0u64);
    let (mut last_churn, mut last_restart) = (Instant::now(), Instant::now());
    let (mut restarts, mut disk_filled) = (0, false);
    let mut rss: Vec<(u64, u64)> = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if last_churn.elapsed() >= churn {
            last_churn = Instant::now();
            let (open, close) = (next_market, closed);
            http.with(|s| {
                s.events.push(fake::event(open, 1));
                if let Some(m) = s
                    .events
                    .iter_mut()
                    .flat_map(|e| e["markets"].as_array_mut().unwrap().iter_mut())
                    .find(|m| m["id"] == json!(format!("{}", 700_000 + close)))
                {
                    m["closed"] = json!(true);
                    m["active"] = json!(false);
                }
            });
            next_market += 1;
            closed += 1;
        }
        if last_restart.elapsed() >= restart_every {
            last_restart = Instant::now();
            restarts += 1;
            // The second outage fills the spool's disk too (a file takes all but ~64 KiB).
            let filler = disk.dir.path().join("filler");
            if restarts == 2 && !disk_filled {
                let free = nix_free_bytes(disk.dir.path());
                let _ = std::fs::write(&filler, vec![0u8; free.saturating_sub(64 << 10) as usize]);
                disk_filled = true;
            }
            cluster.down();
            tokio::time::sleep(Duration::from_secs(15)).await;
            cluster.up();
            let _ = std::fs::remove_file(&filler);
        }
        if t0.elapsed().as_secs() % 30 == 0 {
            rss.push((t0.elapsed().as_secs(), rss_kib(pid)));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = generator.await;
    // Let the writer and the backfills finish (gaps' backfills wait for their windows).
    let sent_count = sent.lock().unwrap().len();
    // Everything received written (queue and spool empty, the gaps of lost rows backfilled),
    // then the daemon stopped: the clock no longer moves the retention while we look.
    let mut d = d;
    crate::eventually(300, "the writer idle, the spool replayed, every gap's backfill settled", || async {
        let (code, json) = d.status(true).await;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let t = &v["trade_listener"];
        let owed = db
            .try_count(
                "SELECT count(*) FROM stream_gaps WHERE NOT planned AND (backfill_status IS NULL OR backfill_status LIKE 'retrying%')",
            )
            .await;
        code == 0 && t["queue_depth"] == 0 && t["spool_bytes"] == 0 && owed == Some(0)
    })
    .await;
    let (_, status) = d.status(true).await;
    d.signal(crate::daemon::SIGTERM);
    assert_eq!(d.exit_code(60).await, 0, "a clean stop");
    // The days the retention left: every trade sent for them is stored, once.
    let keep_from: chrono::NaiveDate = db
        .client()
        .await
        .query_one(
            "SELECT min(to_date(substring(c.relname from '_p([0-9]{8})$'), 'YYYYMMDD')) FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'trades_compact'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut stored: HashMap<(String, String), i64> = HashMap::new();
    {
        let rows = db
            .client()
            .await
            .query(
                "SELECT asset_id, size::text, count(*) FROM trades WHERE source_ts >= $1 GROUP BY 1, 2",
                &[&keep_from.and_hms_opt(0, 0, 0).unwrap().and_utc()],
            )
            .await
            .unwrap();
        for r in rows {
            stored.insert((r.get(0), r.get(1)), r.get(2));
        }
        // A trade the generator sent to a market it had just closed, after the daemon dropped
        // that market (churn), is quarantined ("not subscribed"), not lost: counted apart.
        let unsubscribed: std::collections::HashSet<(String, String)> = db
            .client()
            .await
            .query("SELECT frame FROM stream_quarantine WHERE reason LIKE '%not subscribed%'", &[])
            .await
            .unwrap()
            .iter()
            .filter_map(|r| serde_json::from_str::<serde_json::Value>(r.get::<_, &str>(0)).ok())
            .filter_map(|f| Some((f["asset_id"].as_str()?.to_string(), f["size"].as_str()?.to_string())))
            .collect();
        let (wanted, missing, after_close) = {
            let sent = sent.lock().unwrap();
            let want: Vec<&Sent> =
                sent.iter().filter(|s| chrono::DateTime::from_timestamp_millis(s.ts_ms).unwrap().date_naive() >= keep_from).collect();
            let absent: Vec<&&Sent> = want.iter().filter(|s| !stored.contains_key(&(s.asset.clone(), s.size.clone()))).collect();
            let after_close = absent.iter().filter(|s| unsubscribed.contains(&(s.asset.clone(), s.size.clone()))).count();
            (want.len(), absent.len() - after_close, after_close)
        };
        let doubled = stored.values().filter(|c| **c > 1).count();
        {
            let seq = db.client().await.query_one(
                "SELECT (SELECT COALESCE(last_value, 0) FROM pg_sequences WHERE sequencename = 'stream_tokens_token_key_seq'), (SELECT count(*) FROM stream_tokens)",
                &[],
            ).await.unwrap();
            let (seq, tokens): (i64, i64) = (seq.get(0), seq.get(1));
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            for line in d.log.text().lines().filter(|l| l.contains("ERROR")) {
                let kind: String = line.split("ERROR").nth(1).unwrap_or("").chars().filter(|c| !c.is_ascii_digit()).take(90).collect();
                *errors.entry(kind).or_default() += 1;
            }
            let partitions = db
                .count("SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'trades_compact'")
                .await;
            let compacted = db
                .count(&format!(
                    "SELECT count(*) FROM pg_class WHERE relkind = 'i' AND obj_description(oid, 'pg_class') = '{}'",
                    collector::db::partitions::COMPACTED
                ))
                .await;
            let dropped = d.log.text().matches("partitions past the retention dropped").count();
            println!(
                "soak: {secs} s real, {:.1} clock days, {restarts} database restarts, spool disk filled: {disk_filled}",
                (secs * speed as u64) as f64 / 86_400.0
            );
            println!(
                "soak: markets opened {} closed {closed}; trades sent {sent_count}, within the retention {} (from {keep_from}): missing {missing}, doubled {doubled}, quarantined as sent after their market closed {after_close}",
                next_market, wanted
            );
            println!(
                "soak: trades partitions now {partitions}; maintenance passes that dropped days: {dropped}; indexes compacted now: {compacted}"
            );
            println!("soak: stream_tokens: {tokens} rows, sequence at {seq}");
            println!("soak: RSS KiB by elapsed s: {rss:?}");
            println!("soak: ERROR lines by kind: {errors:#?}");
            println!("soak: status at the end: {status}");
            assert_eq!((missing, doubled), (0, 0), "every generated trade within the retention stored once");
            assert!(seq - tokens <= 2, "the key sequence follows the new ids: {seq} for {tokens} tokens");
            assert!(errors.values().all(|n| *n < 200), "an ERROR repeating without progress: {errors:#?}");
        }
    }
}

/// Free bytes of the filesystem holding `path` (statvfs).
fn nix_free_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}
