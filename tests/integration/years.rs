//! What only time, a full disk or a DBA's lock brings out: the spool's disk filling up, and
//! partition maintenance meeting a long reader over midnight UTC.

use std::sync::atomic::Ordering;

use crate::fake;
use crate::fake_ws::trade_frame;
use crate::stream::Harness;
use crate::{eventually, pg};

/// A tmpfs of `kib` KiB mounted on a fresh directory, unmounted on drop; `None` (the test
/// then reports itself skipped) where mounting is not allowed (not root).
pub struct SmallDisk {
    pub dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(kib: u64) -> Option<SmallDisk> {
        let dir = tempfile::Builder::new().prefix("collector-small-disk-").tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// The spool's disk fills while the database is held: every row is either stored once the
/// database is back or counted (and logged) as lost — none vanishes unaccounted — the spool
/// pauses instead of retrying every row against the full disk, the lost rows become a gap
/// whose backfill recovers their trades (every trade stored once in the end), and the stream
/// goes on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_disk_that_fills_loses_only_what_it_counts_and_the_stream_goes_on() {
    let Some(disk) = SmallDisk::mount(192) else {
        eprintln!("SKIPPED a_spool_disk_that_fills…: mounting a small tmpfs needs root");
        return;
    };
    let db = pg::fresh_db().await;
    let section = format!(
        "[stream]\nspool_dir = \"{}\"\nqueue_capacity = 50\nping_interval_secs = 1\nrefresh_interval_secs = 1\n\
         reconnect_base_ms = 100\nreconnect_max_secs = 1\nconnect_interval_ms = 20\nflush_interval_ms = 20\n",
        disk.dir.path().display()
    );
    let mut h = Harness::start_with(db, 1, &section).await;
    let asset = fake::token_id(0, 0);
    eventually(20, "connected", || async { h.ws.live_connections() == 1 }).await;
    const SENT: u64 = 6000;
    // Source times in the past, a millisecond apart, as upstream's are.
    let t0 = crate::now_ms() - SENT;
    // The Data API knows every trade (as upstream does): what the stream loses, the backfill
    // of the loss's gap recovers. Whole seconds and float prices, like upstream's.
    let condition = format!("0x{:064x}", 1);
    h.http.with(|s| {
        s.trades = (0..SENT)
            .map(|n| {
                let side = if n % 2 == 0 { "BUY" } else { "SELL" };
                let size = format!("{}.{:06}", 10 + n / 1_000_000, n % 1_000_000);
                fake::data_trade(&asset, &condition, "0.35", &size, side, ((t0 + n) / 1000) as i64, &format!("0x{n:064x}"))
            })
            .collect()
    });
    // A long transaction holds the trades table: every write waits.
    let holder = h.db.client().await;
    holder.batch_execute("BEGIN; LOCK TABLE trades_compact IN ACCESS EXCLUSIVE MODE").await.unwrap();
    for n in 0..SENT {
        assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, n, t0 + n)));
    }
    let stats = &h.sink.stats;
    eventually(30, "every trade received", || async { h.stats.trades_received.load(Ordering::Relaxed) == SENT }).await;
    eventually(10, "the small disk filled: rows counted lost", || async { stats.dropped_rows.load(Ordering::Relaxed) > 0 }).await;
    let errors = stats.spool_errors.load(Ordering::Relaxed);
    let lost = stats.dropped_rows.load(Ordering::Relaxed);
    assert!(errors >= 1, "the failed spool writes are counted");
    assert!(errors * 20 < lost, "the spool pauses after a failed write: {errors} failed writes for {lost} rows lost");
    eprintln!("disk full: {lost} rows lost in {errors} failed spool writes, {} rows spooled", stats.spooled_rows.load(Ordering::Relaxed));
    holder.batch_execute("COMMIT").await.unwrap();
    eventually(60, "every trade stored or counted lost", || async {
        let stored = h.trades().await as u64;
        stored + stats.dropped_rows.load(Ordering::Relaxed) >= SENT && h.sink.queue_depth() == 0
    })
    .await;
    eventually(60, "the loss's gap backfilled: every trade stored", || async {
        h.db.try_count("SELECT count(*) FROM stream_gaps WHERE reason LIKE '% rows lost:%' AND backfill_status = 'done'").await == Some(1)
            && h.trades().await as u64 == SENT
    })
    .await;
    let backfilled = h.db.count("SELECT count(*) FROM trades WHERE source = 'backfill'").await;
    assert!(backfilled > 0 && backfilled as u64 <= lost, "{backfilled} backfilled for {lost} lost");
    eventually(30, "the spool replayed", || async { stats.spool_bytes.load(Ordering::Relaxed) == 0 }).await;
    assert_eq!(h.db.count("SELECT count(*) FROM (SELECT 1 FROM trades GROUP BY asset_id, source_ts, size HAVING count(*) > 1) d").await, 0);
    // The stream goes on.
    let before = h.trades().await;
    for n in SENT..SENT + 20 {
        assert!(h.ws.send_to_asset(&asset, &trade_frame(&asset, n, t0 + n)));
    }
    eventually(20, "trades after the disk emptied", || async { h.trades().await == before + 20 }).await;
    h.stop().await;
}

/// A long reader holds the trades table over midnight UTC (the daemon on a clock 60× as fast,
/// starting three minutes before midnight): partition maintenance — the pass just after
/// midnight making the day three ahead, a reload lowering the retention — never holds the
/// writers up for longer than its lock timeout, drops nothing at the reload (it says what the
/// next pass will drop), and catches up once the reader is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_never_stalls_the_writers_behind_a_long_reader_over_midnight() {
    use crate::daemon::{Daemon, FAST, FAST_STREAM, SIGHUP, small_fake};
    use chrono::{Duration as Days, Utc};
    use collector::clock::Accelerated;
    use collector::db::partitions::partition_name;

    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let ws = crate::fake_ws::FakeWs::start().await;
    let real = Utc::now();
    let today = real.date_naive();
    let midnight = (today + Days::days(1)).and_hms_opt(0, 0, 0).unwrap().and_utc();
    let clock = Accelerated { real_ms: real.timestamp_millis(), clock_ms: (midnight - Days::minutes(3)).timestamp_millis(), speed: 60 };
    // An old day past the retention the reload will set (1 day), made before the daemon starts.
    drop(db.pool().await);
    let old = today - Days::days(3);
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {} PARTITION OF trades_compact FOR VALUES FROM ('{}') TO ('{}')",
            partition_name("trades_compact", old),
            old.and_hms_opt(0, 0, 0).unwrap().and_utc().to_rfc3339(),
            (old + Days::days(1)).and_hms_opt(0, 0, 0).unwrap().and_utc().to_rfc3339()
        ))
        .await
        .unwrap();
    let env = clock.to_env();
    let d = Daemon::start_ws(&db, &fake, &ws.url(), &format!("{FAST}{FAST_STREAM}"), &[(collector::clock::TEST_CLOCK_ENV, &env)]).await;
    let asset = fake::token_id(0, 0);
    eventually(30, "ready and streaming", || async { d.notes.has("READY=1") && ws.live_assets().contains(&asset) }).await;
    let exists = |day: chrono::NaiveDate| {
        let (db, name) = (&db, partition_name("trades_compact", day));
        async move { db.count(&format!("SELECT count(*) FROM pg_class WHERE relname = '{name}'")).await == 1 }
    };
    assert!(exists(today + Days::days(2)).await, "made ahead at start");
    assert!(exists(old).await, "no retention yet");

    // The reader: a transaction that read the trades table and stays open.
    let reader = db.client().await;
    reader.batch_execute("BEGIN; SELECT count(*) FROM trades_compact").await.unwrap();
    // A reload lowers the retention: nothing is dropped now, the drop is announced.
    let config = d._dir.path().join("collector.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("[stream]\n", "[stream]\ntrades_retention_days = 1\n")).unwrap();
    d.signal(SIGHUP);
    eventually(20, "the drop announced", || async { d.log.text().contains("retention lowered: the next maintenance pass") }).await;
    assert!(d.log.text().contains(&partition_name("trades_compact", old)), "{}", d.log.text());

    // Trades across midnight, each committed within a bound while the reader holds on.
    let (mut n, mut worst) = (0u64, std::time::Duration::ZERO);
    while clock.at(Utc::now()) < midnight + Days::minutes(12) {
        let ts = clock.at(Utc::now()).timestamp_millis() as u64;
        assert!(ws.send_to_asset(&asset, &trade_frame(&asset, n, ts)));
        n += 1;
        let sent = std::time::Instant::now();
        eventually(15, "the trade committed", || async { db.count("SELECT count(*) FROM trades").await == n as i64 }).await;
        worst = worst.max(sent.elapsed());
    }
    eprintln!("{n} trades across midnight behind a long reader; slowest commit {worst:?}");
    assert!(worst < std::time::Duration::from_secs(6), "a writer waited {worst:?} behind maintenance");
    assert!(d.log.text().contains("partition maintenance postponed"), "{}", d.log.text());
    assert!(exists(old).await, "nothing dropped while the reader holds the table");
    assert!(!exists(today + Days::days(3)).await);
    let day = |d: chrono::NaiveDate| format!("SELECT count(*) FROM {}", partition_name("trades_compact", d));
    assert!(db.count(&day(today)).await > 0 && db.count(&day(today + Days::days(1))).await > 0, "trades on both days");

    // The reader goes: the next pass (at most ten clock minutes later) catches up.
    reader.batch_execute("COMMIT").await.unwrap();
    eventually(30, "the day three ahead made, the old days dropped", || async {
        exists(today + Days::days(3)).await && !exists(old).await && !exists(today - Days::days(1)).await
    })
    .await;
}
