//! Logging: to journald natively when running under systemd's journal, otherwise to stderr in
//! a human format. `RUST_LOG` overrides the configured level.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. Returns where logs go, for the startup line.
pub fn init(level: &str) -> &'static str {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // systemd sets JOURNAL_STREAM when stdout/stderr are connected to the journal.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            let journald = journald.with_syslog_identifier("collector".into());
            if tracing_subscriber::registry().with(filter.clone()).with(journald).try_init().is_ok() {
                return "journald";
            }
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    "stderr"
}
