//! The commands: wiring config → pool → migrations → client → collectors → signals.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::collectors::books::BooksCollector;
use crate::collectors::catalog::{CatalogCtx, CatalogState, FullSweep, NewMarkets, Resolutions};
use crate::collectors::stream::{self, StreamDeps};
use crate::config::{Config, ConfigError};
use crate::daemon::health::{self, Health};
use crate::daemon::supervisor::{Supervisor, TaskKind};
use crate::daemon::{status, systemd};
use crate::fault;
use crate::journal;
use crate::db::{self, DbError, migrate};
use crate::exit;
use crate::errors::error_chain;
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
        migrate::run(&mut conn).await?
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

/// `collector collect`: runs until SIGTERM or SIGINT (exit 0 after the drain), a second
/// signal during the drain (exit 130), or a task spending its restart budget (exit 70).
pub async fn collect(cfg: Config) -> Result<(), AppError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    tracing::info!(
        message_id = journal::LIFECYCLE,
        version = env!("CARGO_PKG_VERSION"),
        database = %db::url::redact(&cfg.database.url),
        gamma = %cfg.upstream.gamma_url, clob = %cfg.upstream.clob_url,
        catalog = cfg.catalog.enabled, books = cfg.books.enabled, stream = cfg.stream.enabled,
        status_socket = %cfg.daemon.status_socket.display(),
        "collector starting"
    );
    // 1. Database and schema.
    let (pool, applied) = tokio::select! {
        r = connect_and_migrate(&cfg) => r?,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    };
    tracing::info!(applied = applied.len(), "database connected, schema current");
    let client = Arc::new(PolymarketClient::new(&cfg.upstream)?);

    // 2. Polling collectors, under the supervisor.
    let supervisor = Supervisor::new(CancellationToken::new(), &cfg.daemon, fault::from_env());
    spawn_polling(&supervisor, &cfg, &client, &pool);

    // 3. The live stream (its tasks ask the same supervisor about restarts).
    let mut stream = match cfg.stream.enabled {
        true => Some(stream::spawn(StreamDeps {
            cfg: cfg.stream.clone(),
            ws_url: cfg.upstream.ws_url.clone(),
            retry_after_max: cfg.upstream.retry_after_max,
            pool: pool.clone(),
            client: client.clone(),
            restarts: Arc::new(supervisor.clone()),
            drain_grace: cfg.daemon.drain_grace,
            stall_timeout: cfg.daemon.stall_timeout,
            fault_spec: supervisor.fault_spec().map(str::to_owned),
        })
        .await?),
        false => None,
    };
    if stream.is_some() {
        supervisor.register(stream::TASK_NAME, TaskKind::Stream);
    }

    // 4. Health (log, STATUS=, WATCHDOG=1) and the status socket.
    let mut health = Health::new(supervisor.clone(), client.stats.clone(), pool.clone());
    health.stream = stream.as_ref().map(|s| s.monitor());
    let daemon_cancel = CancellationToken::new();
    let health_task = tokio::spawn(health::run(health.clone(), cfg.health.log_interval, cfg.daemon.stall_timeout, daemon_cancel.clone()));
    let health_watch = tokio::spawn(async move {
        if let Err(e) = health_task.await.map_err(|e| e.is_panic().then_some(e)) {
            tracing::error!(error = ?e, "health loop died: health reports and watchdog pings stopped");
        }
    });
    let status_task = status::bind(&cfg.daemon.status_socket).map(|listener| {
        tokio::spawn(status::serve(listener, cfg.daemon.status_socket.clone(), health.clone(), daemon_cancel.clone()))
    });

    // 5. READY once the stream's first connections are up (bounded).
    if let Some(s) = stream.as_mut() {
        tokio::select! {
            _ = s.ready() => {}
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    }
    systemd::ready();
    tracing::info!(message_id = journal::LIFECYCLE, "collector running");

    // 6. Run until a signal or a failure.
    let stop: Result<&str, String> = tokio::select! {
        _ = sigterm.recv() => Ok("SIGTERM"),
        _ = sigint.recv() => Ok("SIGINT"),
        reason = supervisor.gave_up() => Err(reason.to_string()),
        reason = async { stream.as_mut().expect("guarded").failed().await }, if stream.is_some() => Err(reason),
    };
    let grace = cfg.daemon.drain_grace;
    match &stop {
        Ok(signal) => tracing::info!(message_id = journal::LIFECYCLE, signal, grace_secs = grace.as_secs(), "stopping: draining collectors"),
        Err(reason) => tracing::error!(message_id = journal::LIFECYCLE, reason = %reason, "stopping: {reason}"),
    }

    // 7. The drain: stream first (planned gap, connections closed, writer flushes what they
    //    accepted), then the polling collectors — within the grace, asking systemd for time.
    systemd::stopping();
    let extender = tokio::spawn(async move {
        loop {
            systemd::extend_timeout(grace + Duration::from_secs(5));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let deadline = tokio::time::Instant::now() + grace;
    let drain = async {
        if let Some(s) = stream.take() {
            s.stop(deadline).await;
        }
        supervisor.shutdown(deadline.saturating_duration_since(tokio::time::Instant::now())).await
    };
    let drained = tokio::select! {
        d = drain => d,
        _ = sigterm.recv() => return Err(AppError::Interrupted),
        _ = sigint.recv() => return Err(AppError::Interrupted),
    };
    extender.abort();
    daemon_cancel.cancel();
    let _ = health_watch.await;
    if let Some(t) = status_task {
        let _ = t.await;
    }
    if !drained {
        tracing::warn!(grace_secs = grace.as_secs(), "some collectors did not stop within the grace period");
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

/// The polling collectors that are enabled, each under the supervisor.
fn spawn_polling(supervisor: &Supervisor, cfg: &Config, client: &Arc<PolymarketClient>, pool: &db::Pool) {
    if cfg.catalog.enabled {
        let ctx = CatalogCtx {
            client: client.clone(),
            pool: pool.clone(),
            cfg: cfg.catalog.clone(),
            state: Arc::new(CatalogState::default()),
        };
        let c = ctx.clone();
        supervisor.spawn_polling(move || FullSweep(c.clone()));
        let c = ctx.clone();
        supervisor.spawn_polling(move || NewMarkets(c.clone()));
        supervisor.spawn_polling(move || Resolutions(ctx.clone()));
    }
    if cfg.books.enabled {
        let (client, pool, books) = (client.clone(), pool.clone(), cfg.books.clone());
        supervisor.spawn_polling(move || BooksCollector::new(client.clone(), pool.clone(), books.clone()));
    }
}

/// Logs a failure with its whole chain.
pub fn report(e: &AppError) {
    tracing::error!(error = %error_chain(e), exit_code = e.exit_code(), "collector failed: {}", error_chain(e));
}
