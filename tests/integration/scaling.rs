//! Several instances on one database (docs/scaling.md): slices of the universe that cover every
//! market once, and one leader for the shared work, handed over when it dies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use collector::slice::Slice;
use serde_json::Value;

use crate::daemon::{Daemon, FAST, FAST_STREAM};
use crate::fake::{self, Fake};
use crate::fake_ws::{FakeWs, trade_frame};
use crate::{eventually, pg};

async fn fake_of(markets: u64) -> Fake {
    let fake = Fake::start().await;
    fake.with(|s| s.events = (0..markets / 2).map(|e| fake::event(e, 2)).collect());
    fake::books_for_all(&fake, 1_795_683_663_127);
    fake
}

async fn status_json(d: &Daemon) -> Option<Value> {
    let (code, text) = d.status(true).await;
    (code == 0).then(|| serde_json::from_str(&text).ok()).flatten()
}

/// Two instances "0/2" and "1/2" on one database: every asset subscribed by exactly one of
/// them, all tokens of a market on the same one, every trade stored once; both in
/// `stream_instances`, one leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slices_cover_every_market_once() {
    let db = pg::fresh_db().await;
    let fake = fake_of(20).await;
    let ws = FakeWs::start().await;
    let config = |name: &str, shard: &str| format!("instance = \"{name}\"\n{FAST}{FAST_STREAM}shard = \"{shard}\"\n");
    let a = Daemon::start_ws(&db, &fake, &ws.url(), &config("a", "0/2"), &[]).await;
    let b = Daemon::start_ws(&db, &fake, &ws.url(), &config("b", "1/2"), &[]).await;
    let all: Vec<String> = (0..20).flat_map(|m| [fake::token_id(m, 0), fake::token_id(m, 1)]).collect();
    eventually(60, "every asset subscribed", || async { ws.live_assets().len() == all.len() }).await;
    // Each asset on exactly one live connection; both tokens of a market on one instance.
    let carriers: HashMap<String, usize> = ws.with(|s| {
        let mut n = HashMap::new();
        for c in s.conns.iter().filter(|c| c.alive) {
            for a in &c.assets {
                *n.entry(a.clone()).or_default() += 1;
            }
        }
        n
    });
    assert!(carriers.values().all(|n| *n == 1), "{carriers:?}");
    let (sa, sb) = (status_json(&a).await.unwrap(), status_json(&b).await.unwrap());
    let (na, nb) =
        (sa["trade_listener"]["assets_subscribed"].as_u64().unwrap(), sb["trade_listener"]["assets_subscribed"].as_u64().unwrap());
    assert_eq!(na + nb, 40, "{na} + {nb}");
    assert!(na > 0 && nb > 0, "both slices hold markets: {na} / {nb}");
    assert_eq!((sa["trade_listener"]["slice"].as_str(), sb["trade_listener"]["slice"].as_str()), (Some("0/2"), Some("1/2")));
    // The slices follow the documented hash of the condition id.
    let c = db.client().await;
    let rows = c.query("SELECT token_id, condition_id FROM tokens", &[]).await.unwrap();
    let expected_a = rows.iter().filter(|r| Slice { index: 0, count: 2 }.owns(r.get::<_, &str>(1))).count() as u64;
    assert_eq!(na, expected_a);
    // Every trade stored once.
    let t0 = crate::now_ms();
    for (n, asset) in all.iter().enumerate() {
        assert!(ws.send_to_asset(asset, &trade_frame(asset, n as u64, t0 + n as u64)));
    }
    eventually(30, "every trade stored", || async { db.try_count("SELECT count(*) FROM trades").await == Some(40) }).await;
    assert_eq!(db.try_count("SELECT count(DISTINCT (asset_id, tx_hash)) FROM trades").await, Some(40));
    // Both instances known, one leader.
    eventually(30, "both instances' heartbeats", || async {
        db.try_count("SELECT count(*) FROM stream_instances WHERE heartbeat_at > now() - interval '30 s'").await == Some(2)
    })
    .await;
    let roles = c.query("SELECT instance, slice, role FROM stream_instances ORDER BY instance", &[]).await.unwrap();
    let roles: Vec<(String, String, String)> = roles.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(roles.iter().filter(|r| r.2 == "leader").count(), 1, "{roles:?}");
    assert_eq!((roles[0].1.as_str(), roles[1].1.as_str()), ("0/2", "1/2"), "{roles:?}");
}

/// Two instances of one database: one leads (the catalog runs there only); killed (-9), the
/// other takes the catalog over within the stated bound (`db::leader`: the retry
/// interval, 2 s, plus a connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_death_hands_the_shared_work_over() {
    let db = pg::fresh_db().await;
    let fake = fake_of(4).await;
    let config = |name: &str| format!("instance = \"{name}\"\n{FAST}[stream]\nenabled = false\n");
    let mut a = Daemon::start(&db, &fake, &config("a"), &[]).await;
    eventually(30, "a leads", || async { status_json(&a).await.is_some_and(|s| s["role"] == "leader") }).await;
    let b = Daemon::start(&db, &fake, &config("b"), &[]).await;
    eventually(30, "b stands by", || async { status_json(&b).await.is_some_and(|s| s["role"] == "standby") }).await;
    // Several sweep intervals (1 s) pass: b's catalog does not run, a's does.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sb = status_json(&b).await.unwrap();
    assert!(sb["collectors"]["catalog"]["last_collect_ts"].is_null(), "a standby ran the catalog: {sb}");
    assert!(sb["collectors"]["books"]["last_collect_ts"].is_string(), "a standby polls its books: {sb}");
    assert!(!status_json(&a).await.unwrap()["collectors"]["catalog"]["last_collect_ts"].is_null());
    a.signal(9);
    let _ = a.exit_code(10).await;
    let killed = Instant::now();
    eventually(30, "b leads", || async { status_json(&b).await.is_some_and(|s| s["role"] == "leader") }).await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(5), "takeover took {took:?}");
    // And does the shared work: a market listed now reaches the catalog through b.
    fake.with(|s| s.events.push(fake::event(50, 2)));
    eventually(20, "the new market in the catalog", || async { db.try_count("SELECT count(*) FROM markets").await == Some(6) }).await;
    assert!(b.log.text().contains("leader for this database"), "{}", b.log.text());
}

/// `[database] distributed = true` on a database without Citus: refused at once with the
/// reason and the way out (exit 78), nothing half done.
#[tokio::test]
async fn distributed_without_citus_is_refused_clearly() {
    let db = pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let text = crate::config_text(&db, "http://127.0.0.1:9", "").replace("[database]\n", "[database]\ndistributed = true\n");
    let path = dir.path().join("collector.toml");
    std::fs::write(&path, text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["migrate", "--config", path.to_str().unwrap()])
        .env_remove("COLLECTOR_DATABASE_URL")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("no citus extension") && err.contains("CREATE EXTENSION citus"), "{err}");
}

/// The tables Citus places have what it requires: a distributed table's every unique index
/// (its primary key included) holds the distribution column; the keyed tables have no
/// foreign keys. Plain PostgreSQL, so it runs everywhere.
#[tokio::test]
async fn every_table_citus_distributes_can_be_distributed() {
    use collector::db::distribute::{PLACEMENT, Placement};
    let db = pg::fresh_db().await;
    drop(db.pool().await);
    let c = db.client().await;
    for (table, placement) in PLACEMENT {
        let exists: bool = c.query_one("SELECT to_regclass($1::text) IS NOT NULL", &[table]).await.unwrap().get(0);
        assert!(exists, "{table} exists");
        let Placement::Distributed { column, .. } = placement else { continue };
        let uniques = c
            .query(
                "SELECT x.relname::text, $2::text = ANY(ARRAY(SELECT a.attname::text FROM pg_attribute a
                        WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)))
                   FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
                  WHERE i.indrelid = $1::text::regclass AND i.indisunique",
                &[table, column],
            )
            .await
            .unwrap();
        for r in &uniques {
            assert!(r.get::<_, bool>(1), "{table}: unique index {} lacks {column}", r.get::<_, String>(0));
        }
        let fks: i64 = c
            .query_one("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND (conrelid = $1::text::regclass OR confrelid = $1::text::regclass)", &[table])
            .await
            .unwrap()
            .get(0);
        assert_eq!(fks, 0, "{table}: foreign keys");
    }
}

/// On a Citus coordinator (`COLLECTOR_TEST_CITUS_URL`, a database with `CREATE EXTENSION
/// citus` done): the migrations and the placement run, every table is placed as listed, and
/// the write path works unchanged. Skipped (and said so) without that URL: Citus is not
/// packaged for Debian.
#[tokio::test]
async fn citus_places_every_table() {
    let Ok(url) = std::env::var("COLLECTOR_TEST_CITUS_URL") else {
        eprintln!("skipped: COLLECTOR_TEST_CITUS_URL is not set (a Citus coordinator's database URL)");
        return;
    };
    let mut cfg =
        collector::config::Config::parse(&format!("[database]\nurl = \"{url}\"\ndistributed = true\n"), &Default::default()).unwrap();
    cfg.database.startup_deadline = Duration::from_secs(10);
    let pool = collector::db::connect(&cfg.database).await.unwrap();
    let mut conn = pool.get().await.unwrap();
    collector::db::migrate::run(&mut conn).await.unwrap();
    collector::db::distribute::run(&*conn).await.unwrap();
    assert!(collector::db::distribute::run(&*conn).await.unwrap().is_empty(), "a second run places nothing");
    for (table, placement) in collector::db::distribute::PLACEMENT {
        let kind: String = conn
            .query_one("SELECT partmethod::text FROM pg_dist_partition WHERE logicalrelid = $1::text::regclass", &[table])
            .await
            .unwrap()
            .get(0);
        let want = if matches!(placement, collector::db::distribute::Placement::Reference) { "n" } else { "h" };
        assert_eq!(kind, want, "{table}");
    }
    collector::db::partitions::maintain(&pool, collector::clock::today(), Default::default()).await.unwrap();
}

/// The stream every instance of a test receives: on every asset, every `every`, a level change
/// (its size says which step: `1.<step>`) and, every fifth step, a trade; until `stop`. Returns
/// the steps sent.
fn stream_traffic(
    fakes: Vec<FakeWs>,
    assets: Vec<(String, String)>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let t0 = crate::now_ms();
        let mut step = 0u64;
        let mut tick = tokio::time::interval(every);
        while !stop.is_cancelled() {
            tick.tick().await;
            for (k, (asset, market)) in assets.iter().enumerate() {
                let frame = serde_json::json!({"event_type": "price_change", "market": market, "timestamp": (t0 + step).to_string(),
                    "price_changes": [{"asset_id": asset, "price": "0.5", "size": format!("1.{step:06}"), "side": "BUY",
                        "hash": format!("{:040x}", step * 64 + k as u64)}]});
                let trade = (step % 5 == 0).then(|| trade_frame(asset, step * 64 + k as u64, t0 + step));
                for ws in &fakes {
                    ws.send_to_asset(asset, &frame.to_string());
                    if let Some(t) = &trade {
                        ws.send_to_asset(asset, t);
                    }
                }
            }
            step += 1;
        }
        step
    })
}

/// Every level change and trade of `steps` steps on `assets` stored exactly once: the counts of
/// (asset, step) that are missing and doubled.
async fn missing_and_doubled(db: &pg::TestDb, assets: &[(String, String)], steps: u64) -> (Vec<String>, Vec<String>) {
    let c = db.client().await;
    let rows = c.query("SELECT asset_id, size::text, count(*) FROM price_changes GROUP BY 1, 2", &[]).await.unwrap();
    let stored: HashMap<(String, String), i64> = rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
    let (mut missing, mut doubled) = (Vec::new(), Vec::new());
    for (asset, _) in assets {
        for step in 0..steps {
            match stored.get(&(asset.clone(), format!("1.{step:06}"))).copied().unwrap_or(0) {
                0 => missing.push(format!("{asset}@{step}")),
                1 => {}
                n => doubled.push(format!("{asset}@{step}x{n}")),
            }
        }
    }
    (missing, doubled)
}

/// Waits up to `secs` until every level change of the traffic ([`stream_traffic`]: `steps`
/// steps on `assets`) is stored, then asserts each is stored exactly once; a failure lists the
/// missing (the first 20) and the doubled, with `daemon`'s status and log when given.
async fn assert_every_level_change_once(db: &pg::TestDb, assets: &[(String, String)], steps: u64, secs: u64, daemon: Option<&Daemon>) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !missing_and_doubled(db, assets, steps).await.0.is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (missing, doubled) = missing_and_doubled(db, assets, steps).await;
    if missing.is_empty() && doubled.is_empty() {
        return;
    }
    let context = match daemon {
        Some(d) => format!("; status {:?}; log:\n{}", status_json(d).await, d.log.text()),
        None => String::new(),
    };
    panic!("missing {} {:?}, doubled {doubled:?}{context}", missing.len(), &missing[..missing.len().min(20)]);
}

/// Every trade of the traffic (every fifth step, on every asset) stored exactly once.
async fn assert_every_trade_once(db: &pg::TestDb, assets: &[(String, String)], steps: u64) {
    let trades = assets.len() as i64 * steps.div_ceil(5) as i64;
    eventually(30, "every trade stored", || async { db.try_count("SELECT count(*) FROM trades").await == Some(trades) }).await;
    assert_eq!(db.try_count("SELECT count(DISTINCT (asset_id, tx_hash)) FROM trades").await, Some(trades));
}

fn slice_role(s: &Value) -> &str {
    s["trade_listener"]["slice_role"].as_str().unwrap_or("")
}

/// Two instances of one slice (redundant, "0/1"): one writes the level changes, the other
/// holds them in memory. The writer killed (-9) mid-stream, the other takes over within the
/// stated bound (the election's retry, 2 s, + a connect, + the takeover's overlap, 2 s) and
/// from its window: every trade stored once, every level change stored once — none doubled,
/// none missing, and no takeover gap (its window reached back to the writer's last commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redundant_instance_takes_the_level_changes_over_without_a_hole_or_a_double() {
    let db = pg::fresh_db().await;
    let fake = fake_of(4).await;
    let ws = FakeWs::start().await;
    let config = |name: &str| format!("instance = \"{name}\"\n{FAST}{FAST_STREAM}");
    let mut a = Daemon::start_ws(&db, &fake, &ws.url(), &config("a"), &[]).await;
    eventually(60, "a writes the slice", || async { status_json(&a).await.is_some_and(|s| slice_role(&s) == "writer") }).await;
    let b = Daemon::start_ws(&db, &fake, &ws.url(), &config("b"), &[]).await;
    eventually(60, "b stands by with every asset", || async {
        status_json(&b).await.is_some_and(|s| slice_role(&s) == "standby" && s["trade_listener"]["assets_subscribed"] == 8)
    })
    .await;
    let assets = db.tokens_with_markets().await;
    assert_eq!(assets.len(), 8);
    eventually(30, "both carry every asset", || async {
        ws.with(|s| s.conns.iter().filter(|c| c.alive).map(|c| c.assets.len()).sum::<usize>()) == 16
    })
    .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = stream_traffic(vec![ws.clone()], assets.clone(), Duration::from_millis(20), stop.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Only a writes level changes meanwhile; b holds them.
    let sb = status_json(&b).await.unwrap();
    assert!(sb["trade_listener"]["standby_window_rows"].as_u64().unwrap() > 0, "{sb}");
    a.signal(9);
    let _ = a.exit_code(10).await;
    let killed = Instant::now();
    eventually(30, "b took the level changes over", || async {
        status_json(&b).await.is_some_and(|s| slice_role(&s) == "writer" && s["trade_listener"]["takeovers"].as_u64() >= Some(1))
    })
    .await;
    let took = killed.elapsed();
    println!("the standby took the level changes over {took:?} after the kill");
    assert!(took <= Duration::from_secs(8), "takeover took {took:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let steps = sender.await.unwrap();
    assert_every_level_change_once(&db, &assets, steps, 30, None).await;
    assert_every_trade_once(&db, &assets, steps).await;
    assert_eq!(db.try_count("SELECT count(*) FROM stream_gaps WHERE reason LIKE 'takeover%'").await, Some(0), "no takeover gap");
    assert!(b.log.text().contains("takeover done"), "{}", b.log.text());
    let c = db.client().await;
    let w = c.query_one("SELECT instance, epoch FROM stream_writers WHERE slice = '0/1'", &[]).await.unwrap();
    assert_eq!((w.get::<_, String>(0), w.get::<_, i64>(1)), ("b".to_string(), 2));
}

/// Three instances replace two while trading ("0/2", "1/2" → "0/3", "1/3", "2/3"): the new ones
/// hold the markets the old writers still write; each old one stopped, its markets move to
/// the new owners from their windows. Every level change and trade stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slices_become_three_while_trading_without_a_hole_or_a_double() {
    let db = pg::fresh_db().await;
    let fake = fake_of(12).await;
    let ws = FakeWs::start().await;
    let config = |name: &str, shard: &str| format!("instance = \"{name}\"\n{FAST}{FAST_STREAM}shard = \"{shard}\"\n");
    let mut old = Vec::new();
    for (name, shard) in [("a", "0/2"), ("b", "1/2")] {
        old.push(Daemon::start_ws(&db, &fake, &ws.url(), &config(name, shard), &[]).await);
    }
    eventually(60, "every asset subscribed", || async { ws.live_assets().len() == 24 }).await;
    for d in &old {
        eventually(30, "the old slices written", || async { status_json(d).await.is_some_and(|s| slice_role(&s) == "writer") }).await;
    }
    let assets = db.tokens_with_markets().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = stream_traffic(vec![ws.clone()], assets.clone(), Duration::from_millis(25), stop.clone());
    let mut new = Vec::new();
    for (name, shard) in [("c", "0/3"), ("d", "1/3"), ("e", "2/3")] {
        new.push(Daemon::start_ws(&db, &fake, &ws.url(), &config(name, shard), &[]).await);
    }
    eventually(60, "the new instances carry every asset too", || async {
        ws.with(|s| s.conns.iter().filter(|c| c.alive).map(|c| c.assets.len()).sum::<usize>()) == 48
    })
    .await;
    for d in &new {
        eventually(30, "the new slices taken", || async {
            status_json(d).await.is_some_and(|s| slice_role(&s) == "writer" && s["trade_listener"]["takeovers"].as_u64() >= Some(1))
        })
        .await;
        // Every market of theirs is an old writer's still: held.
        let s = status_json(d).await.unwrap();
        assert!(s["trade_listener"]["standby_window_rows"].as_u64() > Some(0), "{s}");
    }
    for mut d in old {
        tokio::time::sleep(Duration::from_secs(2)).await;
        d.signal(crate::daemon::SIGTERM);
        assert_eq!(d.exit_code(60).await, 0);
    }
    for d in &new {
        eventually(30, "the old writers' markets taken over", || async {
            status_json(d)
                .await
                .is_some_and(|s| s["trade_listener"]["takeovers"].as_u64() >= Some(2) && s["trade_listener"]["standby_window_rows"] == 0)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let steps = sender.await.unwrap();
    assert_every_level_change_once(&db, &assets, steps, 30, None).await;
    assert_every_trade_once(&db, &assets, steps).await;
    assert_eq!(db.try_count("SELECT count(*) FROM stream_writers").await, Some(3), "the old writers retired");
}

/// The fence: a batch of level changes written under an epoch a takeover has raised (a writer
/// cut off without knowing it) writes nothing and says so; a takeover waits for a batch in
/// flight; trades of a batch without level changes need no fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_writers_batch_writes_no_level_change() {
    use collector::db::stream::{Keys, Origin, Row, write_batch_fenced};
    use collector::db::writers;
    use collector::polymarket::decode::Side;
    use collector::polymarket::ws::LevelChange;
    let db = pg::fresh_db().await;
    let pool = db.pool().await;
    let keys = Keys::default();
    let slice = Slice::parse("0/1").unwrap();
    let session = db.client().await;
    let first = writers::take(&session, &slice, "a").await.unwrap();
    assert_eq!((first.fence.epoch, first.previous.as_deref()), (1, None));
    let now = chrono::Utc::now();
    let change = |size: &str| Row::PriceChange {
        change: LevelChange {
            asset_id: "t1".into(),
            price: "0.5".parse().unwrap(),
            size: size.parse().unwrap(),
            side: Side::Buy,
            hash: None,
            best_bid: None,
            best_ask: None,
        },
        condition_id: Some("0xc".into()),
        source_ts: now,
        received_at: now,
    };
    let written = write_batch_fenced(&pool, &keys, &[change("1")], Origin::Live, Some(&first.fence)).await.unwrap();
    assert_eq!(written, Some(0));
    session
        .execute("INSERT INTO stream_instances (instance, slice, role, version, started_at, heartbeat_at) VALUES ('a', '0/1', 'leader', 'x', now(), now())", &[])
        .await
        .unwrap();
    writers::report(&session, "a", now).await.unwrap();
    let second = writers::take(&session, &slice, "b").await.unwrap();
    assert_eq!(
        (second.fence.epoch, second.previous.as_deref(), second.previous_committed.map(|t| t.timestamp_micros())),
        (2, Some("a"), Some(now.timestamp_micros()))
    );
    let deposed = write_batch_fenced(&pool, &keys, &[change("2")], Origin::Live, Some(&first.fence)).await.unwrap();
    assert_eq!(deposed, None, "the old epoch is refused");
    assert_eq!(db.try_count("SELECT count(*) FROM price_changes").await, Some(1));
    // The new writer's copy of a row the old one stored is skipped by content.
    let again = write_batch_fenced(&pool, &keys, &[change("1"), change("3")], Origin::Elsewhere, Some(&second.fence)).await.unwrap();
    assert_eq!(again, Some(0));
    assert_eq!(db.try_count("SELECT count(*) FROM price_changes").await, Some(2));
    // A takeover waits for a batch holding the fence (here: a transaction that checked it).
    let mut held = db.client().await;
    let tx = held.transaction().await.unwrap();
    assert!(writers::holds(&tx, &second.fence).await.unwrap());
    let taking = tokio::spawn(async move {
        let s = db.client().await;
        writers::take(&s, &slice, "c").await.unwrap().fence.epoch
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!taking.is_finished(), "the takeover waits for the batch in flight");
    tx.commit().await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), taking).await.unwrap().unwrap(), 3);
}

/// A redundant pair, each on its own feed: the writer's connections dropped mid-stream (its
/// gap: the level changes sent meanwhile never reached it), the standby writes them from its
/// window into the gap — none missing, none doubled — and says so on the gap's row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_fills_its_writers_gap_from_its_window() {
    let db = pg::fresh_db().await;
    let fake = fake_of(4).await;
    let (ws_a, ws_b) = (FakeWs::start().await, FakeWs::start().await);
    let config = |name: &str| format!("instance = \"{name}\"\n{FAST}{FAST_STREAM}");
    let a = Daemon::start_ws(&db, &fake, &ws_a.url(), &config("a"), &[]).await;
    eventually(60, "a writes the slice", || async { status_json(&a).await.is_some_and(|s| slice_role(&s) == "writer") }).await;
    let b = Daemon::start_ws(&db, &fake, &ws_b.url(), &config("b"), &[]).await;
    eventually(60, "both carry every asset", || async { ws_a.live_assets().len() == 8 && ws_b.live_assets().len() == 8 }).await;
    eventually(30, "b stands by", || async { status_json(&b).await.is_some_and(|s| slice_role(&s) == "standby") }).await;
    let assets = db.tokens_with_markets().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = stream_traffic(vec![ws_a.clone(), ws_b.clone()], assets.clone(), Duration::from_millis(20), stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    ws_a.drop_all();
    eventually(30, "a reconnected", || async { ws_a.live_assets().len() == 8 }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let steps = sender.await.unwrap();
    eventually(30, "the writer's gap filled by b", || async {
        db.try_count(
            "SELECT count(*) FROM stream_gaps WHERE instance = 'a' AND filled_by = 'b' AND filled_rows > 0 AND filled_from <= started_at",
        )
        .await
            >= Some(1)
    })
    .await;
    assert_every_level_change_once(&db, &assets, steps, 30, None).await;
    let sb = status_json(&b).await.unwrap();
    assert!(sb["trade_listener"]["level_changes_filled"].as_u64() > Some(0), "{sb}");
    assert_eq!(slice_role(&sb), "standby");
}

/// An instance alone (the election on, as by default) whose database stops for longer than
/// its standby window while level changes flow: it stays its slice's writer (nobody took the
/// slice meanwhile: it goes on under its epoch), its level changes are spooled and replayed as
/// before — none missing, none doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_alone_keeps_its_level_changes_through_a_database_restart() {
    let cluster = pg::PrivateCluster::start();
    let db = cluster.test_db();
    let fake = fake_of(2).await;
    let ws = FakeWs::start().await;
    let config = format!("instance = \"a\"\n{FAST}{FAST_STREAM}standby_window_secs = 5\nqueue_capacity = 50\n");
    let a = Daemon::start_ws(&db, &fake, &ws.url(), &config, &[]).await;
    eventually(60, "a writes the slice", || async {
        status_json(&a).await.is_some_and(|s| slice_role(&s) == "writer" && s["trade_listener"]["takeovers"] == 1)
    })
    .await;
    eventually(30, "every asset carried", || async { ws.live_assets().len() == 4 }).await;
    let assets = db.tokens_with_markets().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = stream_traffic(vec![ws.clone()], assets.clone(), Duration::from_millis(20), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.down();
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.up();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let steps = sender.await.unwrap();
    assert_every_level_change_once(&db, &assets, steps, 60, Some(&a)).await;
    let s = status_json(&a).await.unwrap();
    assert_eq!(slice_role(&s), "writer");
    assert!(s["trade_listener"]["spooled_rows"].as_u64() > Some(0), "the outage was spooled: {s}");
    assert_eq!(s["trade_listener"]["level_changes_handed_over"], 0, "{s}");
    assert_eq!(db.try_count("SELECT epoch FROM stream_writers WHERE slice = '0/1'").await, Some(1), "went on under its epoch");
    assert!(a.log.text().contains("going on"), "{}", a.log.text());
}

async fn role(d: &Daemon) -> String {
    status_json(d).await.map(|s| s["role"].as_str().unwrap_or("").to_string()).unwrap_or_default()
}

/// A leader cut off the network (every byte held, as a dead link does): it steps down when its
/// session stops answering (a check every 2 s, 3 s to answer), long before the server drops
/// that session (`db::leader::SERVER_DROPS_AFTER`, simulated by the proxy); only then does the
/// other instance lead (within its 2 s retry) — never two leaders at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_the_network_steps_down_before_another_leads() {
    use collector::db::leader::SERVER_DROPS_AFTER;
    let cluster = pg::PrivateCluster::start();
    let proxy = pg::HangingProxy::start(&cluster).await;
    let fake = fake_of(4).await;
    let config = |name: &str| format!("instance = \"{name}\"\n{FAST}[stream]\nenabled = false\n");
    let a = Daemon::start(&proxy.test_db(), &fake, &config("a"), &[]).await;
    eventually(30, "a leads", || async { role(&a).await == "leader" }).await;
    let b = Daemon::start(&cluster.test_db(), &fake, &config("b"), &[]).await;
    eventually(30, "b stands by", || async { role(&b).await == "standby" }).await;
    let cut = Instant::now();
    proxy.cut(SERVER_DROPS_AFTER);
    let (mut a_down, mut b_up) = (None, None);
    while cut.elapsed() < Duration::from_secs(40) && b_up.is_none() {
        let (ra, rb) = (role(&a).await, role(&b).await);
        assert!(!(ra == "leader" && rb == "leader"), "two leaders {:?} after the cut", cut.elapsed());
        if a_down.is_none() && ra == "standby" {
            a_down = Some(cut.elapsed());
        }
        if rb == "leader" {
            b_up = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (a_down, b_up) = (a_down.expect("a stepped down"), b_up.expect("b leads"));
    println!("cut off: a stepped down after {a_down:?}, b leads after {b_up:?} (the server dropped a's session at {SERVER_DROPS_AFTER:?})");
    // The bound is 5 s (a check every 2 s, 3 s to answer); the rest is this poll's slack.
    assert!(a_down <= Duration::from_secs(7), "a stepped down after {a_down:?}");
    assert!(b_up >= SERVER_DROPS_AFTER && b_up <= SERVER_DROPS_AFTER + Duration::from_secs(5), "b led after {b_up:?}");
    assert!(a.log.text().contains("stepping down"), "{}", a.log.text());
}
