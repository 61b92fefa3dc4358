//! The universe benchmark (BENCHMARKS.md, "Universe"): PostgreSQL, the load generator
//! (`loadgen`, its own process) and the release `collector` as three processes; the universe
//! ramped through steps of assets and events a second (`BENCH_UNIVERSE_STEPS`, default
//! `40000:10000,160000:10000,320000:10000,320000:30000,320000:60000`), each held
//! `BENCH_UNIVERSE_HOLD_SECS` (default 300) once every asset is subscribed. Per step: the
//! collector's and PostgreSQL's CPU (cores), resident memory (peak and at the end, and per
//! asset), connections, the time until every asset was subscribed, 429s met, the catalog sweep
//! and books poll cycle times, p99 receive → commit; at the end, rows stored against rows sent
//! and trades missing or doubled against the generator's log of every trade.
//!
//! `cargo test --release --features loadgen --test integration bench_universe -- --ignored --nocapture`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::bench::{pg_cpu, pg_cpu_between};
use crate::pg;

fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    (fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / 100.0
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

async fn get_json(url: &str) -> Value {
    let out = tokio::process::Command::new("curl").args(["-s", "--max-time", "10", url]).output().await.unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

async fn post_json(url: &str, body: &Value) -> Value {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-X", "POST", "-H", "content-type: application/json", "-d", &body.to_string(), url])
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

async fn status(socket: &std::path::Path) -> Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["status", "--json", "--socket", socket.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: BENCHMARKS.md"]
async fn bench_universe_ramp() {
    let steps: Vec<(u64, u64)> = std::env::var("BENCH_UNIVERSE_STEPS")
        .unwrap_or_else(|_| "40000:10000,160000:10000,320000:10000,320000:30000,320000:60000".into())
        .split(',')
        .map(|s| {
            let (a, r) = s.split_once(':').unwrap();
            (a.parse().unwrap(), r.parse().unwrap())
        })
        .collect();
    let hold = Duration::from_secs(std::env::var("BENCH_UNIVERSE_HOLD_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(300));
    let db = pg::fresh_db().await;
    drop(db.pool().await);
    let dir = tempfile::tempdir().unwrap();
    let trades_log = dir.path().join("trades.jsonl");
    let (first_assets, first_rate) = steps[0];
    let mut loadgen = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--markets", &(first_assets / 2).to_string(), "--rate", &first_rate.to_string(), "--seed", "7"])
        .args(["--handshakes-per-sec", "20", "--trades-log", trades_log.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(loadgen.stdout.take().unwrap()).lines();
    let addr = lines.next_line().await.unwrap().unwrap().trim_start_matches("listening on ").to_string();
    let lg = format!("http://{addr}");
    let socket = dir.path().join("status.sock");
    let text = crate::config_text_ws(
        &db,
        &lg,
        &format!("ws://{addr}/ws/market"),
        &format!(
            "[daemon]\nstatus_socket = \"{}\"\n[catalog]\nfull_sweep_interval_secs = 120\nhistory = false\n[stream]\nbackfill = true\n",
            socket.display()
        ),
    )
    .replace("gamma_requests_per_10s = 10000", "gamma_requests_per_10s = 200")
    .replace("clob_books_requests_per_10s = 10000", "clob_books_requests_per_10s = 250");
    let config = dir.path().join("collector.toml");
    std::fs::write(&config, &text).unwrap();
    let mut collector = tokio::process::Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["collect", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn,collector=info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (pid, lg_pid) = (collector.id().unwrap(), loadgen.id().unwrap());
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let log = log.clone();
        let mut err = tokio::io::BufReader::new(collector.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(l)) = err.next_line().await {
                log.lock().unwrap().push(l);
            }
        });
    }
    let started = Instant::now();
    println!(
        "| step | assets | events/s | subscribed after | collector CPU | PostgreSQL CPU | generator CPU | RSS peak / end (MB) | per asset | connections | 429s | catalog sweep | books cycle | p99 commit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, (assets, rate)) in steps.iter().copied().enumerate() {
        let step_start = Instant::now();
        post_json(&format!("{lg}/control"), &serde_json::json!({"markets": assets / 2, "rate": rate})).await;
        let refused0 = get_json(&format!("{lg}/stats")).await["refused_429"].as_u64().unwrap_or(0);
        // Until every asset is subscribed (bounded: a step that cannot is reported so).
        let mut subscribed_after = None;
        let mut peak: f64 = 0.0;
        while step_start.elapsed() < Duration::from_secs(1800) {
            let s = get_json(&format!("{lg}/stats")).await;
            peak = peak.max(rss_mb(pid));
            if s["subscribed_assets"].as_u64() == Some(assets) {
                subscribed_after = Some(if i == 0 { started.elapsed() } else { step_start.elapsed() });
                break;
            }
            if collector.try_wait().unwrap().is_some() {
                panic!("the collector exited: {}", log.lock().unwrap().join("\n"));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // Held: CPU over the hold, memory sampled.
        let (c0, g0, p0, t0) = (proc_cpu(pid), proc_cpu(lg_pid), pg_cpu(&db).await, Instant::now());
        while t0.elapsed() < hold {
            tokio::time::sleep(Duration::from_secs(5)).await;
            peak = peak.max(rss_mb(pid));
        }
        let secs = t0.elapsed().as_secs_f64();
        let (cpu, pgc, lg_cpu) =
            ((proc_cpu(pid) - c0) / secs, pg_cpu_between(&p0, &pg_cpu(&db).await) / secs, (proc_cpu(lg_pid) - g0) / secs);
        let end = rss_mb(pid);
        let st = status(&socket).await;
        let s = get_json(&format!("{lg}/stats")).await;
        let t = &st["trade_listener"];
        let pass = |c: &str| st["collectors"][c]["last_pass_secs"].as_f64().map_or("—".to_string(), |s| format!("{s:.0} s"));
        println!(
            "| {} | {assets} | {rate} | {} | {cpu:.2} | {pgc:.2} | {lg_cpu:.2} | {peak:.0} / {end:.0} | {:.2} KB | {} | {} | {} | {} | {} ms |",
            i + 1,
            subscribed_after.map_or("never (30 min)".to_string(), |d| format!("{:.0} s", d.as_secs_f64())),
            end * 1024.0 / assets as f64,
            t["connections_active"],
            s["refused_429"].as_u64().unwrap_or(0) - refused0,
            pass("catalog"),
            pass("books"),
            t["commit_latency_p99_ms"],
        );
    }
    // The end: the stream stops, everything received is written; rows against what was sent.
    post_json(&format!("{lg}/control"), &serde_json::json!({"rate": 0})).await;
    crate::eventually(600, "the writer idle", || async {
        let t = &status(&socket).await["trade_listener"];
        t["queue_depth"] == 0 && t["spool_bytes"] == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = get_json(&format!("{lg}/stats")).await;
    let c = db.client().await;
    let count = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let (changes, trades, quotes) = (
        count("SELECT count(*) FROM price_changes").await,
        count("SELECT count(*) FROM trades WHERE source = 'ws'").await,
        count("SELECT count(*) FROM quotes").await,
    );
    println!(
        "rows: level changes {changes} stored / {} sent; trades {trades} / {}; quotes {quotes} / {} (one per asset and millisecond kept)",
        sent["sent"]["level_changes"], sent["sent"]["last_trade_price"], sent["sent"]["best_bid_ask"]
    );
    // Every trade of the generator's log, once.
    let logged = std::fs::read_to_string(&trades_log).unwrap();
    let mut want: HashMap<(String, String), u32> = HashMap::new();
    for l in logged.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        *want.entry((v["asset_id"].as_str().unwrap().to_string(), v["tx"].as_str().unwrap().to_string())).or_default() += 1;
    }
    let rows = c.query("SELECT asset_id, tx_hash, count(*) FROM trades GROUP BY 1, 2", &[]).await.unwrap();
    let got: HashMap<(String, String), i64> = rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
    let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
    let doubled = got.values().filter(|n| **n > 1).count();
    println!("trades in the generator's log: {}; missing {missing}, doubled {doubled}", want.len());
    let errors: Vec<String> = log.lock().unwrap().iter().filter(|l| l.contains("ERROR")).take(10).cloned().collect();
    println!("collector ERROR lines (first 10): {errors:#?}");
    let _ = collector.kill().await;
    let _ = loadgen.kill().await;
}
