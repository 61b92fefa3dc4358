//! The commands: wiring config → pool → migrations → client → collectors → signals.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::collectors::books::BooksCollector;
use crate::collectors::catalog::{CatalogCtx, CatalogState, FullSweep, History, NewMarkets, Resolutions};
use crate::collectors::stream::{self, StreamDeps, StreamHandle};
use crate::config::{Config, ConfigError};
use crate::daemon::health::{self, Health};
use crate::daemon::supervisor::{Supervisor, TaskKind};
use crate::daemon::{metrics, status, systemd};
use crate::db::leader;
use crate::db::{self, DbError, migrate};
use crate::errors::error_chain;
use crate::exit;
use crate::fault;
use crate::journal;
use crate::polymarket::client::{ClientError, PolymarketClient};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("signal handling: {0}")]
    Signals(#[source] std::io::Error),
    #[error("second signal received during drain; exiting at once")]
    Interrupted,
    /// The supervisor gave up on a task, or the stream ended unexpectedly.
    #[error("{0}")]
    GaveUp(String),
    #[error(transparent)]
    Stream(#[from] crate::collectors::stream::StartError),
    #[error(transparent)]
    Archive(#[from] crate::collectors::archive::ArchiveError),
    #[error("{0}")]
    Usage(String),
}

impl AppError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Db(DbError::Unreachable { .. }) => exit::UNAVAILABLE,
            AppError::Db(DbError::Settings(_) | DbError::Refused(_)) => exit::CONFIG,
            // An unknown or altered migration: restarting cannot fix it.
            AppError::Migrate(migrate::MigrateError::Unknown { .. } | migrate::MigrateError::Altered { .. }) => exit::CONFIG,
            AppError::Interrupted => 130,
            AppError::Stream(crate::collectors::stream::StartError::Spool(_)) => exit::CONFIG,
            AppError::Archive(crate::collectors::archive::ArchiveError::NotWritable { .. }) => exit::CONFIG,
            AppError::Usage(_) => exit::USAGE,
            _ => exit::SOFTWARE,
        }
    }
}

/// Reads and checks the configuration file: every problem, including the database URL's.
pub fn load_config(path: &std::path::Path) -> Result<Config, ConfigError> {
    Config::load(path, |c| db::url::problem(&c.database.url).into_iter().collect())
}

/// `collector check-config`: the effective configuration, secrets redacted.
pub fn check_config(cfg: &Config) -> String {
    cfg.render(db::url::redact)
}

/// Connects (retrying up to the startup deadline) and applies pending migrations.
async fn connect_and_migrate(cfg: &Config) -> Result<(db::Pool, Vec<(i64, &'static str)>), AppError> {
    let pool = db::connect(&cfg.database).await?;
    let applied = {
        let mut conn = pool.get().await.map_err(DbError::from)?;
        let applied = migrate::run(&mut conn).await?;
        if cfg.database.distributed {
            db::distribute::run(&*conn).await?;
        }
        applied
    };
    Ok((pool, applied))
}

/// `collector migrate`.
pub async fn migrate(cfg: Config) -> Result<(), AppError> {
    let (_pool, applied) = connect_and_migrate(&cfg).await?;
    if applied.is_empty() {
        let latest = migrate::MIGRATIONS.last().map_or(0, |m| m.version);
        println!("schema is up to date (version {latest}); nothing applied");
    }
    for (version, name) in applied {
        println!("applied {version:04} {name}");
    }
    Ok(())
}

/// `collector archive`: one archive pass up to `until` (RFC 3339; default `after_hours` ago,
/// down to the hour); prints what it wrote (one JSON object with `json`). Exit 0 when every
/// row before the bound is in a verified file.
pub async fn archive(cfg: Config, until: Option<&str>, json: bool) -> Result<(), AppError> {
    use crate::collectors::archive;
    let until = match until {
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| AppError::Usage(format!("--until {text:?}: not an RFC 3339 time ({e})")))?
            .with_timezone(&chrono::Utc),
        None => archive::default_until(&cfg.archive),
    };
    archive::check_dir(&cfg.archive)?;
    let (pool, _) = connect_and_migrate(&cfg).await?;
    let report = archive::pass(&pool, &cfg.archive, until).await?;
    if json {
        println!("{}", serde_json::to_string(&report).expect("serialises"));
    } else {
        for (table, t) in &report.tables {
            println!("{table}: {} files, {} rows, {} bytes", t.files, t.rows, t.bytes);
        }
        if !report.released.is_empty() {
            println!("released from the database: {}", report.released.join(", "));
        }
        println!("archived up to {until}");
    }
    Ok(())
}

/// `collector collect`: runs until SIGTERM or SIGINT (exit 0 after the drain), a second
/// signal during the drain (exit 130), or a task spending its restart budget (exit 70).
/// SIGHUP (`systemctl reload collector`) re-reads `path` ([`reload`]).
pub async fn collect(cfg: Config, path: &std::path::Path) -> Result<(), AppError> {
    let mut signals = Signals::new()?;
    tracing::info!(
        message_id = journal::LIFECYCLE, version = env!("CARGO_PKG_VERSION"),
        database = %db::url::redact(&cfg.database.url), gamma = %cfg.upstream.gamma_url, clob = %cfg.upstream.clob_url,
        catalog = cfg.catalog.enabled, books = cfg.books.enabled, stream = cfg.stream.enabled,
        status_socket = %cfg.daemon.status_socket.display(), "collector starting"
    );
    // An archive it cannot write is a configuration error, before anything starts.
    if cfg.archive.enabled {
        crate::collectors::archive::check_dir(&cfg.archive)?;
    }
    // 1. Database and schema (a signal meanwhile ends the start quietly).
    let (pool, applied) = tokio::select! {
        r = connect_and_migrate(&cfg) => r?,
        _ = signals.stop() => return Ok(()),
    };
    tracing::info!(applied = applied.len(), "database connected, schema current");
    let client = Arc::new(PolymarketClient::new(&cfg.upstream)?);
    // 2. Polling collectors under the supervisor; 3. the stream, whose tasks ask the same
    //    supervisor about restarts.
    // The leader election (several instances on one database: docs/scaling.md).
    let election_cancel = CancellationToken::new();
    let leadership = if cfg.daemon.leader_election {
        let me = leader::Identity {
            instance: instance_name(&cfg, path),
            slice: cfg.stream.shard,
            stream: cfg.stream.enabled,
            started_at: chrono::Utc::now(),
        };
        tracing::info!(instance = %me.instance, slice = %me.slice, "instance {} records slice {}", me.instance, me.slice);
        leader::spawn(cfg.database.clone(), me, election_cancel.clone())
    } else {
        leader::Leadership::always()
    };
    let supervisor = Supervisor::new(CancellationToken::new(), &cfg.daemon, fault::from_env()).with_leadership(leadership);
    spawn_polling(&supervisor, &cfg, &client, &pool);
    let mut stream = spawn_stream(&cfg, &instance_name(&cfg, path), &supervisor, &client, &pool).await?;
    // 4. Health (log, STATUS=, WATCHDOG=1) and the status socket.
    let mut health = Health::new(supervisor.clone(), client.stats.clone(), pool.clone());
    health.stream = stream.as_ref().map(|s| s.monitor());
    health.projection_window = cfg.health.log_interval * 2;
    let daemon_cancel = CancellationToken::new();
    let health_task = tokio::spawn(health::run(health.clone(), cfg.health.log_interval, cfg.daemon.stall_timeout, daemon_cancel.clone()));
    let health_watch = tokio::spawn(async move {
        if let Err(e) = health_task.await.map_err(|e| e.is_panic().then_some(e)) {
            tracing::error!(error = ?e, "health loop died: health reports and watchdog pings stopped");
        }
    });
    let status_task = status::bind(&cfg.daemon.status_socket).map(|socket| {
        let health = health.clone();
        tokio::spawn(status::serve(socket, move || health.get_health(), daemon_cancel.clone()))
    });
    let metrics_task = match cfg.metrics.listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                let local = l.local_addr().map_or(addr.to_string(), |a| a.to_string());
                tracing::info!(listen = %local, "metrics endpoint listening on http://{local}/metrics");
                Some(tokio::spawn(metrics::serve(l, health.clone(), daemon_cancel.clone())))
            }
            Err(e) => {
                tracing::error!(listen = %addr, error = %e, "cannot listen for metrics on {addr}: {e}; running without the endpoint");
                None
            }
        },
        None => None,
    };
    // 5. READY once the stream's first connections are up (bounded).
    let early_stop = match stream.as_mut() {
        Some(s) => tokio::select! {
            _ = s.ready() => None,
            signal = signals.stop() => Some(signal),
        },
        None => None,
    };
    systemd::ready();
    tracing::info!(message_id = journal::LIFECYCLE, "collector running");
    // 6. Run until a signal or a failure; SIGHUP reloads.
    let mut running = cfg.clone();
    let stop: Result<&str, String> = if let Some(signal) = early_stop {
        Ok(signal)
    } else {
        loop {
            tokio::select! {
                request = signals.next() => match request {
                    Some(signal) => break Ok(signal),
                    None => reload(path, &mut running, Live { stream: stream.as_ref(), supervisor: &supervisor, client: &client }),
                },
                reason = supervisor.gave_up() => break Err(reason.to_string()),
                reason = async { stream.as_mut().expect("guarded").failed().await }, if stream.is_some() => break Err(reason),
            }
        }
    };
    // 7. The drain; then the health loop and the status socket end, and the pool closes.
    drain(&cfg, &stop, stream, &supervisor, &mut signals).await?;
    daemon_cancel.cancel();
    election_cancel.cancel();
    let _ = health_watch.await;
    for t in status_task.into_iter().chain(metrics_task) {
        let _ = t.await;
    }
    drop(pool);
    match stop {
        Ok(_) => {
            tracing::info!(message_id = journal::LIFECYCLE, "stopped cleanly");
            Ok(())
        }
        Err(reason) => Err(AppError::GaveUp(reason)),
    }
}

/// `daemon.instance`, or `<host>:<config file name>` (two units on one host have two files).
fn instance_name(cfg: &Config, path: &std::path::Path) -> String {
    if !cfg.daemon.instance.is_empty() {
        return cfg.daemon.instance.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into());
    let file = path.file_stem().map_or("collector".into(), |s| s.to_string_lossy().into_owned());
    format!("{host}:{file}")
}

/// SIGTERM and SIGINT, as one stream of stop requests; SIGHUP, the reload request (handled
/// from the start, so it never kills the daemon).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, AppError> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(AppError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(AppError::Signals)?,
            hup: signal(SignalKind::hangup()).map_err(AppError::Signals)?,
        })
    }

    /// The next request: `Some(signal name)` to stop, `None` to reload.
    async fn next(&mut self) -> Option<&'static str> {
        tokio::select! {
            _ = self.term.recv() => Some("SIGTERM"),
            _ = self.int.recv() => Some("SIGINT"),
            _ = self.hup.recv() => None,
        }
    }

    /// The next stop request's name; a reload asked meanwhile (while starting or stopping)
    /// is ignored, with a note.
    async fn stop(&mut self) -> &'static str {
        loop {
            match self.next().await {
                Some(signal) => return signal,
                None => tracing::warn!("reload requested while starting or stopping: ignored"),
            }
        }
    }
}

/// Keys a reload applies to the running stream.
const LIVE_STREAM_KEYS: [&str; 7] =
    ["token_ids", "tag_slugs", "min_volume_24h", "min_liquidity", "retention_days", "trades_retention_days", "quotes_retention_days"];

/// Polling intervals a reload applies: the key, the collector (by name) it paces, its value.
type IntervalOf = fn(&Config) -> std::time::Duration;
const LIVE_INTERVALS: [(&str, &str, IntervalOf); 5] = [
    ("catalog.full_sweep_interval_secs", "catalog", |c| c.catalog.full_sweep_interval),
    ("catalog.new_markets_interval_secs", "new_markets", |c| c.catalog.new_markets_interval),
    ("catalog.resolutions_interval_secs", "resolutions", |c| c.catalog.resolutions_interval),
    ("catalog.history_interval_secs", "history", |c| c.catalog.history_interval),
    ("books.interval_secs", "books", |c| c.books.interval),
];

/// Request budgets a reload applies.
const LIVE_BUDGETS: [&str; 3] =
    ["upstream.gamma_requests_per_10s", "upstream.clob_books_requests_per_10s", "upstream.data_requests_per_10s"];

/// What a reload can change in the running daemon.
struct Live<'a> {
    stream: Option<&'a StreamHandle>,
    supervisor: &'a Supervisor,
    client: &'a PolymarketClient,
}

/// A reload (SIGHUP): re-reads the configuration file. A file with problems is refused, every
/// problem logged, and the running configuration kept. Otherwise what can change live is
/// applied — the log level, the stream's scope and retentions, the polling intervals (a
/// collector resting applies the new one from the end of its last pass), the request budgets
/// — and every other changed key is logged as needing a restart (`systemctl restart
/// collector`).
fn reload(path: &std::path::Path, running: &mut Config, live: Live<'_>) {
    let stream = live.stream;
    systemd::reloading();
    match load_config(path) {
        Err(e) => {
            let problems = e.problems.join("; ");
            tracing::error!(message_id = journal::LIFECYCLE, problems = %problems,
                "reload refused, the running configuration is kept: {problems}");
        }
        Ok(new) => {
            let changed: Vec<String> = new
                .settings
                .iter()
                .filter(|s| running.settings.iter().find(|o| o.section == s.section && o.key == s.key) != Some(*s))
                .map(|s| format!("{}.{}", s.section, s.key))
                .collect();
            let (mut applied, mut pending) = (Vec::new(), Vec::new());
            let live_stream = |k: &str| k.strip_prefix("stream.").is_some_and(|k| LIVE_STREAM_KEYS.contains(&k));
            if let Some(s) = stream.filter(|_| changed.iter().any(|k| live_stream(k))) {
                s.reconfigure(&new.stream);
            }
            if changed.iter().any(|k| LIVE_BUDGETS.contains(&k.as_str())) {
                live.client.set_budgets(&new.upstream);
            }
            for key in changed {
                let interval = LIVE_INTERVALS.iter().find(|(k, ..)| *k == key);
                if (live_stream(&key) && stream.is_some()) || LIVE_BUDGETS.contains(&key.as_str()) {
                    applied.push(key);
                } else if let Some((_, name, value)) = interval {
                    // A collector that is not running (disabled) takes it at its next start.
                    if live.supervisor.set_interval(name, value(&new)) { applied.push(key) } else { pending.push(key) }
                } else if key == "log.level" {
                    match crate::logging::set_level(&new.log.level) {
                        Ok(()) => {
                            running.log.level = new.log.level.clone();
                            applied.push(key);
                        }
                        Err(e) => pending.push(format!("{key} ({e})")),
                    }
                } else {
                    pending.push(key);
                }
            }
            // What was applied is now the running configuration.
            let applied_now = |s: &crate::config::Setting| applied.contains(&format!("{}.{}", s.section, s.key));
            running.settings.retain(|s| !applied_now(s));
            running.settings.extend(new.settings.iter().filter(|s| applied_now(s)).cloned());
            tracing::info!(message_id = journal::LIFECYCLE, applied = %applied.join(", "), needs_restart = %pending.join(", "),
                "configuration reloaded: applied [{}]; needs a restart to apply: [{}]", applied.join(", "), pending.join(", "));
        }
    }
    systemd::ready();
}

/// The live stream, when enabled.
async fn spawn_stream(
    cfg: &Config,
    instance: &str,
    supervisor: &Supervisor,
    client: &Arc<PolymarketClient>,
    pool: &db::Pool,
) -> Result<Option<StreamHandle>, AppError> {
    if !cfg.stream.enabled {
        return Ok(None);
    }
    // Registered before its tasks start, so a death in the first moments counts here.
    supervisor.register(stream::TASK_NAME, TaskKind::Stream);
    let handle = stream::spawn(StreamDeps {
        cfg: cfg.stream.clone(),
        ws_url: cfg.upstream.ws_url.clone(),
        retry_after_max: cfg.upstream.retry_after_max,
        pool: pool.clone(),
        client: client.clone(),
        restarts: Arc::new(supervisor.clone()),
        drain_grace: cfg.daemon.drain_grace,
        stall_timeout: cfg.daemon.stall_timeout,
        fault_spec: supervisor.fault_spec().map(str::to_owned),
        archive: cfg.archive.enabled.then(|| cfg.archive.clone()),
        leadership: supervisor.leadership().clone(),
        instance: instance.into(),
    })
    .await?;
    Ok(Some(handle))
}

/// The drain, within `daemon.drain_grace_secs`, asking systemd for time meanwhile: the stream
/// first (planned gap, connections closed, the writer stores or spools what they accepted),
/// then the polling collectors. A second signal exits at once (130).
async fn drain(
    cfg: &Config,
    stop: &Result<&str, String>,
    stream: Option<StreamHandle>,
    supervisor: &Supervisor,
    signals: &mut Signals,
) -> Result<(), AppError> {
    let grace = cfg.daemon.drain_grace;
    match stop {
        Ok(signal) => {
            tracing::info!(message_id = journal::LIFECYCLE, signal, grace_secs = grace.as_secs(), "stopping: draining collectors")
        }
        Err(reason) => tracing::error!(message_id = journal::LIFECYCLE, reason = %reason, "stopping: {reason}"),
    }
    systemd::stopping();
    // At once (a drain may end before a spawned task first runs), then every second.
    systemd::extend_timeout(grace + Duration::from_secs(15));
    let extender = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            systemd::extend_timeout(grace + Duration::from_secs(15));
        }
    });
    let deadline = tokio::time::Instant::now() + grace;
    let drain = async {
        if let Some(s) = stream {
            s.stop(deadline).await;
        }
        supervisor.shutdown(deadline.saturating_duration_since(tokio::time::Instant::now())).await
    };
    let drained = tokio::select! {
        d = drain => d,
        _ = signals.stop() => return Err(AppError::Interrupted),
    };
    extender.abort();
    if !drained {
        tracing::warn!(grace_secs = grace.as_secs(), "some collectors did not stop within the grace period");
    }
    Ok(())
}

/// The polling collectors that are enabled, each under the supervisor.
fn spawn_polling(supervisor: &Supervisor, cfg: &Config, client: &Arc<PolymarketClient>, pool: &db::Pool) {
    if cfg.catalog.enabled {
        let ctx =
            CatalogCtx { client: client.clone(), pool: pool.clone(), cfg: cfg.catalog.clone(), state: Arc::new(CatalogState::default()) };
        let c = ctx.clone();
        supervisor.spawn_polling(move || FullSweep(c.clone()));
        let c = ctx.clone();
        supervisor.spawn_polling(move || NewMarkets(c.clone()));
        if cfg.catalog.history {
            let c = ctx.clone();
            supervisor.spawn_polling(move || History(c.clone()));
        }
        supervisor.spawn_polling(move || Resolutions(ctx.clone()));
    }
    if cfg.books.enabled {
        let (client, pool, books) = (client.clone(), pool.clone(), cfg.books.clone());
        let slice = cfg.stream.shard;
        supervisor.spawn_polling(move || BooksCollector::new(client.clone(), pool.clone(), books.clone()).with_slice(slice));
    }
    if cfg.archive.enabled {
        let (pool, archive) = (pool.clone(), cfg.archive.clone());
        supervisor.spawn_polling(move || crate::collectors::archive::ArchiveCollector { pool: pool.clone(), cfg: archive.clone() });
    }
}

/// Logs a failure with its whole chain.
pub fn report(e: &AppError) {
    // An error may quote the connection string: redacted like every printed URL.
    let text = db::url::redact(&error_chain(e));
    tracing::error!(error = %text, exit_code = e.exit_code(), "collector failed: {text}");
}
