//! The commands: wiring config → pool → migrations → client → collectors → signals.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::collectors::books::BooksCollector;
use crate::collectors::catalog::{CatalogCtx, CatalogState, FullSweep, NewMarkets, Resolutions};
use crate::config::{Config, redact_url};
use crate::daemon::{health, supervisor::Supervisor};
use crate::db::{self, DbError, migrate};
use crate::exit;
use crate::polymarket::client::{ClientError, PolymarketClient, error_chain};

/// How long a clean stop waits for the collectors to finish their pass.
const DRAIN_GRACE: Duration = Duration::from_secs(20);

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
}

impl AppError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Db(DbError::Unreachable { .. }) => exit::UNAVAILABLE,
            AppError::Db(DbError::Settings(_)) => exit::CONFIG,
            // An unknown or altered migration: restarting cannot fix it.
            AppError::Migrate(migrate::MigrateError::Unknown { .. } | migrate::MigrateError::Altered { .. }) => exit::CONFIG,
            AppError::Interrupted => 130,
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

/// `collector collect`: runs until SIGTERM or SIGINT.
pub async fn collect(cfg: Config) -> Result<(), AppError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        database = %redact_url(&cfg.database.url),
        gamma = %cfg.upstream.gamma_url, clob = %cfg.upstream.clob_url,
        catalog = cfg.catalog.enabled, books = cfg.books.enabled,
        "collector starting"
    );
    let (pool, applied) = connect_and_migrate(&cfg).await?;
    tracing::info!(applied = applied.len(), "database connected, schema current");
    let client = Arc::new(PolymarketClient::new(&cfg.upstream)?);

    let cancel = CancellationToken::new();
    let supervisor = Supervisor::new(cancel.clone());
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
    let started = tokio::time::Instant::now();
    let health_task = tokio::spawn(health::run(supervisor.clone(), started, cfg.health.log_interval, cancel.clone()));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!("collector running");

    let which = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "stopping: draining collectors");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let drained = tokio::select! {
        d = supervisor.shutdown(DRAIN_GRACE) => d,
        _ = sigterm.recv() => return Err(AppError::Interrupted),
        _ = sigint.recv() => return Err(AppError::Interrupted),
    };
    let _ = health_task.await;
    if !drained {
        tracing::warn!(grace_secs = DRAIN_GRACE.as_secs(), "some collectors did not stop within the grace period");
    }
    drop(pool);
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Logs a failure with its whole chain.
pub fn report(e: &AppError) {
    tracing::error!(error = %error_chain(e), exit_code = e.exit_code(), "collector failed");
}
