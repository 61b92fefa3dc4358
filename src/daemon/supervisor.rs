//! The supervisor (`CollectorDaemon` in the design): the one place that decides restarts.
//! It owns every polling collector task by name and restarts one that panics; the stream asks
//! it the same question for its shards and helper tasks through [`Restarts`]. Each restart
//! waits a capped exponential backoff with full jitter and is counted; when one task dies more
//! than `max_restarts` times within `restart_window` the supervisor gives up — the daemon
//! exits 70 for systemd to take over.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::poll::{self, CollectorStats};
use crate::backoff::Backoff;
use crate::collectors::{Collector, Restarts};
use crate::config::DaemonConfig;
use crate::db::leader::Leadership;
use crate::fault;
use crate::journal;

/// What kind of task an entry is (health shows polling collectors one per line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskKind {
    #[default]
    Polling,
    /// The live stream: its shards and helper tasks share one entry.
    Stream,
}

/// One supervised task as health sees it.
#[derive(Debug, Default)]
pub struct TaskEntry {
    pub kind: TaskKind,
    pub stats: Arc<CollectorStats>,
    pub restarts: AtomicU64,
    pub alive: AtomicBool,
    /// Its passes may rightly be long: not counted as wedged (`Collector::long_passes`).
    pub long_passes: AtomicBool,
    /// Deaths within the restart window.
    recent: Mutex<VecDeque<Instant>>,
}

/// Why the supervisor gave up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{task} died {deaths} times within {window:?} (budget {budget}), last: {error}")]
pub struct GaveUp {
    pub task: String,
    pub deaths: usize,
    pub window: Duration,
    pub budget: u32,
    pub error: String,
}

#[derive(Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Fired when a task spent its restart budget.
    fatal: CancellationToken,
    fatal_reason: Arc<Mutex<Option<GaveUp>>>,
    tasks: Arc<Mutex<BTreeMap<&'static str, Arc<TaskEntry>>>>,
    /// Each polling collector's interval, live: a reload changes it here.
    intervals: Arc<Mutex<BTreeMap<&'static str, watch::Sender<Duration>>>>,
    backoff: Backoff,
    max_restarts: u32,
    restart_window: Duration,
    fault_spec: Option<String>,
    /// Whether this instance leads the shared work.
    leadership: Leadership,
}

impl Supervisor {
    pub fn new(cancel: CancellationToken, cfg: &DaemonConfig, fault_spec: Option<String>) -> Self {
        Supervisor {
            tracker: TaskTracker::new(),
            cancel,
            fatal: CancellationToken::new(),
            fatal_reason: Arc::default(),
            tasks: Arc::default(),
            intervals: Arc::default(),
            backoff: Backoff::new(cfg.restart_backoff_base, Duration::from_secs(60)),
            max_restarts: cfg.max_restarts,
            restart_window: cfg.restart_window,
            fault_spec,
            leadership: Leadership::always(),
        }
    }

    /// Shared work (`Collector::shared`) runs only while `leadership` says this instance
    /// leads (default: always).
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }

    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// The test-only fault spec (see [`crate::fault`]).
    pub fn fault_spec(&self) -> Option<&str> {
        self.fault_spec.as_deref()
    }

    /// Adds a task entry (alive) for health and restart accounting.
    pub fn register(&self, name: &'static str, kind: TaskKind) -> Arc<TaskEntry> {
        let entry = Arc::new(TaskEntry { kind, ..TaskEntry::default() });
        entry.alive.store(true, Ordering::Relaxed);
        self.tasks.lock().expect("tasks lock").insert(name, entry.clone());
        entry
    }

    /// Supervises a polling collector built by `make` (called again for each restart).
    pub fn spawn_polling<C, F>(&self, mut make: F) -> Arc<TaskEntry>
    where
        C: Collector,
        F: FnMut() -> C + Send + 'static,
    {
        let first = make();
        let name = first.name();
        let entry = self.register(name, TaskKind::Polling);
        entry.long_passes.store(first.long_passes(), Ordering::Relaxed);
        let (interval_tx, interval) = watch::channel(first.interval());
        let leader = first.shared().then(|| self.leadership.clone());
        self.intervals.lock().expect("intervals lock").insert(name, interval_tx);
        let fault = fault::for_task(self.fault_spec.as_deref(), name);
        let this = self.clone();
        let e = entry.clone();
        self.tracker.spawn(async move {
            let mut collector = Some(first);
            loop {
                let c = collector.take().unwrap_or_else(&mut make);
                let (stats, token, interval, leader) = (e.stats.clone(), this.cancel.clone(), interval.clone(), leader.clone());
                e.alive.store(true, Ordering::Relaxed);
                let result = tokio::spawn(async move { poll::run(c, &stats, token, fault, interval, leader).await }).await;
                e.alive.store(false, Ordering::Relaxed);
                let Err(err) = result else { return }; // cancelled: a clean stop
                let Some(delay) = this.died(name, &err.to_string()) else { return };
                if !crate::backoff::rest(&this.cancel, delay).await {
                    return;
                }
            }
        });
        entry
    }

    /// Sets polling collector `name`'s interval (a reload): a loop resting applies it at once
    /// (from the end of its last pass). Returns whether `name` runs here.
    pub fn set_interval(&self, name: &str, interval: Duration) -> bool {
        match self.intervals.lock().expect("intervals lock").get(name) {
            Some(tx) => {
                tx.send_if_modified(|d| std::mem::replace(d, interval) != interval);
                true
            }
            None => false,
        }
    }

    /// A copy of the task table.
    pub fn tasks(&self) -> BTreeMap<&'static str, Arc<TaskEntry>> {
        self.tasks.lock().expect("tasks lock").clone()
    }

    /// Resolves when a task spent its restart budget, with the reason.
    pub async fn gave_up(&self) -> GaveUp {
        self.fatal.cancelled().await;
        self.fatal_reason.lock().expect("fatal lock").clone().expect("set before firing")
    }

    /// Collectors whose pass has run longer than `stall_timeout`.
    pub fn wedged(&self, stall_timeout: Duration) -> Vec<&'static str> {
        self.tasks()
            .into_iter()
            .filter(|(_, t)| !t.long_passes.load(Ordering::Relaxed) && t.stats.pass_running_for().is_some_and(|d| d > stall_timeout))
            .map(|(name, _)| name)
            .collect()
    }

    /// Asks every polling task to stop and waits for them, at most `grace`. `false` if some
    /// did not finish in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}

impl Restarts for Supervisor {
    fn died(&self, name: &'static str, error: &str) -> Option<Duration> {
        let entry = self.tasks().get(name).cloned().unwrap_or_else(|| self.register(name, TaskKind::Polling));
        let restarts = entry.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let deaths = {
            let mut recent = entry.recent.lock().expect("recent lock");
            recent.push_back(now);
            while recent.front().is_some_and(|t| now.duration_since(*t) > self.restart_window) {
                recent.pop_front();
            }
            recent.len()
        };
        if deaths as u32 > self.max_restarts {
            let reason =
                GaveUp { task: name.to_string(), deaths, window: self.restart_window, budget: self.max_restarts, error: error.to_string() };
            tracing::error!(message_id = journal::RESTART, collector = name, restarts, "{reason}; giving up");
            self.fatal_reason.lock().expect("fatal lock").get_or_insert(reason);
            self.fatal.cancel();
            return None;
        }
        // The backoff grows with the deaths within the window.
        let attempt = (deaths - 1) as u32;
        let delay = self.backoff.delay(attempt);
        tracing::error!(
            message_id = journal::RESTART, collector = name, error = %error, restarts,
            delay_ms = delay.as_millis() as u64, ceiling_ms = self.backoff.ceiling(attempt).as_millis() as u64, "collector task died, restarting: {name}: {error}"
        );
        Some(delay)
    }
}
