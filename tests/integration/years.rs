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
/// pauses instead of retrying every row against the full disk, and the stream goes on
/// afterwards.
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
    // A long transaction holds the trades table: every write waits.
    let holder = h.db.client().await;
    holder.batch_execute("BEGIN; LOCK TABLE trades_compact IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let t0 = crate::now_ms();
    const SENT: u64 = 6000;
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
        stored + stats.dropped_rows.load(Ordering::Relaxed) == SENT && h.sink.queue_depth() == 0
    })
    .await;
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
