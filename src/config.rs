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

use std::collections::BTreeSet;
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
    /// Delay between opening two connections (bursts of handshakes get 429). Default 250 ms.
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
    /// Rows per database transaction: a batch closes once it holds this many (a frame's
    /// rows travel together, so its last frame may take it a little past). Default 10,000 (two batches are written at a
    /// time, so larger ones gain no throughput and only add latency — BENCHMARKS.md).
    pub batch_size: usize,
    /// How long a batch fills after its first row, unless full sooner. Default 50 ms: each
    /// transaction costs the database ~1.6 ms of CPU beyond its rows, so batches cut early
    /// cost up to 40 % more per row under load.
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

    /// Reads configuration text: the configuration (bad values replaced by their defaults)
    /// and every problem found. `Err` only when the text is not TOML at all.
    pub fn read(text: &str, env: &Env) -> Result<(Config, Vec<String>), Vec<String>> {
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => return Err(vec![format!("not valid TOML: {}", e.to_string().trim())]),
        };
        let mut problems = Vec::new();
        let mut settings = Vec::new();
        let mut root = Section::new("", table, &mut problems, &mut settings);
        let database_t = root.table("database");
        let upstream_t = root.table("upstream");
        let catalog_t = root.table("catalog");
        let books_t = root.table("books");
        let health_t = root.table("health");
        let stream_t = root.table("stream");
        let log_t = root.table("log");
        let daemon_t = root.table("daemon");
        let metrics_t = root.table("metrics");
        root.finish();

        let mut s = Section::new("database", database_t, &mut problems, &mut settings);
        let file_url = s.string("url", "postgresql://collector@localhost/collector");
        let password_file = s.opt_string("password_file");
        let ssl_root_cert = s.opt_string("ssl_root_cert").map(PathBuf::from);
        let pool_size = s.int("pool_size", 8, 1, 1000) as u32;
        let connect_timeout = s.secs("connect_timeout_secs", 10, 1, 3600);
        let startup_deadline = s.secs("startup_deadline_secs", 300, 0, 86_400);
        let statement_timeout = Some(s.secs("statement_timeout_secs", 120, 0, 86_400)).filter(|d| !d.is_zero());
        let lock_timeout = Some(s.secs("lock_timeout_secs", 30, 0, 86_400)).filter(|d| !d.is_zero());
        let tcp_keepalive = s.secs("tcp_keepalive_secs", 30, 1, 7200);
        let url = match &env.database_url {
            Some(u) => {
                s.overridden("url", toml::Value::String(u.clone()), DATABASE_URL_ENV);
                u.clone()
            }
            None => file_url,
        };
        s.finish();
        let (password, password_source) = match (&password_file, &env.credentials_directory) {
            (Some(file), _) => match read_secret(Path::new(file)) {
                Ok(p) => (p, Some(file.clone())),
                Err(e) => {
                    problems.push(format!("database.password_file: cannot read {file}: {e}"));
                    (None, None)
                }
            },
            (None, Some(dir)) => match read_secret(&Path::new(dir).join(PASSWORD_CREDENTIAL)) {
                Ok(p) => (p, Some(format!("systemd credential {PASSWORD_CREDENTIAL}"))),
                Err(_) => (None, None),
            },
            (None, None) => (None, None),
        };
        let password_source = password_source.filter(|_| password.is_some());
        settings.push(Setting {
            section: "database",
            key: "password".into(),
            value: None,
            default: None,
            note: Some(match &password_source {
                Some(src) => format!("*** (from {src})"),
                None => "none configured".into(),
            }),
        });
        let database = DatabaseConfig {
            url,
            password,
            password_source,
            ssl_root_cert,
            pool_size,
            connect_timeout,
            startup_deadline,
            statement_timeout,
            lock_timeout,
            tcp_keepalive,
        };

        let mut s = Section::new("upstream", upstream_t, &mut problems, &mut settings);
        let gamma_url = s.url("gamma_url", "https://gamma-api.polymarket.com", &["http", "https"]);
        let clob_url = s.url("clob_url", "https://clob.polymarket.com", &["http", "https"]);
        let data_url = s.url("data_url", "https://data-api.polymarket.com", &["http", "https"]);
        let ws_url = s.url("ws_url", "wss://ws-subscriptions-clob.polymarket.com/ws/market", &["ws", "wss"]);
        let user_agent = s.string("user_agent", concat!("collector/", env!("CARGO_PKG_VERSION"), " (polymarket market-data recorder)"));
        if user_agent.trim().is_empty() {
            s.problem("user_agent", "must not be empty (a default agent gets 403 error 1010)");
        }
        let upstream = UpstreamConfig {
            gamma_url,
            clob_url,
            data_url,
            ws_url,
            user_agent,
            request_timeout: s.secs("request_timeout_secs", 30, 1, 600),
            max_retries: s.int("max_retries", 5, 0, 100) as u32,
            backoff_base: s.millis("backoff_base_ms", 500, 1, 600_000),
            backoff_max: s.secs("backoff_max_secs", 60, 1, 3600),
            retry_after_max: s.secs("retry_after_max_secs", 300, 1, 86_400),
            gamma_requests_per_10s: s.int("gamma_requests_per_10s", 200, 1, 10_000) as u32,
            clob_books_requests_per_10s: s.int("clob_books_requests_per_10s", 250, 1, 10_000) as u32,
            data_requests_per_10s: s.int("data_requests_per_10s", 100, 1, 10_000) as u32,
        };
        s.finish();

        let mut s = Section::new("catalog", catalog_t, &mut problems, &mut settings);
        let catalog = CatalogConfig {
            enabled: s.bool("enabled", true),
            full_sweep_interval: s.secs("full_sweep_interval_secs", 900, 1, 86_400),
            new_markets_interval: s.secs("new_markets_interval_secs", 60, 1, 86_400),
            new_markets_max_pages: s.int("new_markets_max_pages", 5, 1, 1000) as u32,
            resolutions_interval: s.secs("resolutions_interval_secs", 300, 1, 86_400),
            resolution_watch: Duration::from_secs(s.int("resolution_watch_days", 14, 0, 3650) * 86_400),
            page_size: s.int("page_size", 100, 1, 500) as u32,
            history: s.bool("history", true),
            history_interval: s.secs("history_interval_secs", 10, 1, 86_400),
            history_pages_per_pass: s.int("history_pages_per_pass", 20, 1, 10_000) as u32,
        };
        s.finish();

        let mut s = Section::new("books", books_t, &mut problems, &mut settings);
        let books = BooksConfig {
            enabled: s.bool("enabled", true),
            interval: s.secs("interval_secs", 60, 1, 86_400),
            batch_size: s.int("batch_size", 100, 1, 500) as u32,
        };
        s.finish();

        let mut s = Section::new("stream", stream_t, &mut problems, &mut settings);
        let default_spool = match &env.state_directory {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from("/var/lib/collector"),
        };
        let stream = StreamConfig {
            enabled: s.bool("enabled", true),
            max_assets_per_connection: s.int("max_assets_per_connection", 200, 1, 1000) as usize,
            connect_interval: s.millis("connect_interval_ms", 250, 0, 60_000),
            ping_interval: s.secs("ping_interval_secs", 10, 1, 600),
            silence_timeout: s.secs("silence_timeout_secs", 60, 1, 86_400),
            first_book_timeout: s.secs("first_book_timeout_secs", 30, 1, 86_400),
            refresh_interval: s.secs("refresh_interval_secs", 30, 1, 86_400),
            min_volume_24h: s.int("min_volume_24h", 0, 0, u64::MAX / 2),
            min_liquidity: s.int("min_liquidity", 0, 0, u64::MAX / 2),
            tag_slugs: s.string_list("tag_slugs"),
            token_ids: s.string_list("token_ids").into(),
            store_price_changes: s.bool("store_price_changes", true),
            queue_capacity: s.int("queue_capacity", 100_000, 1, 100_000_000) as usize,
            queue_max_bytes: s.int("queue_max_mib", 256, 1, 1_048_576) as usize * (1 << 20),
            batch_size: s.int("batch_size", 10_000, 1, 1_000_000) as usize,
            flush_interval: s.millis("flush_interval_ms", 50, 1, 60_000),
            spool_dir: PathBuf::from(s.string("spool_dir", &default_spool.display().to_string())),
            spool_max_bytes: s.int("spool_max_bytes", 1 << 30, 1024, u64::MAX / 2),
            retention_days: s.int("retention_days", 0, 0, 36_500) as u32,
            trades_retention_days: s.int("trades_retention_days", 0, 0, 36_500) as u32,
            quotes_retention_days: s.int("quotes_retention_days", 0, 0, 36_500) as u32,
            backfill: s.bool("backfill", true),
            backfill_planned_max: s.secs("backfill_planned_max_secs", 86_400, 0, 365 * 86_400),
            backfill_max_pages: s.int("backfill_max_pages", 200, 1, 100_000) as usize,
            reconnect_base: s.millis("reconnect_base_ms", 1000, 1, 600_000),
            reconnect_max: s.secs("reconnect_max_secs", 60, 1, 3600),
        };
        if stream.ping_interval >= stream.silence_timeout {
            s.problem("silence_timeout_secs", "must be longer than ping_interval_secs");
        }
        s.finish();

        let mut s = Section::new("health", health_t, &mut problems, &mut settings);
        let health = HealthConfig { log_interval: s.secs("log_interval_secs", 60, 1, 86_400) };
        s.finish();

        let mut s = Section::new("daemon", daemon_t, &mut problems, &mut settings);
        let default_socket = match &env.runtime_directory {
            Some(dir) => Path::new(dir).join("status.sock"),
            None => PathBuf::from("/run/collector/status.sock"),
        };
        let daemon = DaemonConfig {
            drain_grace: s.secs("drain_grace_secs", 30, 1, 3600),
            status_socket: PathBuf::from(s.string("status_socket", &default_socket.display().to_string())),
            max_restarts: s.int("max_restarts", 5, 0, 10_000) as u32,
            restart_window: s.secs("restart_window_secs", 300, 1, 86_400),
            restart_backoff_base: s.millis("restart_backoff_base_ms", 1000, 1, 600_000),
            stall_timeout: s.secs("stall_timeout_secs", 900, 1, 86_400),
        };
        s.finish();

        let mut s = Section::new("log", log_t, &mut problems, &mut settings);
        let level = s.string("level", "info");
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            s.problem("level", &format!("not a valid log filter: {e}"));
        }
        s.finish();
        let log = LogConfig { level };

        let mut s = Section::new("metrics", metrics_t, &mut problems, &mut settings);
        let listen = s.opt_string("listen").filter(|l| !l.is_empty());
        let listen = match listen.map(|l| l.parse::<std::net::SocketAddr>().map_err(|e| (l, e))) {
            None => None,
            Some(Ok(addr)) => Some(addr),
            Some(Err((l, e))) => {
                s.problem("listen", &format!("not an address:port ({e}): {l:?}"));
                None
            }
        };
        s.finish();
        let metrics = MetricsConfig { listen };

        Ok((Config { settings, database, upstream, catalog, books, stream, health, daemon, log, metrics }, problems))
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

/// One TOML table being read: typed getters with defaults that record problems instead of
/// failing, and `finish` that reports every key nobody asked for.
struct Section<'p> {
    name: &'static str,
    table: toml::Table,
    seen: BTreeSet<String>,
    problems: &'p mut Vec<String>,
    settings: &'p mut Vec<Setting>,
}

impl<'p> Section<'p> {
    fn new(name: &'static str, table: toml::Table, problems: &'p mut Vec<String>, settings: &'p mut Vec<Setting>) -> Self {
        Section { name, table, seen: BTreeSet::new(), problems, settings }
    }

    /// Records what a key resolved to (the root's tables are not settings).
    fn record(&mut self, key: &str, value: Option<toml::Value>, default: Option<toml::Value>) {
        if !self.name.is_empty() {
            self.settings.push(Setting { section: self.name, key: key.to_string(), value, default, note: None });
        }
    }

    /// A key whose value came from elsewhere (`source`) than the file.
    fn overridden(&mut self, key: &str, value: toml::Value, source: &str) {
        if let Some(s) = self.settings.iter_mut().rev().find(|s| s.section == self.name && s.key == key) {
            s.value = Some(value);
            s.note = Some(format!("from {source}"));
        }
    }

    fn key(&self, key: &str) -> String {
        if self.name.is_empty() { key.to_string() } else { format!("{}.{key}", self.name) }
    }

    fn problem(&mut self, key: &str, what: &str) {
        let k = self.key(key);
        self.problems.push(format!("{k}: {what}"));
    }

    fn get(&mut self, key: &str) -> Option<toml::Value> {
        self.seen.insert(key.to_string());
        self.table.get(key).cloned()
    }

    fn table(&mut self, key: &str) -> toml::Table {
        match self.get(key) {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                self.problem(key, &format!("expected a table, found {}", other.type_str()));
                toml::Table::new()
            }
        }
    }

    fn string(&mut self, key: &str, default: &str) -> String {
        let v = self.read_string(key).unwrap_or_else(|| default.to_string());
        self.record(key, Some(toml::Value::String(v.clone())), Some(toml::Value::String(default.into())));
        v
    }

    /// An optional string with no default.
    fn opt_string(&mut self, key: &str) -> Option<String> {
        let v = self.read_string(key);
        self.record(key, v.clone().map(toml::Value::String), None);
        v
    }

    fn read_string(&mut self, key: &str) -> Option<String> {
        match self.get(key)? {
            toml::Value::String(s) => Some(s),
            other => {
                self.problem(key, &format!("expected a string, found {}", other.type_str()));
                None
            }
        }
    }

    fn string_list(&mut self, key: &str) -> Vec<String> {
        let list = self.read_string_list(key);
        let as_toml = |l: &[String]| toml::Value::Array(l.iter().cloned().map(toml::Value::String).collect());
        self.record(key, Some(as_toml(&list)), Some(as_toml(&[])));
        list
    }

    fn read_string_list(&mut self, key: &str) -> Vec<String> {
        match self.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => out.push(s),
                        other => self.problem(key, &format!("expected strings, found {}", other.type_str())),
                    }
                }
                out
            }
            Some(other) => {
                self.problem(key, &format!("expected a list of strings, found {}", other.type_str()));
                Vec::new()
            }
        }
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        let v = match self.get(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => b,
            Some(other) => {
                self.problem(key, &format!("expected true or false, found {}", other.type_str()));
                default
            }
        };
        self.record(key, Some(toml::Value::Boolean(v)), Some(toml::Value::Boolean(default)));
        v
    }

    fn int(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let v = self.read_int(key, default, min, max);
        let lit = |n: u64| toml::Value::Integer(n.min(i64::MAX as u64) as i64);
        self.record(key, Some(lit(v)), Some(lit(default)));
        v
    }

    fn millis(&mut self, key: &str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.int(key, default, min, max))
    }

    fn read_int(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.get(key) {
            None => default,
            Some(toml::Value::Integer(i)) if i >= min as i64 && i <= max as i64 => i as u64,
            Some(toml::Value::Integer(i)) => {
                self.problem(key, &format!("{i} is out of range {min}..={max}"));
                default
            }
            Some(other) => {
                self.problem(key, &format!("expected an integer, found {}", other.type_str()));
                default
            }
        }
    }

    fn secs(&mut self, key: &str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_secs(self.int(key, default, min, max))
    }

    fn url(&mut self, key: &str, default: &str, schemes: &[&str]) -> Url {
        let text = self.string(key, default);
        match Url::parse(&text) {
            Ok(u) if schemes.contains(&u.scheme()) => u,
            Ok(u) => {
                self.problem(key, &format!("scheme {} is not one of {schemes:?}", u.scheme()));
                Url::parse(default).expect("default URL is valid")
            }
            Err(e) => {
                self.problem(key, &format!("not a URL ({e}): {text:?}"));
                Url::parse(default).expect("default URL is valid")
            }
        }
    }

    fn finish(self) {
        for key in self.table.keys() {
            if !self.seen.contains(key) {
                let k = self.key(key);
                self.problems.push(format!("{k}: unknown key"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("", &Env::default()).unwrap();
        assert_eq!(c.health.log_interval, Duration::from_secs(60));
        assert_eq!(c.books.batch_size, 100);
        assert_eq!(c.upstream.gamma_url.as_str(), "https://gamma-api.polymarket.com/");
        assert_eq!(c.database.url, "postgresql://collector@localhost/collector");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            colour = "blue"
            [database]
            url = 42
            pool_size = 0
            [upstream]
            gamma_url = "ftp://x"
            timeout = 3
            [health]
            log_interval_secs = "soon"
            [log]
            level = "collector=loud"
        "#;
        let problems = Config::parse(text, &Env::default()).unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "colour: unknown key",
            "database.url: expected a string",
            "database.pool_size: 0 is out of range",
            "upstream.gamma_url: scheme ftp",
            "upstream.timeout: unknown key",
            "health.log_interval_secs: expected an integer",
            "log.level: not a valid log filter",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(problems.len(), 7, "{all}");
    }

    #[test]
    fn env_url_overrides_file_and_password_is_never_rendered() {
        let env = Env {
            database_url: Some("postgresql://u:s3cret@db.example/x".into()),
            credentials_directory: None,
            runtime_directory: None,
            state_directory: None,
        };
        let c = Config::parse("[database]\nurl = \"postgresql://a@b/c\"\n", &env).unwrap();
        assert_eq!(c.database.url, "postgresql://u:s3cret@db.example/x");
        let shown = c.render(|u| u.replace("s3cret", "***"));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("url = \"postgresql://u:***@db.example/x\"  # from COLLECTOR_DATABASE_URL"), "{shown}");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn every_key_is_recorded_once_with_its_default() {
        let c = Config::parse("[books]\nbatch_size = 50\n", &Env::default()).unwrap();
        let mut keys: Vec<String> = c.settings.iter().map(|s| format!("{}.{}", s.section, s.key)).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "a key recorded twice");
        let batch = c.settings.iter().find(|s| s.section == "books" && s.key == "batch_size").unwrap();
        assert_eq!(batch.value, Some(toml::Value::Integer(50)));
        assert_eq!(batch.default, Some(toml::Value::Integer(100)));
        let shown = c.render(|u| u.to_string());
        assert!(shown.contains("batch_size = 50  # default 100"), "{shown}");
        assert!(shown.contains("interval_secs = 60\n"), "{shown}");
        assert!(shown.contains("# password_file is not set"), "{shown}");
        // The rendered text is itself a valid configuration giving the same values.
        let again = Config::parse(&shown, &Env::default()).unwrap();
        assert_eq!(again.books.batch_size, 50);
    }

    #[test]
    fn password_comes_from_credential_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PASSWORD_CREDENTIAL), "pa55\n").unwrap();
        let env = Env {
            database_url: None,
            credentials_directory: Some(dir.path().display().to_string()),
            runtime_directory: None,
            state_directory: None,
        };
        let c = Config::parse("", &env).unwrap();
        assert_eq!(c.database.password.as_deref(), Some("pa55"));
        assert!(!c.render(|u| u.to_string()).contains("pa55"));
    }

    #[test]
    fn unreadable_password_file_is_a_problem() {
        let problems = Config::parse("[database]\npassword_file = \"/nonexistent/pw\"\n", &Env::default()).unwrap_err();
        assert!(problems[0].starts_with("database.password_file: cannot read"), "{problems:?}");
    }
}
