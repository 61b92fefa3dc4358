//! The live stream against the fake market WebSocket (and the fake Data API for backfill),
//! writing to a real PostgreSQL.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use collector::collectors::Collector;
use collector::collectors::catalog::{CatalogCtx, CatalogState, FullSweep};
use collector::collectors::stream::sink::Sink;
use collector::collectors::stream::{self, StreamDeps, StreamHandle, StreamStats};
use collector::config::{Config, Env};
use collector::daemon::supervisor::Supervisor;
use collector::db::partitions::partition_name;
use collector::db::stream::{Keys, Origin, Row, TradeSource, write_batch};
use collector::polymarket::client::PolymarketClient;
use collector::polymarket::decode::Side;
use collector::polymarket::ws::Trade;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::fake::{self, Fake};
use crate::fake_ws::{FakeWs, trade_frame};
use crate::{config_text_ws, eventually, pg};

const FAST_STREAM: &str = "[stream]\nping_interval_secs = 1\n\
    refresh_interval_secs = 1\nreconnect_base_ms = 100\nreconnect_max_secs = 1\nconnect_interval_ms = 20\nflush_interval_ms = 20\n";

pub struct Harness {
    pub db: pg::TestDb,
    pub ws: FakeWs,
    pub http: Fake,
    pub sink: Arc<Sink>,
    pub stats: Arc<StreamStats>,
    pub supervisor: Supervisor,
    stream: Option<StreamHandle>,
}

impl Harness {
    /// The catalog of `markets` fake markets swept into `db`, then the stream started with
    /// `stream_extra` added to the fast test settings.
    async fn start(db: pg::TestDb, markets: u64, stream_extra: &str) -> Harness {
        Self::start_with(db, markets, &format!("{FAST_STREAM}{stream_extra}")).await
    }

    /// Like `start`, with the whole `[stream]` section given.
    pub async fn start_with(db: pg::TestDb, markets: u64, stream_section: &str) -> Harness {
        Self::start_elected(db, markets, stream_section, false).await
    }

    /// Like `start_with`; with `election`, the leader election runs (as in the daemon) and the
    /// stream writes its level changes as its slice's fenced writer (`db::writers`).
    pub async fn start_elected(db: pg::TestDb, markets: u64, stream_section: &str, election: bool) -> Harness {
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("collector=info,warn").try_init();
        let http = Fake::start().await;
        http.with(|s| s.events = (0..markets).map(|e| fake::event(e, 1)).collect());
        let ws = FakeWs::start().await;
        let text = config_text_ws(&db, &http.url(), &ws.url(), stream_section);
        let cfg = Config::parse(&text, &Env::default()).unwrap();
        let client = Arc::new(PolymarketClient::new(&cfg.upstream).unwrap());
        let pool = db.pool().await;
        let ctx =
            CatalogCtx { client: client.clone(), pool: pool.clone(), cfg: cfg.catalog.clone(), state: Arc::new(CatalogState::default()) };
        FullSweep(ctx).collect_once().await.unwrap();
        let supervisor = Supervisor::new(CancellationToken::new(), &cfg.daemon, collector::fault::from_env());
        let handle = stream::spawn(StreamDeps {
            cfg: cfg.stream.clone(),
            ws_url: cfg.upstream.ws_url.clone(),
            retry_after_max: cfg.upstream.retry_after_max,
            pool,
            client,
            restarts: Arc::new(supervisor.clone()),
            drain_grace: Duration::from_secs(10),
            stall_timeout: cfg.daemon.stall_timeout,
            fault_spec: None,
            archive: cfg.archive.enabled.then(|| cfg.archive.clone()),
            leadership: if election {
                let me = collector::db::leader::Identity {
                    instance: "test".into(),
                    slice: cfg.stream.shard,
                    stream: true,
                    started_at: chrono::Utc::now(),
                };
                collector::db::leader::spawn(cfg.database.clone(), me, CancellationToken::new())
            } else {
                collector::db::leader::Leadership::always()
            },
            instance: "test".into(),
        })
        .await
        .unwrap();
        let monitor = handle.monitor();
        Harness { db, ws, http, sink: monitor.sink.clone(), stats: monitor.stats.clone(), supervisor, stream: Some(handle) }
    }

    /// Applies the stream settings of `stream_section` live, as a reload does.
    pub fn reconfigure(&self, stream_section: &str) {
        let text = config_text_ws(&self.db, &self.http.url(), &self.ws.url(), stream_section);
        let cfg = Config::parse(&text, &Env::default()).unwrap();
        self.stream.as_ref().unwrap().reconfigure(&cfg.stream);
    }

    pub async fn stop(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        self.stream.take().unwrap().stop(deadline).await;
    }

    pub async fn trades(&self) -> i64 {
        self.db.try_count("SELECT count(*) FROM trades").await.unwrap_or(-1)
    }
}

fn all_tokens(markets: u64) -> HashSet<String> {
    (0..markets).flat_map(|m| [fake::token_id(m, 0), fake::token_id(m, 1)]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_sharded_books_dumped_trades_stored_once_and_oddities_quarantined() {
    let db = pg::fresh_db().await;
    let mut h = Harness::start(db, 110, "max_assets_per_connection = 99\n").await;
    h.ws.with(|s| s.ping_deadline = Some(Duration::from_millis(2500)));
    let want = all_tokens(110);
    eventually(20, "220 assets over 3 connections", || async { h.ws.live_assets() == want && h.ws.live_connections() == 3 }).await;
    h.ws.with(|s| {
        for c in s.conns.iter().filter(|c| c.alive) {
            assert!(c.assets.len() <= 99, "a connection carries {}", c.assets.len());
        }
        // Sharded by market: both tokens of every market on one connection.
        for m in 0..110 {
            let (a, b) = (fake::token_id(m, 0), fake::token_id(m, 1));
            assert!(
                s.conns.iter().filter(|c| c.alive).any(|c| c.assets.contains(&a) && c.assets.contains(&b)),
                "market {m} split over connections"
            );
        }
        let first = s.frames.iter().filter(|f| f["type"] == "market").count();
        assert_eq!(first, 3, "each connection opened with one type:market frame");
        assert!(s.frames.iter().all(|f| f["type"] != "market" || (f["initial_dump"] == true && f["custom_feature_enabled"] == true)));
    });
    eventually(20, "initial dumps stored", || async {
        h.db.try_count("SELECT count(*) FROM book_snapshots WHERE source = 'ws'").await == Some(220)
    })
    .await;

    // Trades, one of them delivered twice: stored once each.
    let asset = fake::token_id(7, 1);
    let t0 = crate::now_ms();
    for n in 0..50 {
        assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, n, t0 + n)));
    }
    h.ws.send_to_asset(&asset, &trade_frame(&asset, 3, t0 + 3));
    // An array frame mixing a trade, an unknown event and a malformed trade.
    let mixed = format!(
        "[{}, {{\"event_type\": \"mystery\", \"x\": 1}}, {{\"event_type\": \"last_trade_price\", \"asset_id\": \"{asset}\"}}]",
        trade_frame(&asset, 100, t0 + 100)
    );
    h.ws.send_to_asset(&asset, &mixed);
    h.ws.send_to_asset(&asset, "NO NEW ASSETS");
    h.ws.send_to_asset(&asset, "SOMETHING ODD");
    eventually(20, "51 distinct trades", || async { h.trades().await == 51 }).await;
    let row =
        h.db.client()
            .await
            .query_one(
                "SELECT price::text, size::text, side, source, tx_hash, (extract(epoch from source_ts)*1000)::bigint,
                    received_at > now() - interval '1 minute' FROM trades WHERE size = 10.000003",
                &[],
            )
            .await
            .unwrap();
    assert_eq!(row.get::<_, String>(0), "0.35");
    assert_eq!(row.get::<_, String>(1), "10.000003");
    assert_eq!(row.get::<_, String>(2), "SELL");
    assert_eq!(row.get::<_, String>(3), "ws");
    assert_eq!(row.get::<_, String>(4), format!("0x{:064x}", 3));
    assert_eq!(row.get::<_, i64>(5), (t0 + 3) as i64);
    assert!(row.get::<_, bool>(6));
    eventually(10, "quarantined frames", || async { h.db.try_count("SELECT count(*) FROM stream_quarantine").await == Some(3) }).await;
    let reasons: Vec<String> =
        h.db.client()
            .await
            .query("SELECT reason FROM stream_quarantine ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert!(reasons.iter().any(|r| r.contains("unknown event_type")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("last_trade_price")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("unexpected text")), "{reasons:?}");

    // Price changes apply to the dumped book; other events land in their tables.
    let pc = json!({"event_type": "price_change", "market": "0x1", "timestamp": (t0 + 500).to_string(),
        "price_changes": [{"asset_id": asset, "price": "0.34", "size": "99", "side": "BUY", "hash": "h1", "best_bid": "0.34", "best_ask": "0.35"}]});
    h.ws.send_to_asset(&asset, &pc.to_string());
    let quote = json!({"event_type": "best_bid_ask", "market": "0x1", "asset_id": asset, "best_bid": "0.34", "best_ask": "0.35", "spread": "0.01", "timestamp": (t0 + 600).to_string()});
    h.ws.send_to_asset(&asset, &quote.to_string());
    let tick = json!({"event_type": "tick_size_change", "market": "0x1", "asset_id": asset, "old_tick_size": "0.01", "new_tick_size": "0.001", "timestamp": (t0 + 700).to_string()});
    h.ws.send_to_asset(&asset, &tick.to_string());
    eventually(10, "price change, quote, tick size stored", || async {
        h.db.try_count("SELECT count(*) FROM price_changes WHERE size = 99").await == Some(1)
            && h.db.try_count("SELECT count(*) FROM quotes").await == Some(1)
            && h.db.try_count("SELECT count(*) FROM tick_size_changes WHERE new_tick_size = 0.001").await == Some(1)
    })
    .await;

    // A new market on the stream is subscribed at once; a resolved one is dropped.
    let mut nm: serde_json::Value = fake::fixture("ws_other_events.json");
    let new_market = nm["new_market"].take();
    let new_assets: Vec<String> = new_market["assets_ids"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    h.ws.broadcast(&new_market.to_string());
    eventually(10, "new market subscribed", || async {
        let live = h.ws.live_assets();
        new_assets.iter().all(|a| live.contains(a))
    })
    .await;
    eventually(10, "new market registered", || async {
        h.db.try_count("SELECT count(*) FROM tokens WHERE market_id = '690377'").await == Some(2)
            && h.db.try_count("SELECT count(*) FROM market_events WHERE kind = 'new_market'").await == Some(1)
    })
    .await;
    let resolved = json!({"event_type": "market_resolved", "id": "700007", "market": format!("0x{:064x}", 8),
        "assets_ids": [fake::token_id(7, 0), fake::token_id(7, 1)], "winning_asset_id": fake::token_id(7, 1),
        "winning_outcome": "No", "timestamp": "1795700100448"});
    h.ws.broadcast(&resolved.to_string());
    eventually(10, "resolved market unsubscribed", || async { !h.ws.live_assets().contains(&asset) }).await;
    eventually(10, "resolved market updated", || async {
        h.db.try_count("SELECT count(*) FROM markets WHERE id = '700007' AND resolved AND closed AND winning_outcome_index = 1").await
            == Some(1)
    })
    .await;

    // Pings: never before subscribing, then every second on every connection — past the
    // fake's 2.5 s deadline, so upstream never had a reason to close one.
    eventually(20, "three pings on every connection", || async {
        h.ws.with(|s| s.conns.iter().filter(|c| c.alive).all(|c| c.pings.len() >= 3))
    })
    .await;
    let (early, no_ping) = h.ws.with(|s| (s.early_pings, s.closed_for_no_ping));
    assert_eq!(early, 0);
    assert_eq!(no_ping, 0);
    assert_eq!(h.stats.reconnects.load(Ordering::Relaxed), 0);
    h.stop().await;
    assert_eq!(
        h.db.try_count("SELECT count(*) FROM stream_gaps WHERE planned AND reason = 'shutdown' AND ended_at IS NULL").await,
        Some(1)
    );
}

/// The running stream compacts the partitions of closed days beside its writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_compacts_closed_days() {
    use collector::db::partitions;
    let db = pg::fresh_db().await;
    let closed = chrono::Utc::now().date_naive() - chrono::Duration::days(3);
    partitions::ensure(&db.pool().await, closed, closed).await.unwrap();
    let mut h = Harness::start(db, 1, "").await;
    let compacted = format!(
        "SELECT count(*) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
         WHERE x.indrelid = '{}'::regclass AND obj_description(c.oid, 'pg_class') = '{}'",
        partition_name("trades_compact", closed),
        partitions::COMPACTED
    );
    eventually(20, "the closed day's trades compacted", || async { h.db.try_count(&compacted).await == Some(1) }).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stall_is_detected_rebuilt_and_recorded_as_a_gap() {
    let db = pg::fresh_db().await;
    let mut h = Harness::start(db, 3, "backfill = false\nsilence_timeout_secs = 3\n").await;
    eventually(20, "connected", || async { h.ws.live_connections() == 1 }).await;
    eventually(20, "books", || async { h.db.try_count("SELECT count(*) FROM book_snapshots WHERE source = 'ws'").await == Some(6) }).await;
    h.ws.silence_all();
    eventually(20, "stall detected and a new connection up", || async {
        h.stats.stalls.load(Ordering::Relaxed) >= 1 && h.ws.live_connections() == 1 && h.ws.with(|s| s.conns.len()) >= 2
    })
    .await;
    eventually(20, "gap closed", || async {
        h.db.try_count(
            "SELECT count(*) FROM stream_gaps WHERE reason = 'stall' AND ended_at IS NOT NULL AND asset_count = 6 AND NOT planned",
        )
        .await
            == Some(1)
    })
    .await;
    // The resubscription asked for a fresh dump; trades flow again.
    let asset = fake::token_id(1, 0);
    assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, 1, crate::now_ms())));
    eventually(10, "trade after the stall", || async { h.trades().await == 1 }).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abrupt_drop_is_a_gap_whose_trades_are_backfilled_once() {
    let db = pg::fresh_db().await;
    let mut h = Harness::start(db, 2, "").await;
    let asset = fake::token_id(0, 0);
    let cond = format!("0x{:064x}", 1);
    eventually(20, "connected", || async { h.ws.live_connections() == 1 }).await;
    // A trade seen live, which the Data API will list too: it must not be stored twice.
    let now_ms = chrono::Utc::now().timestamp_millis() as u64;
    assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, 1, now_ms)));
    eventually(10, "live trade", || async { h.trades().await == 1 }).await;

    // The connection drops; the next two handshakes are refused with 429 + Retry-After: 1.
    h.ws.with(|s| s.refuse_handshakes = 2);
    h.ws.drop_all();
    let gap_ts = chrono::Utc::now().timestamp();
    h.http.with(|s| {
        s.trades = vec![
            // The live one again (same tx hash, side, size; Data API time in seconds).
            fake::data_trade(&asset, &cond, "0.35", "10.000001", "SELL", (now_ms / 1000) as i64, &format!("0x{:064x}", 1)),
            // Two fills of one transaction during the gap, float prices as the API writes them.
            fake::data_trade(&asset, &cond, "0.709999959", "1.464786", "BUY", gap_ts, "0xfeed"),
            fake::data_trade(&asset, &cond, "0.2972581967", "244", "BUY", gap_ts, "0xfeed"),
            // A trade of an asset not subscribed, and one long before the gap: not ours.
            fake::data_trade("12345", &cond, "0.5", "1", "BUY", gap_ts, "0xother"),
            fake::data_trade(&asset, &cond, "0.5", "3", "SELL", gap_ts - 3600, "0xold"),
        ];
    });
    eventually(30, "reconnected after the refusals", || async { h.ws.live_connections() == 1 && h.ws.with(|s| s.refused) == 2 }).await;
    eventually(30, "gap backfilled", || async {
        h.db.try_count("SELECT count(*) FROM stream_gaps WHERE backfill_status = 'done' AND ended_at IS NOT NULL").await == Some(1)
    })
    .await;
    let rows = h.db.client().await.query("SELECT price::text, size::text, source FROM trades ORDER BY source, size", &[]).await.unwrap();
    let got: Vec<(String, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        got,
        vec![
            ("0.709999959".into(), "1.464786".into(), "backfill".into()),
            ("0.2972581967".into(), "244".into(), "backfill".into()),
            ("0.35".into(), "10.000001".into(), "ws".into()),
        ]
    );
    // The backfill's trades are counted where the metrics say: in the new trades stored, and
    // as the backfill's own.
    let health = h.sink.stats.trades_inserted.load(Ordering::Relaxed);
    assert_eq!(h.stats.trades_backfilled.load(Ordering::Relaxed), 2);
    assert_eq!(health, 3, "one stream trade and two backfilled");
    let gap = h.db.client().await.query_one("SELECT reason, backfill_trades, asset_count FROM stream_gaps", &[]).await.unwrap();
    assert!(
        gap.get::<_, String>(0).contains("closed")
            || gap.get::<_, String>(0).contains("error")
            || gap.get::<_, String>(0).contains("end of stream"),
        "{}",
        gap.get::<_, String>(0)
    );
    assert_eq!(gap.get::<_, Option<i32>>(1), Some(2));
    assert_eq!(gap.get::<_, i32>(2), 4);
    assert!(h.http.with(|s| s.queries["v2/trades"][0].contains("condition=")));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_falls_back_to_v1_when_v2_is_retired() {
    let db = pg::fresh_db().await;
    let mut h = Harness::start(db, 1, "").await;
    let asset = fake::token_id(0, 1);
    let cond = format!("0x{:064x}", 1);
    eventually(20, "connected", || async { h.ws.live_connections() == 1 }).await;
    h.ws.with(|s| s.refuse_handshakes = 1);
    h.ws.drop_all();
    let ts = chrono::Utc::now().timestamp();
    h.http.with(|s| {
        s.v2_retired = true;
        s.trades = vec![fake::data_trade(&asset, &cond, "0.42", "7.5", "BUY", ts, "0xv1")];
    });
    eventually(30, "backfilled through v1", || async {
        h.db.try_count("SELECT count(*) FROM trades WHERE source = 'backfill' AND price = 0.42").await == Some(1)
    })
    .await;
    assert!(h.http.hits("trades") >= 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_stream_loses_no_trade_and_duplicates_none() {
    let cluster = pg::PrivateCluster::start();
    let db = cluster.test_db();
    // A tiny queue: rows spill to the spool as soon as the database stops keeping up.
    let mut h = Harness::start(db, 2, "queue_capacity = 10\nbatch_size = 20\n").await;
    let asset = fake::token_id(1, 1);
    eventually(20, "connected", || async { h.ws.live_connections() == 1 }).await;
    let t0 = crate::now_ms();
    for n in 0..100 {
        assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, n, t0 + n)));
    }
    eventually(20, "first half stored", || async { h.trades().await == 100 }).await;

    cluster.down();
    for n in 100..400 {
        assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, n, t0 + n)));
    }
    // Frames sent twice across the outage are still stored once.
    for n in 90..110 {
        h.ws.send_to_asset(&asset, &trade_frame(&asset, n, t0 + n));
    }
    eventually(20, "rows spooled while the database is down", || async {
        h.sink.stats.spooled_rows.load(Ordering::Relaxed) > 0 && h.stats.trades_received.load(Ordering::Relaxed) == 420
    })
    .await;
    cluster.up();
    eventually(60, "every trade stored once", || async { h.trades().await == 400 }).await;
    let distinct = h.db.try_count("SELECT count(DISTINCT tx_hash) FROM trades").await;
    assert_eq!(distinct, Some(400));
    eventually(20, "spool replayed", || async { h.sink.stats.spool_bytes.load(Ordering::Relaxed) == 0 }).await;
    assert_eq!(h.sink.stats.dropped_rows.load(Ordering::Relaxed), 0);
    assert_eq!(h.stats.reconnects.load(Ordering::Relaxed), 0, "the stream never waited on the database");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asset_without_a_first_book_gets_its_connection_rebuilt_once() {
    let db = pg::fresh_db().await;
    let http_assets = all_tokens(2);
    let quiet = fake::token_id(1, 1);
    let mut h = Harness::start(db, 2, "backfill = false\nfirst_book_timeout_secs = 3\n").await;
    h.ws.with(|s| s.bookless.insert(quiet.clone()));
    // The first connection may have dumped the book before `bookless` was set; force a
    // rebuild to start clean.
    eventually(20, "connected", || async { h.ws.live_assets() == http_assets }).await;
    h.ws.drop_all();
    eventually(30, "rebuilt for the missing book, then left alone", || async {
        h.db.try_count("SELECT count(*) FROM stream_gaps WHERE reason LIKE 'no first book%' AND ended_at IS NOT NULL").await == Some(1)
    })
    .await;
    let conns = h.ws.with(|s| s.conns.len());
    // Longer than first_book_timeout: a second rebuild would have happened by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(h.ws.with(|s| s.conns.len()), conns, "not rebuilt again for the same quiet asset");
    h.stop().await;
}

/// A connection that goes silent while upstream keeps trading: the gap starts at the last data
/// frame (not when the silence is detected), and every trade of the silent seconds is
/// backfilled — the live one not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connections_gap_starts_at_its_last_data_and_its_trades_are_all_backfilled() {
    let db = pg::fresh_db().await;
    let mut h = Harness::start(db, 1, "silence_timeout_secs = 3\n").await;
    let asset = fake::token_id(0, 0);
    let cond = format!("0x{:064x}", 1);
    eventually(20, "books", || async { h.db.try_count("SELECT count(*) FROM book_snapshots WHERE source = 'ws'").await == Some(2) }).await;
    let t_live = crate::now_ms();
    assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, 1, t_live)));
    eventually(10, "live trade", || async { h.trades().await == 1 }).await;
    let last_data = chrono::Utc::now();
    h.ws.silence_all();
    // Upstream keeps trading; the silent connection delivers none of it, the Data API has it.
    h.http.with(|s| {
        s.trades.push(fake::data_trade(&asset, &cond, "0.35", "10.000001", "SELL", (t_live / 1000) as i64, &format!("0x{:064x}", 1)))
    });
    for k in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let ts = chrono::Utc::now().timestamp();
        h.http.with(|s| {
            s.trades.push(fake::data_trade(&asset, &cond, "0.4100000001", &format!("{}.5", k + 1), "BUY", ts, &format!("0xs{k}")))
        });
    }
    // (A quiet connection stalls again every 3 s once the silence is over: the first stall
    // is the one of the silence.)
    let first_stall = "(SELECT id FROM stream_gaps WHERE reason = 'stall' ORDER BY started_at LIMIT 1)";
    eventually(30, "the stall's gap backfilled", || async {
        h.db.try_count(&format!("SELECT count(*) FROM stream_gaps WHERE id = {first_stall} AND backfill_status = 'done'")).await == Some(1)
    })
    .await;
    let started: chrono::DateTime<chrono::Utc> =
        h.db.client().await.query_one(&format!("SELECT started_at FROM stream_gaps WHERE id = {first_stall}"), &[]).await.unwrap().get(0);
    assert!(
        started <= last_data + chrono::Duration::milliseconds(500),
        "the gap starts at the last data frame ({last_data}), not at detection 3 s later: {started}"
    );
    assert_eq!(h.trades().await, 5, "1 live + 4 traded while silent, none twice");
    assert_eq!(h.db.try_count("SELECT count(*) FROM trades WHERE source = 'backfill' AND price = 0.4100000001").await, Some(4));
    h.stop().await;
}

fn trade_row(asset: &str, price: &str, size: &str, ts: chrono::DateTime<chrono::Utc>, tx: Option<&str>, source: TradeSource) -> Row {
    Row::Trade {
        trade: Trade {
            asset_id: asset.into(),
            condition_id: Some("0xc".into()),
            price: price.parse().unwrap(),
            size: size.parse().unwrap(),
            side: Side::Buy,
            fee_rate_bps: None,
            source_ts: ts,
            tx_hash: tx.map(Into::into),
        },
        received_at: chrono::Utc::now(),
        source,
    }
}

/// One identity for a fill whichever way it arrived: a spooled stream row replayed after the
/// backfill stored the same fill replaces it; a backfilled row after the stream's is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_is_stored_once_whether_the_stream_or_the_backfill_came_first() {
    let db = pg::fresh_db().await;
    let pool = db.pool().await;
    let keys = Keys::default();
    let ms = chrono::DateTime::parse_from_rfc3339("2026-11-30T10:00:07.481Z").unwrap().to_utc();
    let second = chrono::DateTime::parse_from_rfc3339("2026-11-30T10:00:07Z").unwrap().to_utc();
    // Backfill first (whole second, float price), then the spooled stream copy (replay).
    let backfill = trade_row("a", "0.709999959", "1.464786", second, Some("0xfeed"), TradeSource::Backfill);
    let stream = trade_row("a", "0.71", "1.464786", ms, Some("0xfeed"), TradeSource::Ws);
    write_batch(&pool, &keys, std::slice::from_ref(&backfill), Origin::Live).await.unwrap();
    write_batch(&pool, &keys, std::slice::from_ref(&stream), Origin::MaybeStored).await.unwrap();
    let rows = db.client().await.query("SELECT price::text, source FROM trades WHERE asset_id = 'a'", &[]).await.unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![("0.71".to_string(), "ws".to_string())], "the stream's exact copy replaced the backfilled one");
    // The same for a row this run spilled to its spool while a gap's backfill went in.
    let backfill = trade_row("c", "0.709999959", "2", second, Some("0xfeed"), TradeSource::Backfill);
    let spilled = trade_row("c", "0.71", "2", ms, Some("0xfeed"), TradeSource::Ws);
    write_batch(&pool, &keys, &[backfill], Origin::Live).await.unwrap();
    write_batch(&pool, &keys, &[spilled], Origin::Spilled).await.unwrap();
    let rows = db.client().await.query("SELECT price::text, source FROM trades WHERE asset_id = 'c'", &[]).await.unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![("0.71".to_string(), "ws".to_string())], "a spilled stream row replaces the backfilled copy too");
    // And the other order: the backfill finds the stream's copy (no tx hash on the stream side).
    let stream = trade_row("b", "0.42", "5", ms, None, TradeSource::Ws);
    let backfill = trade_row("b", "0.4200000001", "5", second, Some("0xbeef"), TradeSource::Backfill);
    write_batch(&pool, &keys, &[stream], Origin::Live).await.unwrap();
    write_batch(&pool, &keys, &[backfill], Origin::Live).await.unwrap();
    assert_eq!(db.try_count("SELECT count(*) FROM trades WHERE asset_id = 'b'").await, Some(1));
    // Two genuinely different fills in one second stay two.
    let other = trade_row("b", "0.43", "5", second, Some("0xbeef"), TradeSource::Backfill);
    write_batch(&pool, &keys, &[other], Origin::Live).await.unwrap();
    assert_eq!(db.try_count("SELECT count(*) FROM trades WHERE asset_id = 'b'").await, Some(2));
}

/// Frames the database refuses for their content (`\u0000` in JSON, a NUL in text) end in
/// quarantine with a readable reason; the writer keeps writing everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_frames_are_quarantined_and_the_writer_keeps_writing() {
    let db = pg::fresh_db().await;
    let mut h = Harness::start(db, 1, "").await;
    let asset = fake::token_id(0, 0);
    eventually(20, "connected", || async { h.ws.live_connections() == 1 }).await;
    let t0 = crate::now_ms();
    // A lifecycle payload (stored as jsonb) with \u0000 (SQLSTATE 22P05), and a trade whose tx
    // hash holds a NUL (refused by `trades_compact_tx_form`, 23514).
    let resolved = json!({"event_type": "market_resolved", "id": "999", "market": "0xdead", "assets_ids": [],
        "winning_asset_id": "1", "winning_outcome": "No\u{0}", "timestamp": t0.to_string()});
    h.ws.broadcast(&resolved.to_string());
    let mut nul_trade: serde_json::Value = serde_json::from_str(&trade_frame(&asset, 1, t0)).unwrap();
    nul_trade["transaction_hash"] = json!("0xab\u{0}cd");
    assert!(h.ws.send_to_asset(&asset, &nul_trade.to_string()));
    for n in 2..12 {
        assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, n, t0 + n)));
    }
    eventually(20, "the good trades stored", || async { h.trades().await == 10 }).await;
    eventually(20, "both poison rows quarantined", || async {
        h.db.try_count("SELECT count(*) FROM stream_quarantine WHERE reason LIKE 'refused by the database (SQLSTATE 2%'").await == Some(2)
    })
    .await;
    let frames: Vec<String> =
        h.db.client()
            .await
            .query("SELECT frame FROM stream_quarantine WHERE reason LIKE 'refused%'", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert!(frames.iter().all(|f| f.contains("\\u0000")), "NULs shown escaped: {frames:?}");
    assert_eq!(h.sink.stats.poisoned_rows.load(Ordering::Relaxed), 2);
    // Still writing afterwards.
    assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, 50, t0 + 50)));
    eventually(10, "a trade after the poison", || async { h.trades().await == 11 }).await;
    h.stop().await;
}

/// Values that decode but cannot be facts never reach the tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_domain_values_are_quarantined_not_stored() {
    let db = pg::fresh_db().await;
    let mut h = Harness::start(db, 1, "").await;
    let asset = fake::token_id(0, 0);
    eventually(20, "connected", || async { h.ws.live_connections() == 1 }).await;
    let t0 = crate::now_ms();
    let mut bad = Vec::new();
    for (field, value) in
        [("price", json!("-9223372036854775809")), ("price", json!("1.5")), ("size", json!("0")), ("timestamp", json!("86400000"))]
    {
        let mut t: serde_json::Value = serde_json::from_str(&trade_frame(&asset, bad.len() as u64, t0)).unwrap();
        t[field] = value;
        bad.push(t.to_string());
    }
    let mut foreign: serde_json::Value = serde_json::from_str(&trade_frame(&asset, 9, t0)).unwrap();
    foreign["asset_id"] = json!("12345");
    bad.push(foreign.to_string());
    for f in &bad {
        assert!(h.ws.send_to_asset(&asset, f));
    }
    assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, 20, t0)));
    // Bad events inside a frame with a good one: each quarantine row holds its own event's
    // text, not the whole frame once per bad event.
    let in_frame = [bad[1].replace("\"1.5\"", "\"2.5\""), bad[2].replace("\"0\"", "\"0.0\"")];
    let frame = format!("[{}, {}, {}]", in_frame[0], trade_frame(&asset, 21, t0), in_frame[1]);
    assert!(h.ws.send_to_asset(&asset, &frame));
    eventually(10, "the good trades stored", || async { h.trades().await == 2 }).await;
    eventually(10, "the bad ones quarantined", || async {
        h.db.try_count("SELECT count(*) FROM stream_quarantine WHERE reason LIKE 'out of domain:%'").await == Some(7)
    })
    .await;
    let frames: Vec<String> =
        h.db.client()
            .await
            .query("SELECT frame FROM stream_quarantine WHERE reason LIKE 'out of domain:%' ORDER BY id DESC LIMIT 2", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(frames, [in_frame[1].clone(), in_frame[0].clone()]);
    h.stop().await;
}

/// A backfill that fails (the Data API answering 502 past the client's retries) is retried
/// with backoff until it succeeds; one owed from before a restart is picked up at the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_backfills_are_retried_and_owed_ones_resumed_at_start() {
    let db = pg::fresh_db().await;
    let asset = fake::token_id(0, 0);
    let cond = format!("0x{:064x}", 1);
    // Owed from an earlier run: a closed gap whose backfill failed.
    let owed_ts = chrono::Utc::now() - chrono::Duration::minutes(10);
    db.pool().await.get().await.unwrap()
        .execute("INSERT INTO stream_gaps (connection, assets, asset_count, started_at, ended_at, reason, planned, backfill_status, backfill_attempts)
                  VALUES (0, $1, 1, $2::timestamptz, $2::timestamptz + interval '20 seconds', 'stall', false, 'retrying: data api away', 1)",
                 &[&vec![asset.clone()], &owed_ts])
        .await.unwrap();
    let mut h = Harness::start(db, 1, "").await;
    eventually(30, "the owed backfill resumed and done", || async {
        h.db.try_count("SELECT count(*) FROM stream_gaps WHERE reason = 'stall' AND backfill_status = 'done' AND backfill_attempts = 2")
            .await
            == Some(1)
    })
    .await;
    assert!(h.http.with(|s| s.queries["v2/trades"].len()) >= 1);

    // A new gap whose first backfill attempt fails: every request of it gets a 502.
    eventually(20, "connected", || async { h.ws.live_connections() == 1 }).await;
    h.http.with(|s| s.faults.insert("v2/trades", (0..5).map(|_| fake::Fault::ServerError).collect()));
    h.ws.drop_all();
    let ts = chrono::Utc::now().timestamp();
    h.http.with(|s| s.trades.push(fake::data_trade(&asset, &cond, "0.34", "4.5", "SELL", ts, "0xretry")));
    eventually(40, "backfilled on a later attempt", || async {
        h.db.try_count("SELECT count(*) FROM trades WHERE tx_hash = '0xretry'").await == Some(1)
    })
    .await;
    eventually(10, "the gap shows two attempts", || async {
        h.db.try_count("SELECT count(*) FROM stream_gaps WHERE backfill_status = 'done' AND backfill_attempts = 2 AND reason <> 'stall'")
            .await
            == Some(1)
    })
    .await;
    h.stop().await;
}

/// A backfill cut short by the page cap is marked partial with the interval it did cover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_cut_by_the_page_cap_is_marked_partial_with_what_it_covered() {
    let db = pg::fresh_db().await;
    let mut h = Harness::start(db, 1, "backfill_max_pages = 2\n").await;
    let asset = fake::token_id(0, 0);
    let cond = format!("0x{:064x}", 1);
    eventually(20, "connected", || async { h.ws.live_connections() == 1 }).await;
    let ts = chrono::Utc::now().timestamp() + 1;
    // 1,200 trades in the gap: three pages of 500; the cap stops after two.
    h.http.with(|s| {
        for k in 0..1200 {
            s.trades.push(fake::data_trade(&asset, &cond, "0.5", &format!("{}.5", k + 1), "BUY", ts, &format!("0xp{k}")));
        }
    });
    h.ws.drop_all();
    eventually(30, "backfill marked partial", || async {
        h.db.try_count(
            "SELECT count(*) FROM stream_gaps WHERE backfill_status = 'partial' AND backfill_trades = 1000
                        AND backfill_covered_from > started_at AND backfill_covered_from <= ended_at + interval '5 seconds'",
        )
        .await
            == Some(1)
    })
    .await;
    h.stop().await;
}

/// Level changes have no unique index: live rows are copied straight in, and a replay (or
/// the retry of a batch whose commit went unanswered) stores none of them twice; quotes,
/// trades and books are copied under a savepoint and a repeat falls back to the idempotent
/// path; the replay check summarizes the BRIN ranges it looks through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_level_changes_quotes_and_trades_are_stored_once() {
    use collector::polymarket::ws::{LevelChange, Quote};
    let db = pg::fresh_db().await;
    let pool = db.pool().await;
    collector::db::partitions::maintain(&pool, collector::clock::today(), Default::default()).await.unwrap();
    let keys = Keys::default();
    let ts = chrono::Utc::now();
    let change = |price: &str, hash: Option<&str>| Row::PriceChange {
        change: LevelChange {
            asset_id: "a".into(),
            price: price.parse().unwrap(),
            size: "12.5".parse().unwrap(),
            side: Side::Buy,
            hash: hash.map(Into::into),
            best_bid: None,
            best_ask: None,
        },
        condition_id: Some("0xc".into()),
        source_ts: ts,
        received_at: ts,
    };
    let quote = Row::Quote {
        quote: Quote { asset_id: "a".into(), condition_id: None, best_bid: None, best_ask: None, spread: None, source_ts: ts },
        received_at: ts,
    };
    let book = collector::polymarket::clob::decode_book(&fake::book("a", crate::now_ms(), "b1")).unwrap();
    let book = Row::Book { book, received_at: ts };
    let batch =
        vec![change("0.41", Some("h1")), change("0.42", None), quote, trade_row("a", "0.4", "1", ts, Some("0x1"), TradeSource::Ws), book];
    // 30,000 level changes of another token first (two full BRIN ranges of 128 pages), with
    // autovacuum's summarizing off, so only the replay check can summarize them.
    let partition = collector::db::partitions::partition_name("price_changes_ticks", ts.date_naive());
    let brin: String = db
        .client()
        .await
        .query_one(
            "SELECT x.relname::text FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class x ON x.oid = i.indexrelid \
                    JOIN pg_am a ON a.oid = x.relam WHERE a.amname = 'brin' AND t.relname = $1",
            &[&partition],
        )
        .await
        .unwrap()
        .get(0);
    db.client().await.batch_execute(&format!("ALTER INDEX {brin} SET (autosummarize = off)")).await.unwrap();
    let bulk: Vec<Row> = (0..30_000)
        .map(|i| match change("0.3", None) {
            Row::PriceChange { mut change, condition_id, .. } => {
                change.asset_id = "bulk".into();
                let at = ts - chrono::Duration::seconds(10) + chrono::Duration::microseconds(i);
                Row::PriceChange { change, condition_id, source_ts: at, received_at: at }
            }
            _ => unreachable!(),
        })
        .collect();
    write_batch(&pool, &keys, &bulk, Origin::Live).await.unwrap();
    write_batch(&pool, &keys, &batch, Origin::Live).await.unwrap();
    write_batch(&pool, &keys, &batch, Origin::MaybeStored).await.unwrap();
    assert_eq!(db.try_count("SELECT count(*) FROM price_changes").await, Some(30_002));
    assert_eq!(db.try_count("SELECT count(*) FROM quotes").await, Some(1));
    assert_eq!(db.try_count("SELECT count(*) FROM trades").await, Some(1));
    assert_eq!(db.try_count("SELECT count(*) FROM book_snapshots").await, Some(1));
    // Live again (not a replay, e.g. a book re-dumped after a reconnect): quotes, trades and
    // books fall back on their unique identity.
    let again = vec![batch[2].clone(), batch[3].clone(), batch[4].clone()];
    write_batch(&pool, &keys, &again, Origin::Live).await.unwrap();
    assert_eq!(db.try_count("SELECT count(*) FROM quotes").await, Some(1));
    assert_eq!(db.try_count("SELECT count(*) FROM trades").await, Some(1));
    assert_eq!(db.try_count("SELECT count(*) FROM book_snapshots WHERE source = 'ws' AND bids <> '[]'").await, Some(1));
    let exact: String = db
        .client()
        .await
        .query_one("SELECT string_agg(price::text, ',' ORDER BY price) FROM price_changes WHERE asset_id = 'a'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(exact, "0.41,0.42");
    // A replay of which part is stored (same times) stores only the rest; one of which nothing
    // is stored (other receive times: the spool's rows) is copied in whole.
    write_batch(&pool, &keys, &[change("0.41", Some("h1")), change("0.43", Some("h3"))], Origin::MaybeStored).await.unwrap();
    let later = |price: &str| match change(price, None) {
        Row::PriceChange { change, condition_id, source_ts, .. } => {
            Row::PriceChange { change, condition_id, source_ts, received_at: ts + chrono::Duration::seconds(1) }
        }
        _ => unreachable!(),
    };
    write_batch(&pool, &keys, &[later("0.44"), later("0.45")], Origin::MaybeStored).await.unwrap();
    // Stored and new rows in one replay: those received after the newest stored one are
    // copied, the rest anti-joined.
    write_batch(
        &pool,
        &keys,
        &[
            change("0.41", Some("h1")),
            later("0.45"),
            later("0.46"),
            match later("0.47") {
                Row::PriceChange { change, condition_id, source_ts, received_at } => {
                    Row::PriceChange { change, condition_id, source_ts, received_at: received_at + chrono::Duration::seconds(1) }
                }
                _ => unreachable!(),
            },
        ],
        Origin::MaybeStored,
    )
    .await
    .unwrap();
    let exact: String = db
        .client()
        .await
        .query_one("SELECT string_agg(price::text, ',' ORDER BY price) FROM price_changes WHERE asset_id = 'a'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(exact, "0.41,0.42,0.43,0.44,0.45,0.46,0.47");
    // The replay check summarized the day's BRIN ranges before looking (an unsummarized range
    // matches every look): no full range is left to summarize.
    let left: i32 = db.client().await.query_one(&format!("SELECT brin_summarize_new_values('{brin}')"), &[]).await.unwrap().get(0);
    assert_eq!(left, 0, "{brin}: every full range summarized by the replay check");
}

/// A level change reads back through the `price_changes` view exactly as received, by either
/// write path, from either table (migration 9: prices that a count of 0.0001 gives back as the
/// same text in `price_changes_ticks`, any other in `price_changes_compact`), for every hash
/// form (upstream's 40 hex digits as 20 bytes; anything else as its text — including texts of
/// 19 and 20 bytes, next to the hex form's length — and none); the Rust encoding is the SQL
/// one the migration used; a replay stores none twice; a hash with a NUL is refused by either
/// table's check (and so quarantined by the writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_changes_read_back_exactly_through_the_view_by_either_path() {
    use collector::polymarket::ws::LevelChange;
    let db = pg::fresh_db().await;
    let pool = db.pool().await;
    let keys = Keys::default();
    let now = chrono::Utc::now();
    let hex = "0123456789abcdef0123456789abcdef01234567".to_string();
    let hashes: Vec<Option<String>> = vec![
        Some(hex.clone()),
        Some(hex.to_uppercase()),
        Some("x".repeat(19)),
        Some("y".repeat(20)),
        Some(hex[..39].to_string()),
        Some(format!("{hex}0")),
        Some(String::new()),
        None,
    ];
    // The best bid has a trailing zero (so the row is kept as received) for i = 0, 3, 6.
    let best_bid = |i: usize| if i % 3 == 0 { "0.40" } else { "0.4" };
    let change = |asset: &str, i: usize, price: &str, hash: &Option<String>| Row::PriceChange {
        change: LevelChange {
            asset_id: asset.into(),
            price: price.parse().unwrap(),
            size: format!("{}.50", i + 1).parse().unwrap(),
            side: Side::Sell,
            hash: hash.clone(),
            best_bid: Some(best_bid(i).parse().unwrap()),
            best_ask: if i % 2 == 0 { None } else { Some("0.6".parse().unwrap()) },
        },
        condition_id: Some("0xc".into()),
        source_ts: now,
        received_at: now,
    };
    // Fit in ticks: 0.5, 0.0025, 1, 0, 3.2767. Kept as received: the rest.
    let prices = ["0.50", "0.5", "0.0025", "1", "0", "0.00001", "3.2767", "3.2768", "12", "0.10"];
    let rows = |prefix: &str| -> Vec<Row> {
        prices
            .iter()
            .enumerate()
            .flat_map(|(k, p)| hashes.iter().enumerate().map(move |(i, h)| (k, p, i, h)))
            .map(|(k, p, i, h)| change(&format!("{prefix}{k}"), i, p, h))
            .collect()
    };
    let (live, replayed) = (rows("live"), rows("replayed"));
    write_batch(&pool, &keys, &live, Origin::Live).await.unwrap();
    write_batch(&pool, &keys, &replayed, Origin::MaybeStored).await.unwrap();
    write_batch(&pool, &keys, &replayed, Origin::MaybeStored).await.unwrap();
    write_batch(&pool, &keys, &live, Origin::MaybeStored).await.unwrap();
    let client = db.client().await;
    for prefix in ["live", "replayed"] {
        for (k, price) in prices.iter().enumerate() {
            let asset = format!("{prefix}{k}");
            let rows = client
                .query(
                    "SELECT hash, price::text, size::text, side, best_bid::text, best_ask::text, condition_id FROM price_changes
                        WHERE asset_id = $1 ORDER BY size",
                    &[&asset],
                )
                .await
                .unwrap();
            type Stored = (Option<String>, String, String, String, Option<String>, Option<String>, Option<String>);
            let got: Vec<Stored> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6))).collect();
            let want: Vec<_> = hashes
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    (
                        h.clone(),
                        price.to_string(),
                        format!("{}.50", i + 1),
                        "SELL".to_string(),
                        Some(best_bid(i).to_string()),
                        (i % 2 == 1).then(|| "0.6".to_string()),
                        Some("0xc".to_string()),
                    )
                })
                .collect();
            assert_eq!(got, want, "{asset} ({price}): each once, exactly as received");
        }
    }
    // 5 fitting prices × the 5 rows of 8 whose best bid fits × 2 writers.
    assert_eq!(db.try_count("SELECT count(*) FROM price_changes_ticks").await, Some(50));
    assert_eq!(db.try_count("SELECT count(*) FROM price_changes_compact").await, Some(2 * 10 * 8 - 50));
    for h in hashes.iter().flatten() {
        let sql: Vec<u8> = client.query_one("SELECT level_hash_bytes($1)", &[h]).await.unwrap().get(0);
        assert_eq!(Some(sql.clone()), collector::db::stream::level_hash_bytes(Some(h)), "{h}");
        let back: String = client.query_one("SELECT level_hash_text($1)", &[&sql]).await.unwrap().get(0);
        assert_eq!(&back, h);
    }
    for i in [99, 100] {
        let nul = write_batch(&pool, &keys, &[change("a", i, "0.5", &Some("ab\u{0}cd".to_string()))], Origin::Live).await.unwrap_err();
        assert_eq!(nul.sqlstate(), Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION), "{nul}");
    }
}

/// A trade reads back through the `trades` view exactly as received, by either write path:
/// every transaction hash form (upstream's `0x` + 64 hex as 32 bytes, anything else as its
/// text), the price's own digits, side and source; the Rust encoding of the hash is the SQL
/// one the migration used; and a row of a day with no partition yet (a replay after days
/// away, an old backfill) gets its partition made first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_read_back_exactly_through_the_view_by_either_path() {
    let db = pg::fresh_db().await;
    let pool = db.pool().await;
    let keys = Keys::default();
    let now = chrono::Utc::now();
    let old = now - chrono::Duration::days(9);
    let canonical = format!("0x{}", "0123456789abcdef".repeat(4));
    let upper = format!("0x{}", "0123456789ABCDEF".repeat(4));
    let hashes: Vec<Option<&str>> = vec![Some(&canonical), Some(&upper), Some("0xplanned-1"), Some(""), None];
    let mut live = Vec::new();
    let mut replayed = Vec::new();
    for (i, h) in hashes.iter().enumerate() {
        let size = format!("{}.10", i + 1);
        live.push(trade_row("a", "0.50", &size, now, *h, TradeSource::Ws));
        replayed.push(trade_row("b", "0.5", &size, old, *h, TradeSource::Backfill));
    }
    write_batch(&pool, &keys, &live, Origin::Live).await.unwrap();
    write_batch(&pool, &keys, &replayed, Origin::MaybeStored).await.unwrap();
    let client = db.client().await;
    for (asset, source, price) in [("a", "ws", "0.50"), ("b", "backfill", "0.5")] {
        let rows = client
            .query("SELECT tx_hash, price::text, size::text, side, source FROM trades WHERE asset_id = $1 ORDER BY size", &[&asset])
            .await
            .unwrap();
        let got: Vec<(Option<String>, String, String, String, String)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
        let want: Vec<_> = hashes
            .iter()
            .enumerate()
            .map(|(i, h)| (h.map(str::to_string), price.to_string(), format!("{}.10", i + 1), "BUY".to_string(), source.to_string()))
            .collect();
        assert_eq!(got, want, "{asset}");
    }
    let old_day = partition_name("trades_compact", old.date_naive());
    assert_eq!(db.try_count(&format!("SELECT count(*) FROM {old_day}")).await, Some(5), "the old day's partition was made");
    for h in hashes.iter().flatten() {
        let sql: Vec<u8> = client.query_one("SELECT trade_tx_bytes($1)", &[h]).await.unwrap().get(0);
        assert_eq!(Some(sql), collector::db::stream::tx_bytes(Some(h)), "{h}");
    }
    // The same fills again, live: the identity (normalised price and size) keeps them once.
    let again: Vec<Row> =
        hashes.iter().enumerate().map(|(i, h)| trade_row("a", "0.5", &format!("{}.1", i + 1), now, *h, TradeSource::Ws)).collect();
    write_batch(&pool, &keys, &again, Origin::Live).await.unwrap();
    assert_eq!(db.try_count("SELECT count(*) FROM trades").await, Some(10));
}

/// Two quotes (or tick size changes) of one token in one millisecond: the last received is
/// kept, whether they come in one batch (the direct COPY then still holds: no unique
/// violation sends the batch to the idempotent path), in two batches, or replayed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_quotes_or_tick_sizes_in_one_millisecond_the_last_is_kept() {
    use collector::polymarket::ws::{Quote, TickSizeChange};
    let db = pg::fresh_db().await;
    let pool = db.pool().await;
    collector::db::partitions::maintain(&pool, collector::clock::today(), Default::default()).await.unwrap();
    let keys = Keys::default();
    let ts = chrono::DateTime::from_timestamp_millis(crate::now_ms() as i64).unwrap();
    let quote = |token: &str, bid: &str, after_us: i64| Row::Quote {
        quote: Quote {
            asset_id: token.into(),
            condition_id: Some("0xc".into()),
            best_bid: Some(bid.parse().unwrap()),
            best_ask: Some("0.6".parse().unwrap()),
            spread: None,
            source_ts: ts,
        },
        received_at: ts + chrono::Duration::microseconds(after_us),
    };
    let tick = |token: &str, new: &str, after_us: i64| Row::TickSize {
        change: TickSizeChange {
            asset_id: token.into(),
            condition_id: Some("0xc".into()),
            old_tick_size: Some("0.01".parse().unwrap()),
            new_tick_size: Some(new.parse().unwrap()),
            source_ts: ts,
        },
        received_at: ts + chrono::Duration::microseconds(after_us),
    };
    let stored = |token: &'static str| {
        let db = &db;
        async move {
            let c = db.client().await;
            let q: String = c.query_one("SELECT best_bid::text FROM quotes WHERE asset_id = $1", &[&token]).await.unwrap().get(0);
            let t: String =
                c.query_one("SELECT new_tick_size::text FROM tick_size_changes WHERE asset_id = $1", &[&token]).await.unwrap().get(0);
            (q, t)
        }
    };
    // One batch, same frame (same receive time): the later in the batch.
    write_batch(&pool, &keys, &[quote("a", "0.41", 0), tick("a", "0.001", 0), quote("a", "0.42", 0), tick("a", "0.0001", 0)], Origin::Live)
        .await
        .unwrap();
    assert_eq!(stored("a").await, ("0.42".into(), "0.0001".into()));
    // Two batches: the second replaces the first.
    write_batch(&pool, &keys, &[quote("b", "0.41", 0), tick("b", "0.001", 0)], Origin::Live).await.unwrap();
    write_batch(&pool, &keys, &[quote("b", "0.43", 5), tick("b", "0.01", 5)], Origin::Live).await.unwrap();
    assert_eq!(stored("b").await, ("0.43".into(), "0.01".into()));
    // A replay of the earlier one (a previous run's spool) does not undo the later.
    write_batch(&pool, &keys, &[quote("b", "0.41", 0), tick("b", "0.001", 0)], Origin::MaybeStored).await.unwrap();
    assert_eq!(stored("b").await, ("0.43".into(), "0.01".into()));
    assert_eq!(db.try_count("SELECT count(*) FROM quotes").await, Some(2));
    assert_eq!(db.try_count("SELECT count(*) FROM tick_size_changes").await, Some(2));
}

/// Errors that are neither transient nor about the data's form — an index row too large
/// (54000), a `statement_timeout` (57014) — that repeat on the same rows: the batch is retried
/// a few times, then split, and the rows that still fail alone are quarantined with the reason;
/// every other trade is stored and the writer goes on. (Before, such a batch was retried
/// forever and nothing after it was stored.) The collector's connections carry the
/// configured timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_keeps_failing_without_a_transient_cause_is_split_and_the_failing_rows_set_aside() {
    let db = pg::fresh_db().await;
    let mut h = Harness::start(db, 1, "").await;
    let pool = h.db.pool().await;
    let settings: Vec<String> = {
        let c = pool.get().await.unwrap();
        let mut out = Vec::new();
        for name in ["statement_timeout", "lock_timeout"] {
            out.push(c.query_one(&format!("SHOW {name}"), &[]).await.unwrap().get(0));
        }
        out
    };
    assert_eq!(settings, ["2min", "30s"], "the documented defaults on the collector's connections");
    h.db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION refuse_some() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.size = 10.000001 THEN RAISE EXCEPTION 'index row size 9000 exceeds btree maximum' USING ERRCODE = 'program_limit_exceeded'; END IF;
               IF NEW.size = 10.000002 THEN RAISE EXCEPTION 'canceling statement due to statement timeout' USING ERRCODE = 'query_canceled'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_some BEFORE INSERT ON trades_compact FOR EACH ROW EXECUTE FUNCTION refuse_some();",
        )
        .await
        .unwrap();
    let asset = fake::token_id(0, 0);
    eventually(20, "connected", || async { h.ws.live_connections() == 1 }).await;
    let t0 = crate::now_ms();
    for n in 0..12 {
        assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, n, t0 + n)));
    }
    eventually(30, "the ten other trades stored", || async { h.trades().await == 10 }).await;
    eventually(10, "both failing rows quarantined with their SQLSTATE", || async {
        h.db.try_count(
            "SELECT count(*) FROM stream_quarantine WHERE reason LIKE 'refused by the database (SQLSTATE 54000)%'
                OR reason LIKE 'refused by the database (SQLSTATE 57014)%'",
        )
        .await
            == Some(2)
    })
    .await;
    assert_eq!(h.sink.stats.poisoned_rows.load(Ordering::Relaxed), 2);
    // Still writing afterwards, with no failure outstanding.
    assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, 50, t0 + 50)));
    eventually(10, "a trade after them", || async { h.trades().await == 11 }).await;
    assert_eq!(h.sink.stats.write_failures_in_a_row.load(Ordering::Relaxed), 0);
    h.stop().await;
}

/// A reload that narrows the scope applies to markets listed on the stream at once: a
/// `new_market` outside the new scope is not subscribed (before, the scope read at start
/// decided until the next refresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_narrows_the_scope_applies_to_new_markets_at_once() {
    let db = pg::fresh_db().await;
    // Refreshes far apart: only the reload and the lifecycle event decide here.
    let section = "[stream]\nping_interval_secs = 1\nrefresh_interval_secs = 3600\nreconnect_base_ms = 100\nconnect_interval_ms = 20\n\
                   flush_interval_ms = 20\n";
    let mut h = Harness::start_with(db, 2, section).await;
    eventually(20, "every asset streamed", || async { h.ws.live_assets() == all_tokens(2) }).await;
    let kept = fake::token_id(0, 0);
    h.reconfigure(&format!("{section}token_ids = [\"{kept}\"]\n"));
    eventually(20, "the narrower scope applied", || async { h.ws.live_assets() == HashSet::from([kept.clone()]) }).await;
    let mut nm: serde_json::Value = fake::fixture("ws_other_events.json");
    let new_market = nm["new_market"].take();
    h.ws.broadcast(&new_market.to_string());
    eventually(10, "the new market's event stored", || async {
        h.db.try_count("SELECT count(*) FROM market_events WHERE kind = 'new_market'").await == Some(1)
    })
    .await;
    // The manager acts on the event as the shard reads it, before its row is even written: a
    // subscription would reach the fake within milliseconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.ws.live_assets(), HashSet::from([kept]), "a market outside the scope is not subscribed");
    h.stop().await;
}

/// Handshakes are paced across every shard, first opens and reconnects alike: 12 connections,
/// all dropped at once, come back one per `connect_interval`, never in a burst (a burst of
/// handshakes gets 429 upstream; the universe is ~1,600 connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_paced_across_shards_even_when_all_reconnect() {
    let db = pg::fresh_db().await;
    let h = Harness::start_with(
        db,
        60,
        "[stream]\nping_interval_secs = 1\nrefresh_interval_secs = 1\nreconnect_base_ms = 10\nreconnect_max_secs = 1\n\
         connect_interval_ms = 100\nflush_interval_ms = 20\nmax_assets_per_connection = 10\n",
    )
    .await;
    eventually(30, "12 connections", || async { h.ws.live_connections() == 12 && h.ws.live_assets() == all_tokens(60) }).await;
    h.ws.drop_all();
    eventually(30, "12 new connections", || async {
        h.ws.with(|s| s.handshakes.len()) == 24 && h.ws.live_connections() == 12 && h.ws.live_assets() == all_tokens(60)
    })
    .await;
    let times = h.ws.with(|s| s.handshakes.clone());
    assert_eq!(times.len(), 24, "each connection opened twice: {times:?}");
    // Slots are 100 ms apart; a handshake may start late, never early: any three consecutive
    // handshakes span at least one slot, each round of twelve at least ten.
    for (i, w) in times.windows(3).enumerate() {
        assert!(w[2] - w[0] >= Duration::from_millis(100), "handshakes {i}..{} within {:?}", i + 2, w[2] - w[0]);
    }
    for round in [&times[..12], &times[12..]] {
        assert!(round[11] - round[0] >= Duration::from_millis(1000), "twelve handshakes within {:?}", round[11] - round[0]);
    }
}
