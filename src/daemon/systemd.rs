//! systemd notifications (`READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`,
//! `EXTEND_TIMEOUT_USEC=`) and the progress-gated watchdog. Without `NOTIFY_SOCKET` every
//! call is a no-op.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use super::supervisor::Supervisor;

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready]);
}

pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Asks systemd for `extra` more time to stop (sent repeatedly during a long drain).
pub fn extend_timeout(extra: Duration) {
    send(&[NotifyState::ExtendTimeoutUsec(extra.as_micros().min(u32::MAX as u128) as u32)]);
}

/// Something whose progress gates the watchdog (the stream's writer, for one).
pub trait Liveness: Send + Sync {
    /// `Some(reason)` when it has made no progress for too long.
    fn stalled(&self) -> Option<String>;
}

/// Pings `WATCHDOG=1` at half of `WATCHDOG_USEC`, but only while no collector pass is wedged
/// (running past `stall_timeout`) and every `Liveness` shows progress. A wedged runtime never
/// gets here at all. Returns at once when the watchdog is not enabled.
pub async fn watchdog(
    supervisor: Supervisor,
    stall_timeout: Duration,
    others: Vec<Arc<dyn Liveness>>,
    cancel: CancellationToken,
) {
    let Some(period) = sd_notify::watchdog_enabled() else { return };
    let every = period / 2;
    tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog enabled");
    let mut withholding = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let mut problems: Vec<String> = supervisor
            .wedged(stall_timeout)
            .into_iter()
            .map(|name| format!("collector {name} has been in one pass for over {stall_timeout:?}"))
            .collect();
        problems.extend(others.iter().filter_map(|l| l.stalled()));
        if problems.is_empty() {
            send(&[NotifyState::Watchdog]);
            if withholding {
                tracing::info!("progress resumed, watchdog pings resumed");
                withholding = false;
            }
        } else if !withholding {
            tracing::error!(problems = %problems.join("; "), "no progress: withholding watchdog pings, systemd will restart the service: {}", problems.join("; "));
            withholding = true;
        }
    }
}
