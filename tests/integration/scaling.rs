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
