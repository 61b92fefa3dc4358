//! The daemon as systemd sees it: the real binary with `NOTIFY_SOCKET` on a datagram socket
//! this test owns, `WATCHDOG_USEC`, signals, the status socket, the fault hook, journald.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::fake::{self, Fake};
use crate::{config_text, eventually, pg};

/// Datagrams received from the daemon, with their arrival time.
#[derive(Clone, Default)]
pub struct Notes(Arc<Mutex<Vec<(Instant, String)>>>);

impl Notes {
    fn listen(path: &Path) -> Notes {
        let sock = UnixDatagram::bind(path).unwrap();
        let notes = Notes::default();
        let n = notes.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(len) = sock.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                for line in text.lines() {
                    n.0.lock().unwrap().push((Instant::now(), line.to_string()));
                }
            }
        });
        notes
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.0.lock().unwrap().clone()
    }

    pub fn times_of(&self, prefix: &str) -> Vec<Instant> {
        self.all().into_iter().filter(|(_, l)| l.starts_with(prefix)).map(|(t, _)| t).collect()
    }

    pub fn has(&self, prefix: &str) -> bool {
        !self.times_of(prefix).is_empty()
    }
}

/// Stderr lines of a child, collected as they come.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    pub fn count(&self, needle: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: Log,
    pub notes: Notes,
    pub socket: PathBuf,
    pub _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `collector collect` on `db` and `fake` with `extra` config, `env` added.
    pub async fn start(db: &pg::TestDb, fake: &Fake, extra: &str, env: &[(&str, &str)]) -> Daemon {
        let ws = format!("ws://{}/ws/market", fake.addr);
        Self::start_ws(db, fake, &ws, extra, env).await
    }

    /// Like `start`, with the market WebSocket at `ws`.
    pub async fn start_ws(db: &pg::TestDb, fake: &Fake, ws: &str, extra: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("status.sock");
        let notify = dir.path().join("notify.sock");
        let notes = Notes::listen(&notify);
        let text = crate::config_text_ws(db, &fake.url(), ws, &format!("[daemon]\nstatus_socket = \"{}\"\n{extra}", socket.display()));
        let config = dir.path().join("collector.toml");
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_collector"));
        cmd.args(["collect", "--config", config.to_str().unwrap()])
            .env_remove("COLLECTOR_DATABASE_URL")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &notify)
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let log = Log::default();
        let l = log.clone();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                l.0.lock().unwrap().push(line);
            }
        });
        Daemon { child, log, notes, socket, _dir: dir }
    }

    pub fn signal(&self, sig: i32) {
        unsafe extern "C" {
            fn kill(pid: i32, sig: i32) -> i32;
        }
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { kill(pid, sig) }, 0);
    }

    pub async fn exit_code(&mut self, within: u64) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(within), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("did not exit within {within} s; log:\n{}", self.log.text()))
            .unwrap();
        status.code().unwrap_or(-1)
    }

    /// Waits until the books pass the stubborn fault holds has been running for a while.
    async fn stubborn_pass_running(&self) {
        eventually(20, "the stubborn books pass", || async {
            let (code, json) = self.status(true).await;
            code == 0
                && serde_json::from_str::<serde_json::Value>(&json).unwrap()["collectors"]["books"]["pass_running_secs"]
                    .as_f64()
                    .is_some_and(|s| s > 0.5)
        })
        .await;
    }

    pub async fn status(&self, json: bool) -> (i32, String) {
        let mut args = vec!["status", "--socket", self.socket.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_collector")).args(&args).output().await.unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

pub const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

pub async fn small_fake() -> Fake {
    let fake = Fake::start().await;
    fake.with(|s| s.events = (0..3).map(|e| fake::event(e, 2)).collect());
    fake::books_for_all(&fake, 1_795_683_663_127);
    fake
}

/// The stream with fast test cadences.
pub const FAST_STREAM: &str =
    "[stream]\nping_interval_secs = 1\nrefresh_interval_secs = 1\nreconnect_base_ms = 100\nconnect_interval_ms = 10\n";

pub const FAST: &str = "[catalog]\nfull_sweep_interval_secs = 1\nnew_markets_interval_secs = 1\nresolutions_interval_secs = 1\n\
                    [books]\ninterval_secs = 1\n[health]\nlog_interval_secs = 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_migrations_then_status_watchdog_health_and_clean_stop() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let mut d = Daemon::start(&db, &fake, &format!("drain_grace_secs = 5\n{FAST}"), &[("WATCHDOG_USEC", "1000000")]).await;

    eventually(20, "READY=1", || async { d.notes.has("READY=1") }).await;
    // By READY the schema exists and every collector was started.
    assert!(db.try_count("SELECT count(*) FROM schema_migrations").await.unwrap() >= 1);

    eventually(20, "two health reports, STATUS updates, watchdog pings", || async {
        d.log.count("=== Daemon Health === uptime:") >= 2
            && d.notes.times_of("STATUS=").len() >= 2
            && d.notes.times_of("WATCHDOG=1").len() >= 4
    })
    .await;
    let ready_at = d.notes.times_of("READY=1")[0];
    let pings = d.notes.times_of("WATCHDOG=1");
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(300) && gap <= Duration::from_millis(900), "ping every WATCHDOG_USEC/2 = 500 ms, got {gap:?}");
    }
    assert!(pings[0] >= ready_at - Duration::from_millis(600), "pings start with the daemon");
    let status_lines: Vec<String> = d.notes.all().into_iter().filter(|(_, l)| l.starts_with("STATUS=")).map(|(_, l)| l).collect();
    assert!(status_lines.last().unwrap().contains("markets 6 |"), "{status_lines:?}");
    assert!(status_lines.last().unwrap().contains("restarts 0"), "{status_lines:?}");
    let log = d.log.text();
    assert!(log.contains("  books: items=") && log.contains("  catalog: items="), "{log}");

    let (code, json) = d.status(true).await;
    assert_eq!(code, 0);
    let h: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(h["tasks_alive"], 5, "{json}");
    assert_eq!(h["tasks_dead"], 0);
    assert_eq!(h["total_restarts"], 0);
    assert!(h["uptime_seconds"].as_u64().is_some());
    assert!(h["collectors"]["books"]["total_items"].as_u64().unwrap() >= 12, "{json}");
    assert!(h["collectors"]["catalog"]["last_collect_ts"].is_string(), "{json}");
    // Disk use and its projection per day, from the health reports' samples.
    assert!(h["disk"]["database_bytes"].as_u64().unwrap() > 1_000_000, "{json}");
    assert!(h["disk"]["projected_bytes_per_day"].is_u64(), "{json}");
    assert!(status_lines.last().unwrap().contains("| disk "), "{status_lines:?}");
    let (code, human) = d.status(false).await;
    assert_eq!(code, 0);
    assert!(human.starts_with("=== Daemon Health === uptime: "), "{human}");

    d.signal(SIGTERM);
    assert_eq!(d.exit_code(20).await, 0, "{}", d.log.text());
    assert!(d.notes.has("STOPPING=1"));
    assert!(d.notes.has("EXTEND_TIMEOUT_USEC="));
    assert!(!d.socket.exists(), "the status socket is removed on exit");
    let (code, _) = d.status(true).await;
    assert_eq!(code, 69, "no daemon: exit 69");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_collector_stops_the_watchdog_pings() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let d = Daemon::start(
        &db,
        &fake,
        &format!("stall_timeout_secs = 1\n{FAST}"),
        &[("WATCHDOG_USEC", "400000"), ("COLLECTOR_FAULT_INJECT", "wedge:books")],
    )
    .await;
    eventually(20, "watchdog pings while healthy", || async { d.notes.times_of("WATCHDOG=1").len() >= 2 }).await;
    eventually(20, "wedge detected", || async { d.log.count("withholding watchdog pings") >= 1 }).await;
    let detected = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late: Vec<_> = d.notes.times_of("WATCHDOG=1").into_iter().filter(|t| *t > detected).collect();
    assert!(late.is_empty(), "no pings once wedged, got {}", late.len());
    assert!(d.log.text().contains("collector books has been in one pass"), "{}", d.log.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_collector_is_restarted_with_growing_delays_until_the_budget_is_spent() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let mut d = Daemon::start(
        &db,
        &fake,
        &format!("max_restarts = 3\nrestart_window_secs = 60\nrestart_backoff_base_ms = 200\n{FAST}"),
        &[("COLLECTOR_FAULT_INJECT", "panic:books")],
    )
    .await;
    eventually(20, "first restart", || async { d.log.count("collector task died, restarting") >= 1 }).await;
    // Restarts are ≥ 700 ms apart in total before the budget is spent: the daemon still runs.
    let (code, json) = d.status(true).await;
    assert_eq!(code, 0, "{}", d.log.text());
    let h: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(h["collectors"]["books"]["restarts"].as_u64().unwrap() >= 1, "{json}");
    assert!(h["total_restarts"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(d.exit_code(30).await, 70, "budget spent: exit 70 for systemd to restart");
    let log = d.log.text();
    let field = |l: &str, f: &str| -> u64 { l.split(&format!("{f}=")).nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap() };
    let restarts: Vec<(u64, u64)> = log
        .lines()
        .filter(|l| l.contains("collector task died, restarting"))
        .map(|l| (field(l, "delay_ms"), field(l, "ceiling_ms")))
        .collect();
    assert_eq!(restarts.len(), 3, "{log}");
    // Full jitter under a doubling ceiling: 200, 400, 800 ms.
    for (k, (delay, ceiling)) in restarts.iter().enumerate() {
        assert_eq!(*ceiling, 200u64 << k, "{restarts:?}");
        assert!(delay <= ceiling, "restart {k}: {delay} ms above {ceiling}: {restarts:?}");
    }
    assert!(log.contains("giving up"), "{log}");
    assert!(log.contains("catalog: items=") || log.contains("collector running"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_exits_at_once() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let mut d = Daemon::start(&db, &fake, &format!("drain_grace_secs = 60\n{FAST}"), &[("COLLECTOR_FAULT_INJECT", "stubborn:books")]).await;
    d.stubborn_pass_running().await;
    d.signal(SIGTERM);
    eventually(10, "STOPPING", || async { d.notes.has("STOPPING=1") }).await;
    let t = Instant::now();
    d.signal(SIGINT);
    let code = d.exit_code(10).await;
    assert_eq!(code, 130, "{}", d.log.text());
    assert!(t.elapsed() < Duration::from_secs(5), "exited at once, not after the 60 s grace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_is_bounded_by_the_grace_period() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let mut d = Daemon::start(&db, &fake, &format!("drain_grace_secs = 1\n{FAST}"), &[("COLLECTOR_FAULT_INJECT", "stubborn:books")]).await;
    d.stubborn_pass_running().await;
    let t = Instant::now();
    d.signal(SIGTERM);
    assert_eq!(d.exit_code(10).await, 0);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(d.log.text().contains("did not stop within the grace period"), "{}", d.log.text());
}

/// Journald's native protocol: `KEY=value\n`, or `KEY\n` + u64 LE length + bytes + `\n`.
fn decode_journal(mut b: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let nl = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            out.push((String::from_utf8_lossy(&line[..eq]).into(), String::from_utf8_lossy(&line[eq + 1..]).into()));
            b = &b[(nl + 1).min(b.len())..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &b[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            out.push((key, String::from_utf8_lossy(&rest[8..8 + len]).into()));
            b = &rest[(8 + len + 1).min(rest.len())..];
        }
    }
    out
}

#[test]
fn journal_decoder_reads_both_forms() {
    let mut d = b"MESSAGE=hi\nPRIORITY=6\n".to_vec();
    d.extend_from_slice(b"MULTI\n");
    d.extend_from_slice(&5u64.to_le_bytes());
    d.extend_from_slice(b"a\nb c\n");
    let f = decode_journal(&d);
    assert_eq!(f, vec![("MESSAGE".into(), "hi".into()), ("PRIORITY".into(), "6".into()), ("MULTI".into(), "a\nb c".into())]);
}

/// Runs the daemon in a private mount namespace where `/run/systemd/journal/socket` is a
/// socket this test bound, and decodes the records journald would have stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_records_reach_journald_with_fields_and_message_ids() {
    let probe = std::process::Command::new("unshare").args(["-m", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: unshare -m is not permitted here (needs root)");
        return;
    }
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    std::fs::create_dir(&jdir).unwrap();
    let sock = UnixDatagram::bind(jdir.join("socket")).unwrap();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        config_text(&db, &fake.url(), &format!("[daemon]\nstatus_socket = \"{}/s.sock\"\n{FAST}", dir.path().display())),
    )
    .unwrap();
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
         mount --bind {jdir} /run/systemd/journal && exec {bin} collect --config {config}",
        jdir = jdir.display(),
        bin = env!("CARGO_BIN_EXE_collector"),
        config = config.display()
    );
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("JOURNAL_STREAM", "8:1234")
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut records: Vec<Vec<(String, String)>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 1 << 20];
    while Instant::now() < deadline {
        let got = tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await;
        if let Ok(Ok(n)) = got {
            records.push(decode_journal(&buf[..n]));
        }
        let headers = records.iter().filter(|r| r.iter().any(|(k, v)| k == "MESSAGE" && v.starts_with("=== Daemon Health ==="))).count();
        if headers >= 1
            && records.iter().any(|r| r.iter().any(|(k, v)| k == "COLLECTOR" && v == "books") && r.iter().any(|(k, _)| k == "ITEMS"))
        {
            break;
        }
    }
    let _ = child.start_kill();
    let field = |r: &Vec<(String, String)>, k: &str| r.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let header = records
        .iter()
        .find(|r| field(r, "MESSAGE").is_some_and(|m| m.starts_with("=== Daemon Health ===")))
        .unwrap_or_else(|| panic!("no health record among {} records: {records:?}", records.len()));
    assert_eq!(field(header, "MESSAGE_ID").as_deref(), Some(collector::journal::HEALTH));
    assert_eq!(field(header, "SYSLOG_IDENTIFIER").as_deref(), Some("collector"));
    for k in ["UPTIME_SECS", "TASKS_ALIVE", "TASKS_DEAD", "RESTARTS", "TRADES_INSERTED", "QUEUE_DEPTH", "GAPS"] {
        assert!(field(header, k).is_some(), "health record lacks {k}: {header:?}");
    }
    assert_eq!(field(header, "TASKS_ALIVE").as_deref(), Some("5"));
    let books = records
        .iter()
        .find(|r| field(r, "COLLECTOR").as_deref() == Some("books") && field(r, "ITEMS").is_some())
        .expect("a books health record");
    assert!(field(books, "MESSAGE").unwrap().starts_with("  books: items="));
    assert!(field(books, "ERRORS").is_some() && field(books, "LAST_COLLECT").is_some(), "{books:?}");
    let lifecycle = records.iter().any(|r| field(r, "MESSAGE_ID").as_deref() == Some(collector::journal::LIFECYCLE));
    assert!(lifecycle, "lifecycle records carry their MESSAGE_ID");
}

/// Prints what an operator sees (used for the README's "Operating" section):
/// `cargo test --test integration demo_operating_output -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "demo"]
async fn demo_operating_output() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let mut d = Daemon::start(&db, &fake, "[health]\nlog_interval_secs = 2\n", &[]).await;
    eventually(20, "two health reports", || async { d.log.count("=== Daemon Health ===") >= 2 }).await;
    println!("--- collector status\n{}", d.status(false).await.1);
    println!("--- collector status --json\n{}", d.status(true).await.1);
    println!("--- last STATUS=\n{:?}", d.notes.all().into_iter().rfind(|(_, l)| l.starts_with("STATUS=")));
    d.signal(SIGTERM);
    d.exit_code(20).await;
    println!("--- log\n{}", d.log.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_daemon_commits_what_it_received_and_records_planned_and_unclean_stops() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let ws = crate::fake_ws::FakeWs::start().await;
    let extra = format!("{FAST}{FAST_STREAM}");
    let mut d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(30, "all 12 assets streamed", || async { ws.live_assets().len() == 12 }).await;
    let asset = fake::token_id(2, 1);
    let t0 = crate::now_ms();
    for n in 0..2000 {
        assert!(ws.send_to_asset(&asset, &crate::fake_ws::trade_frame(&asset, n, t0 + n)));
    }
    eventually(30, "every trade received", || async {
        let (code, json) = d.status(true).await;
        code == 0 && serde_json::from_str::<serde_json::Value>(&json).unwrap()["trade_listener"]["trades_received"] == 2000
    })
    .await;
    eventually(10, "health shows the stream", || async {
        d.log.count("  trades: received=") >= 1 && d.notes.all().iter().any(|(_, l)| l.starts_with("STATUS=") && l.contains("| ws 1/1 |"))
    })
    .await;
    d.signal(SIGTERM);
    assert_eq!(d.exit_code(30).await, 0, "{}", d.log.text());
    assert_eq!(db.try_count("SELECT count(*) FROM trades").await, Some(2000), "every trade received before the signal is committed");
    assert_eq!(
        db.try_count("SELECT count(*) FROM stream_gaps WHERE planned AND reason = 'shutdown' AND ended_at IS NULL AND asset_count = 12")
            .await,
        Some(1)
    );

    // Upstream trades while the collector is stopped (an upgrade's restart): the Data API
    // lists them, and the restart closes the planned gap and backfills it.
    let cond: String = db.client().await.query_one("SELECT condition_id FROM tokens WHERE token_id = $1", &[&asset]).await.unwrap().get(0);
    let now = chrono::Utc::now().timestamp();
    fake.with(|s| {
        for k in 0..3 {
            s.trades.push(fake::data_trade(&asset, &cond, "0.52", &format!("{}.75", k + 1), "BUY", now, &format!("0xplanned{k}")));
        }
    });
    let mut d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(30, "planned gap closed and backfilled", || async {
        db.try_count("SELECT count(*) FROM stream_gaps WHERE planned AND ended_at IS NOT NULL AND backfill_status = 'done'").await
            == Some(1)
    })
    .await;
    assert_eq!(db.try_count("SELECT count(*) FROM trades WHERE tx_hash LIKE '0xplanned%'").await, Some(3));
    eventually(30, "streaming again", || async { ws.live_connections() == 1 && ws.with(|s| s.conns.len()) >= 2 && d.notes.has("READY=1") })
        .await;
    // A crash leaves no planned gap: the next start records the unclean stop as a gap and
    // backfills it.
    eventually(30, "a stream book since the restart", || async {
        db.try_count("SELECT count(*) FROM book_snapshots WHERE source = 'ws'").await.unwrap_or(0) >= 1
    })
    .await;
    d.signal(9);
    let _ = d.exit_code(10).await;
    let _d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(30, "unclean stop recorded and backfilled", || async {
        db.try_count("SELECT count(*) FROM stream_gaps WHERE NOT planned AND reason = 'restart after an unclean stop' AND ended_at IS NOT NULL AND backfill_status = 'done'").await == Some(1)
    }).await;
}

/// A stream shard whose task panics is restarted by the supervisor (counted in health), and
/// its assets are covered by a gap from its last data frame until the restarted connection
/// delivers data again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_stream_shard_is_restarted_counted_and_its_assets_covered_by_a_gap() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let ws = crate::fake_ws::FakeWs::start().await;
    // The first lines land in the harness's [daemon] section.
    let extra = format!("restart_backoff_base_ms = 200\n{FAST}{FAST_STREAM}");
    let d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[("COLLECTOR_FAULT_INJECT", "panic-once:shard")]).await;
    let restarted = tokio::time::timeout(
        Duration::from_secs(30),
        eventually(30, "restart", || async {
            ws.live_assets().len() == 12 && ws.with(|s| s.conns.len()) >= 2 && d.log.count("collector task died, restarting") >= 1
        }),
    );
    assert!(restarted.await.is_ok(), "the shard restarted and streaming again; log:\n{}", d.log.text());
    assert!(d.log.text().contains("stream shard 0 panicked: injected fault"), "{}", d.log.text());
    eventually(20, "the gap of the dead task closed at the first data after the restart", || async {
        db.try_count(
            "SELECT count(*) FROM stream_gaps WHERE reason = 'task panicked' AND connection = 0 AND asset_count = 12
                      AND NOT planned AND ended_at IS NOT NULL AND ended_at >= started_at",
        )
        .await
            == Some(1)
    })
    .await;
    let (code, json) = d.status(true).await;
    assert_eq!(code, 0, "{}", d.log.text());
    let h: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(h["trade_listener"]["task_restarts"], 1, "{json}");
    assert!(h["total_restarts"].as_u64().unwrap() >= 1, "{json}");
    assert!(h["collectors"].get("stream").is_none(), "the stream is not a polling collector line: {json}");
    // The restarted shard captures.
    let asset = fake::token_id(1, 0);
    let t0 = crate::now_ms();
    for n in 0..20 {
        assert!(ws.send_to_asset(&asset, &crate::fake_ws::trade_frame(&asset, n, t0 + n)));
    }
    eventually(20, "trades after the restart stored", || async { db.try_count("SELECT count(*) FROM trades").await == Some(20) }).await;
}

/// A database outage longer than the stall timeout: the stream keeps capturing (queue, then
/// spool), so the watchdog keeps being fed; after the outage every trade is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_longer_than_the_stall_timeout_keeps_the_watchdog_fed_and_loses_nothing() {
    let cluster = pg::PrivateCluster::start();
    let db = cluster.test_db();
    let fake = small_fake().await;
    let ws = crate::fake_ws::FakeWs::start().await;
    // The stream alone, on an explicit token list: polling passes waiting on the absent
    // database are another matter (they fail at the pool timeout and count as errors).
    let tokens: Vec<String> = (0..6).flat_map(|m| [fake::token_id(m, 0), fake::token_id(m, 1)]).map(|t| format!("\"{t}\"")).collect();
    let stream = format!(
        "[stream]\nping_interval_secs = 1\nrefresh_interval_secs = 1\nreconnect_base_ms = 100\nconnect_interval_ms = 10\n\
                  queue_capacity = 50\nbatch_size = 20\ntoken_ids = [{}]\n",
        tokens.join(", ")
    );
    let extra =
        format!("stall_timeout_secs = 2\n[catalog]\nenabled = false\n[books]\nenabled = false\n[health]\nlog_interval_secs = 1\n{stream}");
    let d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[("WATCHDOG_USEC", "400000")]).await;
    eventually(30, "streaming", || async { ws.live_assets().len() == 12 && d.notes.has("READY=1") }).await;
    let asset = fake::token_id(1, 0);
    let t0 = crate::now_ms();
    for n in 0..100 {
        assert!(ws.send_to_asset(&asset, &crate::fake_ws::trade_frame(&asset, n, t0 + n)));
    }
    eventually(20, "first trades stored", || async { db.try_count("SELECT count(*) FROM trades").await == Some(100) }).await;
    cluster.down();
    let down_at = Instant::now();
    for n in 100..400 {
        assert!(ws.send_to_asset(&asset, &crate::fake_ws::trade_frame(&asset, n, t0 + n)));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    tokio::time::sleep_until(down_at + Duration::from_secs(6)).await;
    // Well past stall_timeout (2 s): pings went on because the stream still captured.
    let late = d.notes.times_of("WATCHDOG=1").into_iter().filter(|t| *t > down_at + Duration::from_secs(4)).count();
    assert!(late >= 3, "watchdog pings during the outage: {late}; log:\n{}", d.log.text());
    assert!(!d.log.text().contains("withholding watchdog pings"), "{}", d.log.text());
    cluster.up();
    eventually(60, "every trade stored once", || async { db.try_count("SELECT count(*) FROM trades").await == Some(400) }).await;
    assert_eq!(db.try_count("SELECT count(DISTINCT tx_hash) FROM trades").await, Some(400));
}

/// Killed (-9) while upstream trades on; the trades of the downtime are backfilled at the
/// restart, none stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_while_the_daemon_was_killed_are_backfilled_at_the_restart() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let ws = crate::fake_ws::FakeWs::start().await;
    let extra = format!("{FAST}{FAST_STREAM}");
    let mut d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(30, "streaming", || async { ws.live_assets().len() == 12 && d.notes.has("READY=1") }).await;
    let asset = fake::token_id(1, 0);
    let cond: String = db.client().await.query_one("SELECT condition_id FROM tokens WHERE token_id = $1", &[&asset]).await.unwrap().get(0);
    let t0 = crate::now_ms();
    for n in 0..10 {
        assert!(ws.send_to_asset(&asset, &crate::fake_ws::trade_frame(&asset, n, t0 + n)));
    }
    eventually(20, "live trades stored", || async { db.try_count("SELECT count(*) FROM trades").await == Some(10) }).await;
    d.signal(9);
    let _ = d.exit_code(10).await;
    // The Data API lists the live trades and those of the downtime.
    fake.with(|s| {
        for n in 0..10u64 {
            let size = format!("10.{n:06}");
            let side = if n % 2 == 0 { "BUY" } else { "SELL" };
            s.trades.push(fake::data_trade(&asset, &cond, "0.35", &size, side, ((t0 + n) / 1000) as i64, &format!("0x{n:064x}")));
        }
        let now = chrono::Utc::now().timestamp();
        for k in 0..5 {
            s.trades.push(fake::data_trade(&asset, &cond, "0.61", &format!("{}.25", k + 1), "BUY", now, &format!("0xdown{k}")));
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(40, "the downtime's trades backfilled", || async {
        db.try_count("SELECT count(*) FROM trades WHERE source = 'backfill'").await == Some(5)
    })
    .await;
    assert_eq!(db.try_count("SELECT count(*) FROM trades").await, Some(15), "the live ones not twice");
    assert_eq!(
        db.try_count("SELECT count(*) FROM stream_gaps WHERE reason = 'restart after an unclean stop' AND backfill_status = 'done'").await,
        Some(1)
    );
}

/// SIGTERM while the database hangs (connections open, no answer): the stop still ends
/// within the grace, everything received is spooled, and the next start stores it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_database_hangs_spools_everything_for_the_next_start() {
    let cluster = pg::PrivateCluster::start();
    let proxy = pg::HangingProxy::start(&cluster).await;
    let db = proxy.test_db();
    let fake = small_fake().await;
    let ws = crate::fake_ws::FakeWs::start().await;
    let spool = crate::spool_dir();
    let stream = format!(
        "[stream]\nspool_dir = \"{spool}\"\nping_interval_secs = 1\nrefresh_interval_secs = 1\nreconnect_base_ms = 100\nconnect_interval_ms = 10\n"
    );
    let extra = format!("drain_grace_secs = 3\n{FAST}{stream}");
    let mut d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(30, "streaming", || async { ws.live_assets().len() == 12 && d.notes.has("READY=1") }).await;
    let asset = fake::token_id(1, 0);
    let t0 = crate::now_ms();
    for n in 0..50 {
        assert!(ws.send_to_asset(&asset, &crate::fake_ws::trade_frame(&asset, n, t0 + n)));
    }
    eventually(20, "first trades stored", || async { db.try_count("SELECT count(*) FROM trades").await == Some(50) }).await;
    proxy.hang(true);
    for n in 50..250 {
        assert!(ws.send_to_asset(&asset, &crate::fake_ws::trade_frame(&asset, n, t0 + n)));
    }
    eventually(20, "every trade received", || async {
        let (code, json) = d.status(true).await;
        code == 0 && serde_json::from_str::<serde_json::Value>(&json).unwrap()["trade_listener"]["trades_received"] == 250
    })
    .await;
    let stopped = Instant::now();
    d.signal(SIGTERM);
    assert_eq!(d.exit_code(30).await, 0, "{}", d.log.text());
    assert!(stopped.elapsed() < Duration::from_secs(3 + 12), "the stop is bounded: {:?}", stopped.elapsed());
    assert!(d.log.text().contains("rows spooled for the next start"), "{}", d.log.text());
    proxy.hang(false);
    let _d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(40, "the spooled trades stored at the next start", || async {
        db.try_count("SELECT count(*) FROM trades").await == Some(250)
    })
    .await;
    assert_eq!(db.try_count("SELECT count(DISTINCT tx_hash) FROM trades").await, Some(250));
}

/// The scenario, shortened: upstream trades steadily while every socket is dropped
/// once, a connection goes silent, PostgreSQL restarts, poison frames arrive, the daemon is
/// killed (-9) and restarted, then stopped and started again as an upgrade does. At the end
/// `trades` holds exactly what upstream generated: nothing missing, nothing twice.
/// `cargo test --test integration scenario_ -- --nocapture` prints the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_every_generated_trade_is_stored_once_through_drops_silence_outage_kill_and_restart() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let cluster = pg::PrivateCluster::start();
    let db = cluster.test_db();
    let fake = small_fake().await;
    let ws = crate::fake_ws::FakeWs::start().await;
    let spool = crate::spool_dir();
    let stream = format!(
        "[stream]\nspool_dir = \"{spool}\"\nping_interval_secs = 1\nrefresh_interval_secs = 1\nreconnect_base_ms = 100\n\
                          reconnect_max_secs = 1\nconnect_interval_ms = 10\nsilence_timeout_secs = 3\nqueue_capacity = 200\n"
    );
    let extra = format!("drain_grace_secs = 5\nstall_timeout_secs = 3\n{FAST}{stream}");
    let mut d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(30, "streaming", || async { ws.live_assets().len() == 12 && d.notes.has("READY=1") }).await;
    let conds = db.tokens_with_markets().await;

    // Upstream: a trade every 20 ms on a rotating asset, listed by the Data API (block time
    // in seconds, a float price) and sent on the stream to whoever is connected.
    let generated = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let generator = {
        let (fake, ws_handle, generated, running) = (fake.state.clone(), ws.clone(), generated.clone(), running.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while running.load(Ordering::SeqCst) {
                let (asset, cond) = &conds[(n as usize) % conds.len()];
                let ts = crate::now_ms();
                let side = if n % 2 == 0 { "BUY" } else { "SELL" };
                let size = format!("{}.{:06}", 10 + n / 1_000_000, n % 1_000_000);
                fake.lock().unwrap().trades.push(fake::data_trade(
                    asset,
                    cond,
                    "0.3500000001",
                    &size,
                    side,
                    (ts / 1000) as i64,
                    &format!("0x{n:064x}"),
                ));
                ws_handle.send_to_asset(asset, &crate::fake_ws::trade_frame(asset, n, ts));
                n += 1;
                generated.store(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let sleep = |s: u64| tokio::time::sleep(Duration::from_secs(s));
    sleep(3).await;
    ws.drop_all();
    sleep(3).await;
    ws.silence_all();
    sleep(6).await;
    cluster.down();
    sleep(5).await;
    cluster.up();
    sleep(2).await;
    let poison = serde_json::json!({"event_type": "market_resolved", "id": "999", "market": "0xdead", "assets_ids": [],
        "winning_asset_id": "1", "winning_outcome": "No\u{0}", "timestamp": crate::now_ms().to_string()});
    ws.broadcast(&poison.to_string());
    sleep(2).await;
    d.signal(9);
    let _ = d.exit_code(10).await;
    sleep(3).await;
    let mut d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(30, "streaming after the kill", || async { ws.live_assets().len() == 12 && d.notes.has("READY=1") }).await;
    sleep(3).await;
    d.signal(SIGTERM);
    assert_eq!(d.exit_code(30).await, 0, "{}", d.log.text());
    sleep(3).await;
    let d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(30, "streaming after the planned restart", || async { ws.live_assets().len() == 12 && d.notes.has("READY=1") }).await;
    sleep(3).await;
    running.store(false, Ordering::SeqCst);
    generator.await.unwrap();
    let total = generated.load(Ordering::SeqCst) as i64;
    eventually(60, "every gap backfilled", || async {
        db.try_count(
            "SELECT count(*) FROM stream_gaps WHERE NOT (planned AND ended_at IS NULL)
                       AND (ended_at IS NULL OR backfill_status IS NULL OR backfill_status LIKE 'retrying%')",
        )
        .await
            == Some(0)
            && db.try_count("SELECT count(DISTINCT tx_hash) FROM trades").await == Some(total)
    })
    .await;
    let count = |sql: &'static str| db.try_count(sql);
    let stored = count("SELECT count(*) FROM trades").await.unwrap();
    let distinct = count("SELECT count(DISTINCT tx_hash) FROM trades").await.unwrap();
    let live = count("SELECT count(*) FROM trades WHERE source = 'ws'").await.unwrap();
    let backfilled = count("SELECT count(*) FROM trades WHERE source = 'backfill'").await.unwrap();
    let gaps = count("SELECT count(*) FROM stream_gaps").await.unwrap();
    println!(
        "SCENARIO generated={total} stored_live={live} backfilled={backfilled} missing={} duplicated={} gaps={gaps}",
        total - distinct,
        stored - distinct
    );
    assert_eq!(stored, total, "nothing missing, nothing twice");
    assert!(count("SELECT count(*) FROM stream_quarantine WHERE reason LIKE 'refused by the database%'").await.unwrap() >= 1);
}

/// `collector status --config PATH` finds the socket the configuration names; the daemon
/// creates the socket's directory when it does not exist yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_finds_the_socket_from_the_configuration() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/nested/status.sock");
    let config = dir.path().join("collector.toml");
    std::fs::write(&config, config_text(&db, &fake.url(), &format!("[daemon]\nstatus_socket = \"{}\"\n{FAST}", socket.display()))).unwrap();
    let _child = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["collect", "--config", config.to_str().unwrap()])
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = |args: Vec<String>| async move {
        let out = Command::new(env!("CARGO_BIN_EXE_collector")).args(&args).output().await.unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let args = vec!["status".to_string(), "--config".into(), config.display().to_string()];
    eventually(20, "status through --config", || async { status(args.clone()).await.0 == 0 }).await;
    let (_, out, _) = status(args.clone()).await;
    assert!(out.starts_with("=== Daemon Health ==="), "{out}");
    // A configuration naming a socket nobody serves: the error says so.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, config_text(&db, &fake.url(), &format!("[daemon]\nstatus_socket = \"{}/none.sock\"\n", dir.path().display())))
        .unwrap();
    let (code, _, err) = status(vec!["status".into(), "--config".into(), other.display().to_string()]).await;
    assert_eq!(code, 69);
    assert!(err.contains("no status socket at") && err.contains("none.sock"), "{err}");
}

/// SIGHUP (`systemctl reload`) re-reads the configuration instead of killing the daemon: the
/// log level, a polling interval and a request budget apply live (the books loop, resting for
/// an hour, wakes up and polls every second), other changes are named as needing a restart,
/// a bad file is refused with its problems and the daemon runs on; RELOADING=1 … READY=1
/// frame each reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration_and_a_bad_file_is_refused() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    // The configured level, not RUST_LOG, decides (an empty RUST_LOG is unset).
    let hourly = FAST.replace("[books]\ninterval_secs = 1", "[books]\ninterval_secs = 3600");
    let mut d = Daemon::start(&db, &fake, &format!("{hourly}[log]\nlevel = \"info\"\n"), &[("RUST_LOG", "")]).await;
    eventually(20, "running", || async { d.notes.has("READY=1") && d.status(false).await.0 == 0 }).await;
    // The books loop made its first pass at start (perhaps before the catalog had tokens, so
    // perhaps without a request) and now rests for an hour.
    let passes = fake.hits("books");
    let config = d._dir.path().join("collector.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("interval_secs = 3600"), "{text}");
    let text = text
        .replace("interval_secs = 3600", "interval_secs = 1")
        .replace("level = \"info\"", "level = \"debug\"")
        .replace("[books]", "[books]\nbatch_size = 50")
        .replace("[upstream]", "[upstream]\ndata_requests_per_10s = 400");
    std::fs::write(&config, &text).unwrap();
    d.signal(SIGHUP);
    eventually(10, "reloaded", || async { d.log.count("configuration reloaded") == 1 }).await;
    let log = d.log.text();
    assert!(log.contains("applied [upstream.data_requests_per_10s, books.interval_secs, log.level]"), "{log}");
    assert!(log.contains("needs a restart to apply: [books.batch_size]"), "{log}");
    eventually(10, "books polled again within seconds, not the hour", || async { fake.hits("books") >= passes + 2 }).await;
    eventually(10, "debug records after the reload", || async { d.log.count(" DEBUG ") >= 1 }).await;
    assert!(d.notes.has("RELOADING=1"), "{:?}", d.notes.all());
    // A bad file: refused, every problem listed, still running.
    std::fs::write(&config, "[books]\ninterval_secs = \"often\"\nmystery = 1\n").unwrap();
    d.signal(SIGHUP);
    eventually(10, "refused", || async { d.log.count("reload refused") == 1 }).await;
    let log = d.log.text();
    assert!(log.contains("books.interval_secs: expected an integer") && log.contains("books.mystery: unknown key"), "{log}");
    assert_eq!(d.status(false).await.0, 0, "still running");
    d.signal(SIGTERM);
    assert_eq!(d.exit_code(30).await, 0, "{}", d.log.text());
}

/// The opt-in Prometheus endpoint: a scrape answers what `get_health()` knows, in the
/// OpenMetrics text format; anything but /metrics is a 404. The port is the OS's choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_scrape_shows_collectors_stream_and_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let ws = crate::fake_ws::FakeWs::start().await;
    let extra = format!("{FAST}{FAST_STREAM}[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(30, "streaming and polled", || async { ws.live_assets().len() == 12 && d.log.count("  books: items=") >= 1 }).await;
    let line = d
        .log
        .text()
        .lines()
        .find(|l| l.contains("metrics endpoint listening on http://"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no metrics line: {}", d.log.text()));
    let addr = line.split("http://").nth(1).unwrap().split('/').next().unwrap().to_string();
    let get = |path: &'static str| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let books_items = |scrape: &str| -> f64 {
        scrape
            .lines()
            .find(|l| l.starts_with("collector_items_total{collector=\"books\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    eventually(20, "books stored and disk growth projected, as the scrape says", || async {
        let scrape = get("/metrics").await;
        books_items(&scrape) >= 12.0 && scrape.contains("collector_database_growth_bytes_per_day ")
    })
    .await;
    let scrape = get("/metrics").await;
    if std::env::var_os("SHOW_SCRAPE").is_some() {
        println!("{scrape}");
    }
    assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n") && scrape.contains("application/openmetrics-text"), "{scrape}");
    for needle in [
        "collector_uptime_seconds ",
        "collector_tasks{state=\"alive\"} 6",
        "collector_items_total{collector=\"books\"} ",
        "collector_last_success_timestamp_seconds{collector=\"catalog\"} ",
        "collector_stream_connections{state=\"active\"} 1",
        "collector_stream_assets_subscribed 12",
        "collector_stream_queue_depth 0",
        "collector_stream_spool_bytes 0",
        "collector_stream_gaps_total ",
        "collector_http_requests_total{endpoint=\"gamma_listing\"} ",
        "collector_http_requests_total{endpoint=\"clob_books\"} ",
        "collector_database_bytes ",
        "# EOF",
    ] {
        assert!(scrape.contains(needle), "missing {needle:?} in:\n{scrape}");
    }
    assert!(get("/other").await.starts_with("HTTP/1.1 404"));
    // Every metric the packaged Grafana dashboard plots exists in a scrape.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/grafana-dashboard.json")).unwrap())
            .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("collector_")) {
                assert!(
                    scrape.lines().any(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{'])),
                    "dashboard panel {:?} plots {name}, absent from the scrape",
                    panel["title"]
                );
            }
        }
    }
}

/// A reload applies the stream's scope at once: assets of a newly included tag are
/// subscribed without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_stream_scope_live() {
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let ws = crate::fake_ws::FakeWs::start().await;
    let extra = format!("{FAST}{FAST_STREAM}tag_slugs = [\"no-such-tag\"]\n");
    let d = Daemon::start_ws(&db, &fake, &ws.url(), &extra, &[]).await;
    eventually(20, "catalog stored, nothing in scope", || async {
        db.try_count("SELECT count(*) FROM tokens").await == Some(12) && d.notes.has("READY=1")
    })
    .await;
    assert!(ws.live_assets().is_empty());
    let config = d._dir.path().join("collector.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("tag_slugs = [\"no-such-tag\"]", "tag_slugs = [\"economy\"]")).unwrap();
    d.signal(SIGHUP);
    eventually(20, "the new scope streamed", || async { ws.live_assets().len() == 12 }).await;
    assert!(d.log.text().contains("applied [stream.tag_slugs]"), "{}", d.log.text());
}
