//! The collectors, of two kinds.
//!
//! - **Polling** collectors ([`catalog`], [`books`]) have one shape ([`Collector`]): a name,
//!   an interval and a `collect_once()` returning how many items it stored. The polling loop
//!   (`daemon::poll`) calls it on its interval and keeps its stats; the supervisor restarts it
//!   if it panics. A new polling collector is a new module here implementing [`Collector`],
//!   spawned in `app::collect` with `supervisor.spawn_polling`.
//! - **Streaming** collectors ([`stream`]) own long-lived connections and tasks. They are
//!   started with a `spawn(..) -> Handle` function and the handle is the whole interface:
//!   `ready()`, `health()`, `stalled()`, `failed()`, `stop(deadline)`; dropping it ends every
//!   task. Their tasks ask the daemon's supervisor, through [`Restarts`], whether and when to
//!   restart after a panic. A new streaming collector follows `stream/mod.rs`.
//!
//! Collectors sit below the daemon: they never import `daemon`; what they need from it
//! ([`Restarts`]) is a trait defined here.

pub mod archive;
pub mod books;
pub mod catalog;
pub mod stream;

use std::future::Future;
use std::time::Duration;

use crate::db::DbError;
use crate::polymarket::client::ClientError;
use crate::polymarket::decode::FieldError;

/// The supervisor's decision for a task that died (implemented by the daemon's supervisor,
/// so that one policy decides every restart).
pub trait Restarts: Send + Sync {
    /// Task `name` died with `error`: the delay before restarting it (the death is counted
    /// in health), or `None` when its restart budget is spent and the daemon is stopping.
    fn died(&self, name: &'static str, error: &str) -> Option<Duration>;
}

pub trait Collector: Send + 'static {
    /// Stable name, used in logs, health lines and journald fields.
    fn name(&self) -> &'static str;
    /// Time from the end of one `collect_once` to the start of the next, as configured at
    /// start (a reload may change it: the supervisor keeps the live value).
    fn interval(&self) -> Duration;
    /// One pass; returns how many items it stored.
    fn collect_once(&mut self) -> impl Future<Output = Result<u64, CollectError>> + Send;
    /// Whether a long pass leaves the watchdog alone: a collector whose passes may rightly
    /// take hours (the archive catching up) and whose stall stops no capture. Its pass time
    /// still shows in the health. Default false.
    fn long_passes(&self) -> bool {
        false
    }
    /// Whether this is work shared by every instance of one database (the catalog, history,
    /// archive): run only by the leader (`db::leader`). Default: no (each instance's own).
    fn shared(&self) -> bool {
        false
    }
}

/// Why a pass failed. The pass is retried on the next tick; the error is counted.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("upstream: {0}")]
    Upstream(#[from] ClientError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("unexpected payload: {0}")]
    Payload(#[from] FieldError),
    #[error("keyset cursor {0:?} repeated: upstream ignores the cursor, sweep aborted")]
    CursorRepeated(String),
    #[error("archive: {0}")]
    Archive(String),
}

impl From<tokio_postgres::Error> for CollectError {
    fn from(e: tokio_postgres::Error) -> Self {
        CollectError::Db(DbError::Query(e))
    }
}

impl From<bb8::RunError<tokio_postgres::Error>> for CollectError {
    fn from(e: bb8::RunError<tokio_postgres::Error>) -> Self {
        CollectError::Db(e.into())
    }
}
