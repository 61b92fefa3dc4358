//! Configuration: a TOML file (default `/etc/collector/collector.toml`) read into a validated
//! [`Config`].
//!
//! Every key has one place here: the line that reads it names the key, its default and its
//! check. The reader records every key it read with its effective value and its default
//! ([`Setting`]), so `check-config` output ([`Config::render`]) and the test that the packaged
//! example documents every key with its default derive from that one line. Loading never
//! stops at the first problem: unknown keys, wrong types and bad values are all collected and
//! reported together (exit 78). The database password never appears in the rendered output;
//! the URL is printed through a redactor the caller passes (the URL rules live in `db::url`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/collector/collector.toml";
/// Environment variable that overrides `database.url`.
pub const DATABASE_URL_ENV: &str = "COLLECTOR_DATABASE_URL";
/// Name of the systemd credential (`LoadCredential=db-password:...`) holding the password.
pub const PASSWORD_CREDENTIAL: &str = "db-password";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every key as read: effective value and default, in file order of sections.
    pub settings: Vec<Setting>,
    pub database: DatabaseConfig,
    pub upstream: UpstreamConfig,
    pub catalog: CatalogConfig,
    pub books: BooksConfig,
    pub stream: StreamConfig,
    pub health: HealthConfig,
    pub daemon: DaemonConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub archive: ArchiveConfig,
}

#[derive(Clone)]
pub struct DatabaseConfig {
    /// Connection URL (`postgresql://user@host/db?sslmode=require`). `COLLECTOR_DATABASE_URL`
    /// overrides it.
    pub url: String,
    /// Password read from `password_file` or the `db-password` systemd credential, if any.
    pub password: Option<String>,
    /// Where the password came from, for the startup log (never the password itself).
    pub password_source: Option<String>,
    /// PEM file with extra CA certificates for TLS to the server. Default: system roots only.
    pub ssl_root_cert: Option<PathBuf>,
    /// Connections in the pool. Default 8 (the stream writer uses two at a time).
    pub pool_size: u32,
    /// Timeout of one connection attempt. Default 10 s.
    pub connect_timeout: Duration,
    /// How long start-up keeps retrying an unreachable database before exiting 69. Default 300 s.
    pub startup_deadline: Duration,
    /// `statement_timeout` of the collector's connections (`None`: no limit). Default 120 s.
    /// Maintenance that may rightly take longer (rebuilding a day's indexes) lifts it for itself.
    pub statement_timeout: Option<Duration>,
    /// `lock_timeout` of the collector's connections (`None`: no limit). Default 30 s. Partition
    /// DDL waits at most 2 s (`db::partitions::DDL_LOCK_TIMEOUT`) whatever this says.
    pub lock_timeout: Option<Duration>,
    /// TCP keepalive: idle time before the first probe. Probes follow every 10 s; after 3
    /// unanswered (and when sent data stays unacknowledged this long × 3) the connection
    /// counts as dead. Default 30 s: a database host cut off is noticed within ~1 minute.
    pub tcp_keepalive: Duration,
    /// Citus: the stream tables distributed on the token key, the catalog and dictionaries
    /// reference tables, after the migrations (`db::distribute`, docs/scaling.md). Default
    /// false.
    pub distributed: bool,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password in several forms: not printed here at all.
        f.debug_struct("DatabaseConfig")
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub gamma_url: Url,
    pub clob_url: Url,
    pub data_url: Url,
    pub ws_url: Url,
    /// User-Agent sent on every request. Default `collector/<version>`.
    pub user_agent: String,
    /// Timeout of one HTTP request, connect to last byte. Default 30 s.
    pub request_timeout: Duration,
    /// Retries of one request after a 429, 5xx, HTML page, reset or timeout. Default 5.
    pub max_retries: u32,
    /// First retry delay; doubles each retry, with full jitter. Default 500 ms.
    pub backoff_base: Duration,
    /// Longest retry delay (a `Retry-After` may ask for more and is honoured). Default 60 s.
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured (HTTP and WebSocket handshakes); longer asks are
    /// clamped to it. Default 300 s.
    pub retry_after_max: Duration,
    /// Request budget for Gamma listing routes per 10 s. Default 200 (documented limit 300).
    pub gamma_requests_per_10s: u32,
    /// Request budget for CLOB `POST /books` per 10 s. Default 250 (documented limit 500).
    pub clob_books_requests_per_10s: u32,
    /// Request budget for Data API trades per 10 s. Default 100 (documented limit 200/300).
    pub data_requests_per_10s: u32,
}

#[derive(Debug, Clone)]
pub struct CatalogConfig {
    pub enabled: bool,
    /// Full sweep of `/events/keyset?closed=false`. Default 900 s.
    pub full_sweep_interval: Duration,
    /// Pass over the newest markets (`/markets/keyset` by creation, newest first). Default 60 s.
    pub new_markets_interval: Duration,
    /// Pages of the newest-markets pass before it stops even if all were new. Default 5.
    pub new_markets_max_pages: u32,
    /// Pass re-reading markets that ended, vanished from the open list or await resolution.
    /// Default 300 s.
    pub resolutions_interval: Duration,
    /// How long after closing a market is re-read until it shows as resolved. Default 14 days.
    pub resolution_watch: Duration,
    /// Page size of keyset listings. Default 100 (the reported markets cap).
    pub page_size: u32,
    /// Sweep the closed part of the catalog once (closed events and markets with their
    /// outcome and tokens), resumable. Default true.
    pub history: bool,
    /// Time between two history passes while the sweep runs. Default 10 s.
    pub history_interval: Duration,
    /// Pages (of `page_size` events) per history pass: the sweep shares Gamma's budget with
    /// the other passes. Default 20.
    pub history_pages_per_pass: u32,
}

#[derive(Debug, Clone)]
pub struct BooksConfig {
    pub enabled: bool,
    /// Time between two polls of every active token. Default 60 s.
    pub interval: Duration,
    /// Tokens per `POST /books` request. Default 100.
    pub batch_size: u32,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub enabled: bool,
    /// Assets per WebSocket connection. Default 200 (500 stops delivery upstream; stalls
    /// were reported from ~250).
    pub max_assets_per_connection: usize,
    /// The slice of the universe this instance records (`shard = "i/n"`, default `0/1`:
    /// everything): the stream and the books poll take only its markets (docs/scaling.md).
    pub shard: crate::slice::Slice,
    /// Delay between opening two connections (bursts of handshakes get 429). Default 150 ms
    /// (1,600 connections, the whole universe, open in 4 minutes).
    pub connect_interval: Duration,
    /// Text `PING` cadence; upstream closes a connection without one (1008). Default 10 s.
    pub ping_interval: Duration,
    /// A connection with no data frame (PONG does not count) this long is rebuilt. Default 60 s.
    pub silence_timeout: Duration,
    /// An asset with no first `book` this long after subscribing gets its connection rebuilt
    /// (once). Default 30 s.
    pub first_book_timeout: Duration,
    /// How often the subscription set is recomputed from the catalog. Default 30 s.
    pub refresh_interval: Duration,
    /// Scope: only markets with at least this 24 h volume (USD). Default 0 (all).
    pub min_volume_24h: u64,
    /// Scope: only markets with at least this liquidity (USD). Default 0 (all).
    pub min_liquidity: u64,
    /// Scope: only markets of events carrying one of these tag slugs. Default empty (all).
    pub tag_slugs: Vec<String>,
    /// Scope: exactly these token ids, instead of the catalog. Default empty.
    /// Shared, not copied: the configuration is held in several places (the running copy, the
    /// stream's live settings) and the list may be tens of thousands of ids.
    pub token_ids: std::sync::Arc<[String]>,
    /// Store every `price_change` level update in `price_changes`. Default true.
    pub store_price_changes: bool,
    /// Rows the write queue holds before spilling to the spool. Default 100,000.
    pub queue_capacity: usize,
    /// Bytes (about: each row's memory) the write queue holds before spilling to the spool.
    /// Default 256 MiB: a burst of large rows (books of thousands of levels) spills before it
    /// grows the process past its memory budget; the default row bound is reached first on
    /// the real mix (~250 bytes a row).
    pub queue_max_bytes: usize,
    /// While another instance of this slice writes its level changes (docs/scaling.md), the
    /// last this-many seconds of them are held in memory to take over from. Default 30 s (a
    /// takeover after a kill takes ~2–4 s, after a network cut ~16 s). At least 5 s: a takeover
    /// holds everything for its 2 s overlap.
    pub standby_window: Duration,
    /// The standby window's bound in memory (MiB, about; a held level change takes ~330
    /// bytes). Default 512 MiB: 30 s of the whole universe's ~45,000 level changes a second
    /// (a slice of it needs less). Used only while standing by.
    pub standby_window_bytes: usize,
    /// Rows per database transaction: a batch closes once it holds this many (a frame's
    /// rows travel together, so its last frame may take it a little past). Default 10,000 (two batches are written at a
    /// time, so larger ones gain no throughput and only add latency — BENCHMARKS.md).
    pub batch_size: usize,
    /// How long a batch fills after its first row, unless full sooner. Default 50 ms: each
    /// transaction costs the database CPU beyond its rows, so batches cut early cost more per
    /// row under load (measured in BENCHMARKS.md, issue 10, fourth part).
    pub flush_interval: Duration,
    /// Directory of the on-disk spool. Default `$STATE_DIRECTORY`, else `/var/lib/collector`.
    pub spool_dir: PathBuf,
    /// Spool size bound; past it rows are dropped with an ERROR. Default 1 GiB (~20 million
    /// rows of the real mix, ~54 bytes a row).
    pub spool_max_bytes: u64,
    /// Days of level changes kept: older daily partitions are dropped (hourly check). Default
    /// 0: keep everything.
    pub retention_days: u32,
    /// Days of trades kept, the same way. Default 0: keep everything.
    pub trades_retention_days: u32,
    /// Days of quotes (best bid/ask) kept, the same way. Default 0: keep everything.
    pub quotes_retention_days: u32,
    /// Backfill trades of gaps from the Data API. Default true.
    pub backfill: bool,
    /// Planned gaps (a clean stop and start) up to this long are backfilled too; longer ones
    /// are only recorded. Default 86,400 s (24 h).
    pub backfill_planned_max: Duration,
    /// Data API pages (500 trades each) per group of 20 markets before a backfill stops short
    /// of the gap's start and is marked partial. Default 200.
    pub backfill_max_pages: usize,
    /// Reconnect delay doubles from this, with jitter. Default 1000 ms.
    pub reconnect_base: Duration,
    /// Longest reconnect delay (a handshake `Retry-After` may ask for more). Default 60 s.
    pub reconnect_max: Duration,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Health log cadence. Default 60 s.
    pub log_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// How long a clean stop waits for collectors to finish and queues to flush; keep it
    /// below the unit's `TimeoutStopSec`. Default 30 s.
    pub drain_grace: Duration,
    /// Unix socket serving `collector status`. Default `$RUNTIME_DIRECTORY/status.sock`, else
    /// `/run/collector/status.sock`.
    pub status_socket: PathBuf,
    /// Restarts of one collector tolerated within `restart_window`; one more and the daemon
    /// exits 70 for systemd to restart it. Default 5.
    pub max_restarts: u32,
    /// Default 300 s.
    pub restart_window: Duration,
    /// First restart delay of a crashed collector; doubles per restart up to 60 s, jittered.
    /// Default 1000 ms.
    pub restart_backoff_base: Duration,
    /// A collector pass running longer than this counts as wedged and stops the systemd
    /// watchdog pings. Default 900 s.
    pub stall_timeout: Duration,
    /// This instance's name in `stream_instances` (docs/scaling.md). Default
    /// `<host>:<config file name>` (empty here).
    pub instance: String,
    /// Elect one leader among the instances sharing the database for the shared work
    /// (catalog, history, partitions, retention, archive; `db::leader`). Off: this
    /// instance always does it. Default true.
    pub leader_election: bool,
}

/// The hourly Parquet archive of the stream tables (docs/archive.md).
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// Archive closed hours (and release archived days from the database). Default true.
    pub enabled: bool,
    /// Where the files go: `<dir>/<table>/date=YYYY-MM-DD/hour=HH.parquet`. Default
    /// `$STATE_DIRECTORY/archive`, else `/var/lib/collector/archive`.
    pub dir: PathBuf,
    /// Days of the partitioned stream tables kept in the database; older days are dropped
    /// once every hour of them is archived and verified. 0 keeps everything. Default 7.
    pub keep_days: u32,
    /// An hour is archived this many hours after it ends (so backfills of recent gaps land
    /// first). Default 2, at least 1.
    pub after_hours: u32,
    /// ZSTD level of the files (1–22). Default 9.
    pub zstd_level: i32,
    /// Keep each level change's `hash` in the archive (20 random bytes a row that do not
    /// compress: docs/archive.md says what it verifies). Default false.
    pub level_hashes: bool,
    /// Rows per Parquet row group. Default 1,000,000.
    pub row_group_rows: usize,
    /// How often the daemon looks for hours to archive. Default 600 s.
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint (`GET /metrics`), e.g. `127.0.0.1:9464`. Default:
    /// none (off).
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter (`info`, `collector=debug,info`). `RUST_LOG` overrides it. Default `info`.
    pub level: String,
}

/// Every problem found while loading, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration in {path}:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    pub path: String,
    pub problems: Vec<String>,
}

impl Config {
    /// Reads and validates `path`. A missing file is an error: the daemon never runs on
    /// silent defaults.
    /// `check` adds the problems other layers find (the database URL's syntax, in `db::url`),
    /// so that every problem is still reported at once.
    pub fn load(path: &Path, check: impl Fn(&Config) -> Vec<String>) -> Result<Config, ConfigError> {
        let error = |problems| ConfigError { path: path.display().to_string(), problems };
        let text = std::fs::read_to_string(path).map_err(|e| error(vec![format!("cannot read the file: {e}")]))?;
        let (config, mut problems) = Self::read(&text, &Env::from_process()).map_err(error)?;
        problems.extend(check(&config));
        if problems.is_empty() { Ok(config) } else { Err(error(problems)) }
    }

    /// Parses and validates configuration text, reading overrides and secrets through `env`.
    pub fn parse(text: &str, env: &Env) -> Result<Config, Vec<String>> {
        let (config, problems) = Self::read(text, env)?;
        if problems.is_empty() { Ok(config) } else { Err(problems) }
    }

    /// The effective configuration as TOML, from the recorded settings: one line per key,
    /// `# default …` where the value differs from the default, unset optional keys as
    /// comments. The database URL goes through `redact_url`; the password is never shown.
    pub fn render(&self, redact_url: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        let mut section = "";
        for s in &self.settings {
            if s.section != section {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&format!("[{}]\n", s.section));
                section = s.section;
            }
            let value = match (&s.value, s.section, s.key.as_str()) {
                (None, ..) => {
                    match &s.note {
                        Some(note) => out.push_str(&format!("# {}: {note}\n", s.key)),
                        None => out.push_str(&format!("# {} is not set\n", s.key)),
                    }
                    continue;
                }
                (Some(toml::Value::String(u)), "database", "url") => toml::Value::String(redact_url(u)).to_string(),
                (Some(v), ..) => v.to_string(),
            };
            let mut notes: Vec<String> = s.note.iter().cloned().collect();
            if let Some(d) = s.default.as_ref().filter(|d| Some(*d) != s.value.as_ref()) {
                notes.push(format!("default {d}"));
            }
            if notes.is_empty() {
                out.push_str(&format!("{} = {value}\n", s.key));
            } else {
                out.push_str(&format!("{} = {value}  # {}\n", s.key, notes.join("; ")));
            }
        }
        out
    }
}

/// What configuration loading reads from the process environment, passed in so tests need
/// not mutate the environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `COLLECTOR_DATABASE_URL`.
    pub database_url: Option<String>,
    /// `CREDENTIALS_DIRECTORY`, set by systemd for `LoadCredential=`.
    pub credentials_directory: Option<String>,
    /// `RUNTIME_DIRECTORY`, set by systemd for `RuntimeDirectory=`.
    pub runtime_directory: Option<String>,
    /// `STATE_DIRECTORY`, set by systemd for `StateDirectory=`.
    pub state_directory: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        let non_empty = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            database_url: non_empty(DATABASE_URL_ENV),
            credentials_directory: non_empty("CREDENTIALS_DIRECTORY"),
            runtime_directory: non_empty("RUNTIME_DIRECTORY"),
            state_directory: non_empty("STATE_DIRECTORY"),
        }
    }
}

/// A secret file's content without its line ending; `None` when empty (the package ships an
/// empty credential file, meaning no password).
fn read_secret(path: &Path) -> std::io::Result<Option<String>> {
    let text = std::fs::read_to_string(path)?;
    let secret = text.trim_end_matches(['\n', '\r']);
    Ok((!secret.trim().is_empty()).then(|| secret.to_string()))
}

/// One key as read: its effective value (`None`: optional and unset) and its default.
#[derive(Clone, PartialEq)]
pub struct Setting {
    pub section: &'static str,
    pub key: String,
    pub value: Option<toml::Value>,
    pub default: Option<toml::Value>,
    /// Where the value came from when not the file (an environment variable, a credential).
    pub note: Option<String>,
}

impl fmt::Debug for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The database URL may carry a password: never printed by Debug.
        let secret = self.section == "database" && self.key == "url";
        write!(f, "{}.{} = {}", self.section, self.key, if secret { "(redacted)".to_string() } else { format!("{:?}", self.value) })
    }
}

mod read;
mod section;

#[cfg(test)]
mod tests;
