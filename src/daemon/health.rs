//! Health (DESIGN §2): the `get_health()` snapshot, the periodic health log with structured
//! journald fields, the systemd `STATUS=` line, and the liveness judgement behind
//! `WATCHDOG=1`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::supervisor::{Supervisor, TaskKind};
use super::systemd;
use crate::collectors::stream::StreamMonitor;
pub use crate::collectors::stream::TradeListenerHealth;
use crate::db::{Pool, catalog};
use crate::journal;
use crate::polymarket::client::{ClientStats, Route};

/// The whole daemon's health at one instant (`collector status --json` prints it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthSnapshot {
    pub uptime_seconds: u64,
    pub tasks_alive: usize,
    pub tasks_dead: usize,
    pub total_restarts: u64,
    pub collectors: BTreeMap<String, CollectorHealth>,
    /// The live stream's health; `None` while the stream is not running.
    pub trade_listener: Option<TradeListenerHealth>,
    pub upstream: UpstreamHealth,
    /// Open markets in the catalog (as of the last health tick).
    pub open_markets: Option<i64>,
    /// The database's size in bytes, and its growth projected to a day from the last
    /// health reports (so an operator sees the disk filling before it is full).
    #[serde(default)]
    pub disk: Option<DiskUse>,
    /// `leader` (the shared work runs here) or `standby` (another instance of this database
    /// leads: docs/scaling.md).
    #[serde(default)]
    pub role: String,
}

/// The first database-size sample of this run `(when, bytes)`, and the latest figures.
type DiskSamples = (Option<(Instant, u64)>, Option<DiskUse>);

/// The database's disk use.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct DiskUse {
    pub database_bytes: u64,
    /// Growth over the last report interval, projected to 24 h; `None` until two samples.
    pub projected_bytes_per_day: Option<u64>,
    /// The archive's files (`archive_files`), and what the last 24 h added to them.
    #[serde(default)]
    pub archive_bytes: u64,
    #[serde(default)]
    pub archive_bytes_last_day: u64,
}

/// One polling collector (DESIGN §2 stats plus supervision).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CollectorHealth {
    pub last_collect_ts: Option<chrono::DateTime<chrono::Utc>>,
    pub total_items: u64,
    pub error_count: u64,
    pub last_error: Option<String>,
    pub restarts: u64,
    pub alive: bool,
    /// How long the pass in progress has been running (seconds); `None` between passes.
    pub pass_running_secs: Option<f64>,
    /// How long its last finished pass took (a catalog sweep, a books poll cycle).
    #[serde(default)]
    pub last_pass_secs: Option<f64>,
}

/// REST client counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UpstreamHealth {
    pub requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub server_errors: u64,
    pub html_pages: u64,
    pub transport_errors: u64,
    pub malformed_bodies: u64,
    pub client_errors: u64,
    pub gave_up: u64,
    /// Requests and retries per endpoint (budget route).
    #[serde(default)]
    pub by_endpoint: BTreeMap<String, EndpointHealth>,
}

/// One endpoint's requests and retries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointHealth {
    pub requests: u64,
    pub retries: u64,
}

/// What health is computed from.
#[derive(Clone)]
pub struct Health {
    pub started: Instant,
    pub supervisor: Supervisor,
    pub client_stats: Arc<ClientStats>,
    pub stream: Option<Arc<StreamMonitor>>,
    pub pool: Pool,
    open_markets: Arc<std::sync::Mutex<Option<i64>>>,
    /// The first database-size sample `(when, bytes)`, and the latest use and projection.
    disk: Arc<std::sync::Mutex<DiskSamples>>,
    /// Growth is projected only over at least this much time (default: two report
    /// intervals; the first seconds, schema and catalog, would say nothing of a day).
    pub projection_window: Duration,
}

impl Health {
    pub fn new(supervisor: Supervisor, client_stats: Arc<ClientStats>, pool: Pool) -> Self {
        Health {
            started: Instant::now(),
            supervisor,
            client_stats,
            stream: None,
            pool,
            open_markets: Arc::default(),
            disk: Arc::default(),
            projection_window: Duration::from_secs(120),
        }
    }

    /// `get_health()`.
    pub fn get_health(&self) -> HealthSnapshot {
        let tasks = self.supervisor.tasks();
        let alive = tasks.values().filter(|t| t.alive.load(Ordering::Relaxed)).count();
        let total_restarts = tasks.values().map(|t| t.restarts.load(Ordering::Relaxed)).sum();
        let collectors: BTreeMap<String, CollectorHealth> = tasks
            .iter()
            .filter(|(_, t)| t.kind == TaskKind::Polling)
            .map(|(name, t)| {
                let s = t.stats.snapshot();
                (
                    name.to_string(),
                    CollectorHealth {
                        last_collect_ts: s.last_collect_ts,
                        total_items: s.total_items,
                        error_count: s.error_count,
                        last_error: s.last_error,
                        restarts: t.restarts.load(Ordering::Relaxed),
                        alive: t.alive.load(Ordering::Relaxed),
                        pass_running_secs: t.stats.pass_running_for().map(|d| d.as_secs_f64()),
                        last_pass_secs: t.stats.last_pass().map(|d| d.as_secs_f64()),
                    },
                )
            })
            .collect();
        let c = &self.client_stats;
        let get = ClientStats::get;
        HealthSnapshot {
            uptime_seconds: self.started.elapsed().as_secs(),
            tasks_alive: alive,
            tasks_dead: tasks.len() - alive,
            total_restarts,
            collectors,
            trade_listener: self.stream.as_ref().map(|s| s.snapshot()),
            role: self.supervisor.leadership().role().to_string(),
            upstream: UpstreamHealth {
                requests: get(&c.requests),
                retries: get(&c.retries),
                rate_limited: get(&c.rate_limited),
                server_errors: get(&c.server_errors),
                html_pages: get(&c.html_pages),
                transport_errors: get(&c.transport_errors),
                malformed_bodies: get(&c.malformed_bodies),
                client_errors: get(&c.client_errors),
                gave_up: get(&c.gave_up),
                by_endpoint: Route::ALL
                    .iter()
                    .zip(&c.by_route)
                    .map(|(r, s)| (r.name().to_string(), EndpointHealth { requests: get(&s.requests), retries: get(&s.retries) }))
                    .collect(),
            },
            open_markets: *self.open_markets.lock().expect("health lock"),
            disk: self.disk.lock().expect("health lock").1,
        }
    }

    /// Why the daemon is not making progress, if it is not: a collector pass running past
    /// `stall_timeout`, or the stream's writer storing nothing while rows wait (spooling
    /// counts as progress). Empty: alive.
    pub fn problems(&self, stall_timeout: Duration) -> Vec<String> {
        let mut problems: Vec<String> = self
            .supervisor
            .wedged(stall_timeout)
            .into_iter()
            .map(|name| format!("collector {name} has been in one pass for over {stall_timeout:?}"))
            .collect();
        problems.extend(self.stream.as_ref().and_then(|s| s.stalled()));
        problems
    }

    async fn refresh_open_markets(&self) {
        let query = async {
            let conn = self.pool.get().await.ok()?;
            let markets = catalog::open_market_count(&*conn).await.ok()?;
            let size = catalog::database_bytes(&*conn).await.ok()?;
            let archive = crate::db::archive::bytes(&*conn, chrono::Duration::days(1)).await.unwrap_or_default();
            Some((markets, size, archive))
        };
        if let Ok(Some((n, size, (archive, archive_day)))) = tokio::time::timeout(Duration::from_secs(5), query).await {
            *self.open_markets.lock().expect("health lock") = Some(n);
            let mut disk = self.disk.lock().expect("health lock");
            let now = Instant::now();
            let first = *disk.0.get_or_insert((now, size));
            let elapsed = now.duration_since(first.0).as_secs_f64();
            // Growth since the first sample of this run (smooths the noise of one interval).
            let per_day = (elapsed >= self.projection_window.as_secs_f64().max(1.0))
                .then(|| (size.saturating_sub(first.1) as f64 * 86_400.0 / elapsed) as u64);
            disk.1 = Some(DiskUse {
                database_bytes: size,
                projected_bytes_per_day: per_day,
                archive_bytes: archive.max(0) as u64,
                archive_bytes_last_day: archive_day.max(0) as u64,
            });
        }
    }
}

/// `Xh Ym`, or `Ym Zs` under an hour.
pub fn format_uptime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 { format!("{}h {}m", s / 3600, s % 3600 / 60) } else { format!("{}m {}s", s / 60, s % 60) }
}

/// The human report: the header, one line per collector, the stream line (DESIGN §2).
pub fn report_lines(h: &HealthSnapshot) -> Vec<String> {
    let mut lines = vec![format!(
        "=== Daemon Health === uptime: {} | tasks: {} alive, {} dead | restarts: {}",
        format_uptime(Duration::from_secs(h.uptime_seconds)),
        h.tasks_alive,
        h.tasks_dead,
        h.total_restarts
    )];
    for (name, c) in &h.collectors {
        let last = c.last_collect_ts.map_or_else(|| "never".to_string(), |ts| ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        lines.push(format!("  {}: items={} errors={} last={}", name, c.total_items, c.error_count, last));
    }
    if let Some(t) = &h.trade_listener {
        lines.push(format!(
            "  trades: received={} inserted={} conns={} queue={}",
            t.trades_received, t.trades_inserted, t.connections_active, t.queue_depth
        ));
    }
    lines
}

/// The systemd `STATUS=` line; `trades_per_min` is the insert rate since the last tick.
pub fn status_line(h: &HealthSnapshot, trades_per_min: Option<u64>) -> String {
    let mut parts = Vec::new();
    if let Some(m) = h.open_markets {
        parts.push(format!("markets {m}"));
    }
    if let Some(t) = &h.trade_listener {
        parts.push(format!("ws {}/{}", t.connections_active, t.connections_total));
        parts.push(format!("trades {} (+{}/min)", t.trades_inserted, trades_per_min.unwrap_or(0)));
        parts.push(format!("queue {}", t.queue_depth));
        if t.spool_bytes > 0 {
            parts.push(format!("spool {:.1} MB", t.spool_bytes as f64 / 1e6));
        }
        if t.write_failures_in_a_row > 0 {
            parts.push(format!("write failures {}", t.write_failures_in_a_row));
        }
        if t.dropped_rows > 0 {
            parts.push(format!("LOST {} rows", t.dropped_rows));
        }
        parts.push(format!("gaps {}", t.gaps));
    }
    if let Some(b) = h.collectors.get("books") {
        parts.push(format!("books {}", b.total_items));
    }
    if let Some(d) = &h.disk {
        match d.projected_bytes_per_day {
            Some(per_day) => parts.push(format!("disk {:.1} GB (+{:.1} GB/day)", d.database_bytes as f64 / 1e9, per_day as f64 / 1e9)),
            None => parts.push(format!("disk {:.1} GB", d.database_bytes as f64 / 1e9)),
        }
        if d.archive_bytes > 0 {
            parts.push(format!("archive {:.1} GB (+{:.1} GB/day)", d.archive_bytes as f64 / 1e9, d.archive_bytes_last_day as f64 / 1e9));
        }
    }
    let errors: u64 = h.collectors.values().map(|c| c.error_count).sum();
    parts.push(format!("errors {errors}"));
    parts.push(format!("restarts {}", h.total_restarts));
    parts.join(" | ")
}

/// The health loop. Every tick it judges liveness ([`Health::problems`]) and, while the
/// daemon progresses, sends `WATCHDOG=1` (when systemd's watchdog is on; ticks then come at
/// half of `WATCHDOG_USEC`) together with a fresh `STATUS=`; every `interval` it logs the
/// report, each record with structured fields (journald makes them queryable) and
/// `MESSAGE_ID` = HEALTH. It is never restarted: if it dies the pings stop and systemd
/// restarts the daemon, so health reporting cannot silently vanish.
pub async fn run(health: Health, interval: Duration, stall_timeout: Duration, cancel: CancellationToken) {
    let watchdog = systemd::watchdog_period();
    if let Some(p) = watchdog {
        tracing::info!(period_ms = p.as_millis() as u64, "systemd watchdog enabled");
    }
    let tick_every = watchdog.map_or(interval, |p| (p / 2).min(interval)).max(Duration::from_millis(10));
    health.refresh_open_markets().await;
    let first = health.get_health();
    systemd::status(&status_line(&first, None));
    let mut last_inserted = first.trade_listener.as_ref().map(|t| t.trades_inserted);
    let mut last_report = Instant::now();
    let mut withholding = false;
    let mut tick = tokio::time::interval_at(Instant::now() + tick_every, tick_every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if watchdog.is_some() {
            let problems = health.problems(stall_timeout);
            if problems.is_empty() {
                systemd::watchdog_ping();
                if withholding {
                    tracing::info!("progress resumed, watchdog pings resumed");
                    withholding = false;
                }
            } else if !withholding {
                tracing::error!(problems = %problems.join("; "), "no progress: withholding watchdog pings, systemd will restart the service: {}", problems.join("; "));
                withholding = true;
            }
        }
        if last_report.elapsed() + Duration::from_millis(5) < interval {
            continue;
        }
        health.refresh_open_markets().await;
        let h = health.get_health();
        log_report(&h);
        let per_min = match (last_inserted, &h.trade_listener) {
            (Some(before), Some(now)) => {
                let secs = last_report.elapsed().as_secs_f64().max(1.0);
                Some(((now.trades_inserted.saturating_sub(before)) as f64 * 60.0 / secs) as u64)
            }
            _ => None,
        };
        last_inserted = h.trade_listener.as_ref().map(|t| t.trades_inserted);
        last_report = Instant::now();
        systemd::status(&status_line(&h, per_min));
    }
}

/// Logs the report lines with their journald fields.
fn log_report(h: &HealthSnapshot) {
    let lines = report_lines(h);
    let t = h.trade_listener.clone().unwrap_or_default();
    tracing::info!(
        message_id = journal::HEALTH,
        uptime_secs = h.uptime_seconds,
        tasks_alive = h.tasks_alive,
        tasks_dead = h.tasks_dead,
        restarts = h.total_restarts,
        open_markets = h.open_markets.unwrap_or(-1),
        database_bytes = h.disk.map_or(0, |d| d.database_bytes),
        projected_bytes_per_day = h.disk.and_then(|d| d.projected_bytes_per_day).unwrap_or(0),
        trades_received = t.trades_received,
        trades_inserted = t.trades_inserted,
        connections = t.connections_active,
        queue_depth = t.queue_depth,
        spool_bytes = t.spool_bytes,
        spooled_rows = t.spooled_rows,
        replayed_rows = t.replayed_rows,
        write_failures = t.write_failures_in_a_row,
        gaps = t.gaps,
        role = h.role.as_str(),
        slice = t.slice.as_str(),
        slice_role = t.slice_role.as_str(),
        "{}",
        lines[0]
    );
    for (line, (name, c)) in lines[1..].iter().zip(&h.collectors) {
        tracing::info!(
            message_id = journal::HEALTH,
            collector = name.as_str(),
            items = c.total_items,
            errors = c.error_count,
            last_collect = c.last_collect_ts.map(|t| t.to_rfc3339()).unwrap_or_default(),
            "{line}"
        );
    }
    if h.trade_listener.is_some() {
        tracing::info!(message_id = journal::HEALTH, collector = "trades", "{}", lines.last().expect("stream line"));
    }
    if t.spool_bytes > 0 || t.write_failures_in_a_row > 0 {
        tracing::warn!(
            message_id = journal::HEALTH,
            collector = "trades",
            "  spool: bytes={} spooled={} replayed={} write_failures_in_a_row={}",
            t.spool_bytes,
            t.spooled_rows,
            t.replayed_rows,
            t.write_failures_in_a_row
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn uptime_reads_hours_and_minutes_or_minutes_and_seconds() {
        assert_eq!(format_uptime(Duration::from_secs(2 * 3600 + 13 * 60 + 5)), "2h 13m");
        assert_eq!(format_uptime(Duration::from_secs(59 * 60 + 7)), "59m 7s");
        assert_eq!(format_uptime(Duration::from_secs(3)), "0m 3s");
    }

    pub(crate) fn snapshot() -> HealthSnapshot {
        let mut collectors = BTreeMap::new();
        collectors.insert(
            "books".to_string(),
            CollectorHealth {
                last_collect_ts: Some("2026-11-28T04:01:00Z".parse().unwrap()),
                total_items: 48213,
                error_count: 2,
                last_error: None,
                restarts: 1,
                alive: true,
                pass_running_secs: None,
                last_pass_secs: None,
            },
        );
        HealthSnapshot {
            uptime_seconds: 2 * 3600 + 13 * 60,
            tasks_alive: 5,
            tasks_dead: 0,
            total_restarts: 1,
            collectors,
            trade_listener: Some(TradeListenerHealth {
                trades_received: 91234,
                trades_inserted: 91234,
                connections_active: 12,
                connections_total: 12,
                queue_depth: 0,
                gaps: 2,
                ..Default::default()
            }),
            upstream: UpstreamHealth::default(),
            open_markets: Some(15234),
            disk: None,
            role: "leader".into(),
        }
    }

    #[test]
    fn report_lines_match_the_design_exactly() {
        assert_eq!(
            report_lines(&snapshot()),
            vec![
                "=== Daemon Health === uptime: 2h 13m | tasks: 5 alive, 0 dead | restarts: 1",
                "  books: items=48213 errors=2 last=2026-11-28T04:01:00Z",
                "  trades: received=91234 inserted=91234 conns=12 queue=0",
            ]
        );
    }

    #[test]
    fn status_line_summarises() {
        assert_eq!(
            status_line(&snapshot(), Some(840)),
            "markets 15234 | ws 12/12 | trades 91234 (+840/min) | queue 0 | gaps 2 | books 48213 | errors 2 | restarts 1"
        );
    }
}
