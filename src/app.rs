//! The commands: wiring config → pool → migrations → client → collectors → signals.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::collectors::books::BooksCollector;
use crate::collectors::catalog::{CatalogCtx, CatalogState, FullSweep, NewMarkets, Resolutions};
use crate::collectors::stream::{StreamCollector, StreamMonitor, StreamStats};
use crate::db::spool::Spool;
use crate::db::writer::{Sink, Writer};
use crate::config::{Config, redact_url};
use crate::daemon::health::{self, Health};
use crate::daemon::supervisor::Supervisor;
use crate::daemon::{fault, journal, status, systemd};
use crate::db::{self, DbError, migrate};
use crate::exit;
use crate::polymarket::client::{ClientError, PolymarketClient, error_chain};

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
    #[error("supervisor gave up: {0}")]
    GaveUp(String),
    #[error("stream spool: {0} (set stream.spool_dir to a writable directory)")]
    Spool(#[from] crate::db::spool::SpoolError),
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
            AppError::Spool(_) => exit::CONFIG,
            _ => exit::SOFTWARE,
        }
    }
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
/// signal during the drain (exit 130), or a collector spending its restart budget (exit 70).
pub async fn collect(cfg: Config) -> Result<(), AppError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    tracing::info!(
        message_id = journal::LIFECYCLE,
        version = env!("CARGO_PKG_VERSION"),
        database = %redact_url(&cfg.database.url),
        gamma = %cfg.upstream.gamma_url, clob = %cfg.upstream.clob_url,
        catalog = cfg.catalog.enabled, books = cfg.books.enabled,
        status_socket = %cfg.daemon.status_socket.display(),
        "collector starting"
    );
    let (pool, applied) = tokio::select! {
        r = connect_and_migrate(&cfg) => r?,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    };
    tracing::info!(applied = applied.len(), "database connected, schema current");
    let client = Arc::new(PolymarketClient::new(&cfg.upstream)?);

    let cancel = CancellationToken::new();
    let supervisor = Supervisor::new(cancel.clone(), &cfg.daemon, fault::from_env());
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

    // The live stream: pool manager → sink (queue, spool) → writer.
    let stream_cancel = CancellationToken::new();
    let writer_cancel = CancellationToken::new();
    let mut stream = None;
    if cfg.stream.enabled {
        let spool = Spool::open(&cfg.stream.spool_dir, cfg.stream.spool_max_bytes)?;
        let (sink, rx) = Sink::new(cfg.stream.queue_capacity, spool);
        let writer = Writer {
            pool: pool.clone(),
            rx,
            sink: sink.clone(),
            batch_size: cfg.stream.batch_size,
            flush_interval: cfg.stream.flush_interval,
        };
        let writer_task = tokio::spawn(writer.run(writer_cancel.clone(), cfg.daemon.drain_grace));
        let stats = Arc::new(StreamStats::default());
        let collector = StreamCollector {
            cfg: cfg.stream.clone(),
            ws_url: cfg.upstream.ws_url.clone(),
            pool: pool.clone(),
            client: client.clone(),
            sink: sink.clone(),
            stats: stats.clone(),
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let manager = tokio::spawn(collector.run(stream_cancel.clone(), ready_tx));
        let monitor = Arc::new(StreamMonitor { stats, sink, stall_timeout: cfg.daemon.stall_timeout });
        stream = Some((manager, writer_task, monitor, ready_rx));
    }

    let mut health = Health::new(supervisor.clone(), client.stats.clone(), pool.clone());
    let mut liveness: Vec<Arc<dyn systemd::Liveness>> = Vec::new();
    if let Some((_, _, monitor, _)) = &stream {
        health.stream = Some(monitor.clone());
        liveness.push(monitor.clone());
    }
    // The health loop is not restarted if it dies; its death is logged.
    let health_task = tokio::spawn(health::run(health.clone(), cfg.health.log_interval, cancel.clone()));
    let health_watch = tokio::spawn(async move {
        match health_task.await {
            Err(e) if e.is_panic() => tracing::error!(error = %e, "health loop died; health reports stopped"),
            _ => {}
        }
    });
    let watchdog = tokio::spawn(systemd::watchdog(supervisor.clone(), cfg.daemon.stall_timeout, liveness, cancel.clone()));
    let status_task = status::bind(&cfg.daemon.status_socket).map(|listener| {
        tokio::spawn(status::serve(listener, cfg.daemon.status_socket.clone(), health.clone(), cancel.clone()))
    });
    // READY once the stream's first connections are up (bounded: 30 s).
    let (mut manager, mut writer_task, ready_rx) = match stream {
        Some((m, w, _, r)) => (Some(m), Some(w), Some(r)),
        None => (None, None, None),
    };
    if let Some(r) = ready_rx {
        tokio::select! {
            _ = r => {}
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    }
    systemd::ready();
    tracing::info!(message_id = journal::LIFECYCLE, "collector running");

    let stop = tokio::select! {
        _ = sigterm.recv() => Ok("SIGTERM"),
        _ = sigint.recv() => Ok("SIGINT"),
        reason = supervisor.gave_up() => Err(reason),
        r = async { manager.as_mut().expect("guarded").await }, if manager.is_some() => {
            manager = None;
            Err(format!("stream manager ended unexpectedly: {r:?}"))
        }
        r = async { writer_task.as_mut().expect("guarded").await }, if writer_task.is_some() => {
            writer_task = None;
            Err(format!("stream writer ended unexpectedly: {r:?}"))
        }
    };
    let grace = cfg.daemon.drain_grace;
    match &stop {
        Ok(signal) => tracing::info!(message_id = journal::LIFECYCLE, signal, grace_secs = grace.as_secs(), "stopping: draining collectors"),
        Err(reason) => tracing::error!(message_id = journal::LIFECYCLE, reason = %reason, "stopping: restart budget spent: {reason}"),
    }
    systemd::stopping();
    // While the drain runs, keep asking systemd for time (a long flush of the queue).
    let extender = tokio::spawn(async move {
        loop {
            systemd::extend_timeout(grace + Duration::from_secs(5));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let deadline = tokio::time::Instant::now() + grace;
    let drain = async {
        // Stream first (planned gap, close connections), then the writer flushes what they
        // accepted, then the polling collectors.
        stream_cancel.cancel();
        if let Some(m) = manager.take() {
            let _ = tokio::time::timeout_at(deadline, m).await;
        }
        writer_cancel.cancel();
        if let Some(w) = writer_task.take() {
            let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), w).await;
        }
        supervisor.shutdown(deadline.saturating_duration_since(tokio::time::Instant::now())).await
    };
    let drained = tokio::select! {
        d = drain => d,
        _ = sigterm.recv() => return Err(AppError::Interrupted),
        _ = sigint.recv() => return Err(AppError::Interrupted),
    };
    extender.abort();
    let _ = health_watch.await;
    let _ = watchdog.await;
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

/// Logs a failure with its whole chain.
pub fn report(e: &AppError) {
    tracing::error!(error = %error_chain(e), exit_code = e.exit_code(), "collector failed: {}", error_chain(e));
}
