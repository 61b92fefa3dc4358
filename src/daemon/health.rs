//! The health log (DESIGN §2): a header and one line per collector, every
//! `health.log_interval_secs`.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::supervisor::Supervisor;

/// `Xh Ym`, or `Ym Zs` under an hour.
pub fn format_uptime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 { format!("{}h {}m", s / 3600, s % 3600 / 60) } else { format!("{}m {}s", s / 60, s % 60) }
}

/// Logs health until cancelled.
pub async fn run(supervisor: Supervisor, started: Instant, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval_at(started + interval, interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let tasks = supervisor.tasks();
        let alive = tasks.values().filter(|t| t.alive.load(std::sync::atomic::Ordering::Relaxed)).count();
        let restarts: u64 = tasks.values().map(|t| t.restarts.load(std::sync::atomic::Ordering::Relaxed)).sum();
        tracing::info!(
            "=== Daemon Health === uptime: {} | tasks: {} alive, {} dead | restarts: {}",
            format_uptime(started.elapsed()), alive, tasks.len() - alive, restarts
        );
        for (name, t) in &tasks {
            let s = t.stats.snapshot();
            let last = s.last_collect_ts.map_or_else(
                || "never".to_string(),
                |ts| ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
            tracing::info!("  {}: items={} errors={} last={}", name, s.total_items, s.error_count, last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_hours_and_minutes_or_minutes_and_seconds() {
        assert_eq!(format_uptime(Duration::from_secs(2 * 3600 + 13 * 60 + 5)), "2h 13m");
        assert_eq!(format_uptime(Duration::from_secs(59 * 60 + 7)), "59m 7s");
        assert_eq!(format_uptime(Duration::from_secs(3)), "0m 3s");
    }
}
