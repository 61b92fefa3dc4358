//! [`Config::read`]: every key read in one place — the line that reads it names the key, its
//! default and its check.

use std::path::{Path, PathBuf};

use super::section::Section;
use super::*;

impl Config {
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
        let archive_t = root.table("archive");
        root.finish();

        let mut s = Section::new("database", database_t, &mut problems, &mut settings);
        let file_url = s.string("url", "postgresql://collector@localhost/collector");
        let password_file = s.opt_string("password_file");
        let ssl_root_cert = s.opt_string("ssl_root_cert").map(PathBuf::from);
        let pool_size = s.int("pool_size", 8, 1, 1000) as u32;
        let distributed = s.bool("distributed", false);
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
            distributed,
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
            shard: {
                let text = s.string("shard", "0/1");
                crate::slice::Slice::parse(&text).unwrap_or_else(|e| {
                    s.problem("shard", &e);
                    crate::slice::Slice::default()
                })
            },
            connect_interval: s.millis("connect_interval_ms", 150, 0, 60_000),
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
            standby_window: s.secs("standby_window_secs", 30, 5, 3600),
            standby_window_bytes: s.int("standby_window_mib", 512, 1, 1_048_576) as usize * (1 << 20),
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
            instance: s.string("instance", ""),
            leader_election: s.bool("leader_election", true),
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

        let mut s = Section::new("archive", archive_t, &mut problems, &mut settings);
        let default_archive = match &env.state_directory {
            Some(dir) => PathBuf::from(dir).join("archive"),
            None => PathBuf::from("/var/lib/collector/archive"),
        };
        let archive = ArchiveConfig {
            enabled: s.bool("enabled", true),
            dir: PathBuf::from(s.string("dir", &default_archive.display().to_string())),
            keep_days: s.int("keep_days", 7, 0, 36_500) as u32,
            after_hours: s.int("after_hours", 2, 1, 24 * 365) as u32,
            zstd_level: s.int("zstd_level", 9, 1, 22) as i32,
            level_hashes: s.bool("level_hashes", false),
            row_group_rows: s.int("row_group_rows", 1_000_000, 1_000, 100_000_000) as usize,
            interval: s.secs("interval_secs", 600, 1, 86_400),
        };
        s.finish();

        Ok((Config { settings, database, upstream, catalog, books, stream, health, daemon, log, metrics, archive }, problems))
    }
}
