//! The package under a real systemd (`tests/system/run.sh` runs this; ignored otherwise):
//! a Debian rootfs booted with systemd-nspawn, sharing the host's network so it reaches the
//! fake Polymarket this test serves on 127.0.0.1; `tests/system/driver.sh` installs the
//! package inside and checks install, start, status, journal, watchdog, stop, upgrade,
//! remove and purge.

use std::time::Duration;

use crate::fake::{self, Fake};
use crate::fake_ws::{FakeWs, trade_frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "system test: needs root, systemd-nspawn, a rootfs and the .deb (tests/system/run.sh)"]
async fn system_package_under_real_systemd() {
    let deb = std::env::var("COLLECTOR_DEB").expect("COLLECTOR_DEB: the .deb to test");
    let rootfs = std::env::var("COLLECTOR_ROOTFS").expect("COLLECTOR_ROOTFS: from tests/system/make-rootfs.sh");
    let http = Fake::start().await;
    http.with(|s| s.events = (0..3).map(|e| fake::event(e, 1)).collect());
    fake::books_for_all(&http, 1_795_683_663_127);
    let ws = FakeWs::start().await;
    // Trades keep flowing on every live asset.
    let w = ws.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            for a in w.live_assets() {
                n += 1;
                w.send_to_asset(&a, &trade_frame(&a, n, crate::now_ms()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let results = tempfile::tempdir().unwrap();
    std::fs::write(results.path().join("fake_url"), http.url()).unwrap();
    std::fs::write(results.path().join("ws_url"), ws.url()).unwrap();
    std::fs::write(results.path().join("log"), "").unwrap();
    let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/system/driver.sh");
    let mut nspawn = tokio::process::Command::new("systemd-nspawn")
        .args(["-q", "--register=no", "--keep-unit", "--volatile=overlay", "-D", &rootfs])
        .arg(format!("--bind-ro={deb}:/pkg/collector.deb"))
        .arg(format!("--bind={}:/results", results.path().display()))
        .arg(format!("--bind-ro={driver}:/usr/local/bin/collector-driver.sh"))
        .arg("--boot")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("systemd-nspawn");
    let finished = tokio::time::timeout(Duration::from_secs(600), nspawn.wait()).await;
    let log = std::fs::read_to_string(results.path().join("log")).unwrap_or_default();
    let detail = std::fs::read_to_string(results.path().join("detail")).unwrap_or_default();
    println!("--- checks\n{log}--- detail\n{detail}");
    assert!(finished.is_ok(), "the container did not power off within 10 minutes");
    assert!(log.contains("DONE"), "the driver did not finish");
    let failed: Vec<&str> = log.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(failed.is_empty(), "failed checks: {failed:?}");
    assert!(log.lines().filter(|l| l.starts_with("OK")).count() >= 25, "{log}");
}
