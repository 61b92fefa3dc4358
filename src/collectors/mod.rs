//! Polling collectors. Each has one shape ([`Collector`]): a name, an interval and a
//! `collect_once()` returning how many items it stored. The polling loop
//! ([`crate::daemon::poll`]) calls it on its interval and keeps its [`CollectorStats`].

pub mod books;
pub mod catalog;
pub mod stream;

use std::future::Future;
use std::time::Duration;

use crate::db::DbError;
use crate::polymarket::client::ClientError;
use crate::polymarket::decode::FieldError;

pub trait Collector: Send + 'static {
    /// Stable name, used in logs, health lines and journald fields.
    fn name(&self) -> &'static str;
    /// Time from the end of one `collect_once` to the start of the next.
    fn interval(&self) -> Duration;
    /// One pass; returns how many items it stored.
    fn collect_once(&mut self) -> impl Future<Output = Result<u64, CollectError>> + Send;
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
