//! The supervisor: owns every collector task by name, restarts one that panics with capped
//! exponential backoff and jitter, and keeps restart counts for health.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::poll::{self, CollectorStats};
use crate::collectors::Collector;
use crate::polymarket::retry::{Backoff, Outcome};

/// One supervised task as health sees it.
#[derive(Debug, Default)]
pub struct TaskEntry {
    pub stats: Arc<CollectorStats>,
    pub restarts: AtomicU64,
    pub alive: AtomicBool,
}

#[derive(Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    cancel: CancellationToken,
    tasks: Arc<Mutex<BTreeMap<&'static str, Arc<TaskEntry>>>>,
    backoff: Backoff,
}

impl Supervisor {
    pub fn new(cancel: CancellationToken) -> Self {
        Supervisor {
            tracker: TaskTracker::new(),
            cancel,
            tasks: Arc::default(),
            backoff: Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60) },
        }
    }

    /// Supervises a polling collector built by `make` (called again for each restart).
    pub fn spawn_polling<C, F>(&self, mut make: F) -> Arc<TaskEntry>
    where
        C: Collector,
        F: FnMut() -> C + Send + 'static,
    {
        let first = make();
        let name = first.name();
        let entry = Arc::new(TaskEntry::default());
        self.tasks.lock().expect("tasks lock").insert(name, entry.clone());
        let (cancel, backoff, e) = (self.cancel.clone(), self.backoff, entry.clone());
        self.tracker.spawn(async move {
            let mut collector = Some(first);
            let mut attempt = 0;
            loop {
                let c = collector.take().unwrap_or_else(&mut make);
                let (stats, token) = (e.stats.clone(), cancel.clone());
                e.alive.store(true, Ordering::Relaxed);
                let run = tokio::spawn(async move { poll::run(c, &stats, token).await });
                let result = run.await;
                e.alive.store(false, Ordering::Relaxed);
                match result {
                    Ok(()) => return, // cancelled: a clean stop
                    Err(err) => {
                        let delay = backoff.delay(attempt, Outcome::ServerError, 0.5 + fastrand::f64() / 2.0);
                        let restarts = e.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::error!(collector = name, error = %err, restarts,
                            delay_ms = delay.as_millis() as u64, "collector task died, restarting");
                        attempt += 1;
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        });
        entry
    }

    /// A copy of the task table.
    pub fn tasks(&self) -> BTreeMap<&'static str, Arc<TaskEntry>> {
        self.tasks.lock().expect("tasks lock").clone()
    }

    /// Asks every task to stop and waits for them, at most `grace`. `false` if some did not
    /// finish in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}
