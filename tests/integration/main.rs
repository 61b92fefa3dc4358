//! The integration tests: one binary, a real PostgreSQL, a fake Polymarket, the real
//! `collector` binary where the process boundary matters.

mod archive;
mod bench;
mod bench_archive;
#[cfg(feature = "loadgen")]
mod bench_universe;
mod books;
mod catalog;
mod cli;
mod client;
mod daemon;
mod fake;
mod fake_ws;
mod layout;
mod migrations;
mod pg;
mod scaling;
mod soak;
pub mod stream;
mod system;
mod years;

use collector::config::{Config, Env};

/// Configuration text for a collector using `db` and a fake Polymarket at `upstream`, with
/// fast test cadences. `extra` is appended (it may add tables or keys).
pub fn config_text(db: &pg::TestDb, upstream: &str, extra: &str) -> String {
    let ws = format!("ws://{}/ws/market", upstream.trim_start_matches("http://"));
    config_text_ws(db, upstream, &ws, extra)
}

/// [`config_text`] with the market WebSocket at `ws`.
pub fn config_text_ws(db: &pg::TestDb, upstream: &str, ws: &str, extra: &str) -> String {
    format!(
        r#"
[database]
url = "{url}"
startup_deadline_secs = 5
connect_timeout_secs = 2

[upstream]
gamma_url = "{upstream}"
clob_url = "{upstream}"
data_url = "{upstream}"
ws_url = "{ws}"
backoff_base_ms = 10
backoff_max_secs = 1
max_retries = 4
request_timeout_secs = 5
gamma_requests_per_10s = 10000
clob_books_requests_per_10s = 10000

{extra}
{stream}
{archive}
"#,
        url = db.url,
        extra = if extra.contains("spool_dir") {
            extra.to_string()
        } else {
            extra.replace("[stream]\n", &format!("[stream]\nspool_dir = \"{}\"\n", spool_dir()))
        },
        // The archive is on by default (its directory under /var/lib): off in tests unless
        // the test sets it up.
        archive = if extra.contains("[archive]") { "" } else { "[archive]\nenabled = false\n" },
        stream = if extra.contains("[stream]") {
            String::new()
        } else {
            format!("[stream]\nenabled = false\nspool_dir = \"{}\"\n", spool_dir())
        },
    )
}

/// A fresh directory for one test's spool (removed with the temp dir at reboot; tiny).
pub fn spool_dir() -> String {
    tempfile::Builder::new().prefix("collector-spool-").tempdir().unwrap().keep().display().to_string()
}

/// The parsed config of [`config_text`] with defaults for the rest.
pub fn config_for(db: &pg::TestDb, upstream: &str) -> Config {
    Config::parse(&config_text(db, upstream, ""), &Env::default()).unwrap()
}

/// Polls `check` until it returns true or `secs` pass; panics with `what` on timeout.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Now, in epoch milliseconds: stream events carry current times (the collector refuses
/// times far from the receive time).
pub fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis() as u64
}
