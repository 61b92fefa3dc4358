//! The supervisor (`CollectorDaemon` in the design): owns every collector task by name,
//! restarts one that panics with capped exponential backoff and jitter, keeps restart counts,
//! and gives up — the daemon exits 70 for systemd to take over — when one collector is
//! restarted more than `max_restarts` times within `restart_window`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::fault;
use super::journal;
use super::poll::{self, CollectorStats};
use crate::collectors::Collector;
use crate::config::DaemonConfig;
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
    /// Fired when a collector spent its restart budget.
    fatal: CancellationToken,
    fatal_reason: Arc<Mutex<Option<String>>>,
    tasks: Arc<Mutex<BTreeMap<&'static str, Arc<TaskEntry>>>>,
    backoff: Backoff,
    max_restarts: u32,
    restart_window: Duration,
    fault_spec: Option<String>,
}

impl Supervisor {
    pub fn new(cancel: CancellationToken, cfg: &DaemonConfig, fault_spec: Option<String>) -> Self {
        Supervisor {
            tracker: TaskTracker::new(),
            cancel,
            fatal: CancellationToken::new(),
            fatal_reason: Arc::default(),
            tasks: Arc::default(),
            backoff: Backoff { base: cfg.restart_backoff_base, max: Duration::from_secs(60) },
            max_restarts: cfg.max_restarts,
            restart_window: cfg.restart_window,
            fault_spec,
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
        let fault = fault::for_collector(self.fault_spec.as_deref(), name);
        let this = self.clone();
        let e = entry.clone();
        self.tracker.spawn(async move {
            let mut collector = Some(first);
            let mut recent: VecDeque<Instant> = VecDeque::new();
            let mut attempt = 0;
            loop {
                let c = collector.take().unwrap_or_else(&mut make);
                let (stats, token) = (e.stats.clone(), this.cancel.clone());
                e.alive.store(true, Ordering::Relaxed);
                let result = tokio::spawn(async move { poll::run(c, &stats, token, fault).await }).await;
                e.alive.store(false, Ordering::Relaxed);
                let Err(err) = result else { return }; // cancelled: a clean stop
                let now = Instant::now();
                recent.push_back(now);
                while recent.front().is_some_and(|t| now.duration_since(*t) > this.restart_window) {
                    recent.pop_front();
                }
                let restarts = e.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                if recent.len() as u32 > this.max_restarts {
                    let reason = format!(
                        "collector {name} died {} times within {:?} (budget {}): {err}",
                        recent.len(), this.restart_window, this.max_restarts
                    );
                    tracing::error!(message_id = journal::RESTART, collector = name, restarts, "{reason}; giving up");
                    *this.fatal_reason.lock().expect("fatal lock") = Some(reason);
                    this.fatal.cancel();
                    return;
                }
                let delay = this.backoff.delay(attempt, Outcome::ServerError, 0.5 + fastrand::f64() / 2.0);
                tracing::error!(
                    message_id = journal::RESTART, collector = name, error = %err, restarts,
                    delay_ms = delay.as_millis() as u64, "collector task died, restarting: {err}"
                );
                attempt += 1;
                tokio::select! {
                    _ = this.cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        });
        entry
    }

    /// A copy of the task table.
    pub fn tasks(&self) -> BTreeMap<&'static str, Arc<TaskEntry>> {
        self.tasks.lock().expect("tasks lock").clone()
    }

    /// Resolves when a collector spent its restart budget, with the reason.
    pub async fn gave_up(&self) -> String {
        self.fatal.cancelled().await;
        self.fatal_reason.lock().expect("fatal lock").clone().unwrap_or_default()
    }

    /// Collectors whose pass has run longer than `stall_timeout`.
    pub fn wedged(&self, stall_timeout: Duration) -> Vec<&'static str> {
        self.tasks()
            .into_iter()
            .filter(|(_, t)| t.stats.pass_running_for().is_some_and(|d| d > stall_timeout))
            .map(|(name, _)| name)
            .collect()
    }

    /// Asks every task to stop and waits for them, at most `grace`. `false` if some did not
    /// finish in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}
