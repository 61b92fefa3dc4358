//! systemd notifications (`READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`,
//! `EXTEND_TIMEOUT_USEC=`). Without `NOTIFY_SOCKET` every call is a no-op. When to ping the
//! watchdog is the health loop's decision (`daemon::health::run`).

use std::time::Duration;

use sd_notify::NotifyState;

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

/// `RELOADING=1` with the monotonic time (systemd ≥ 253 requires it), at the start of a
/// reload; `READY=1` ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Asks systemd for `extra` more time to stop (sent repeatedly during a long drain).
pub fn extend_timeout(extra: Duration) {
    send(&[NotifyState::ExtendTimeoutUsec(extra.as_micros().min(u32::MAX as u128) as u32)]);
}

/// `WATCHDOG=1` (sent by the health loop while the daemon progresses).
pub fn watchdog_ping() {
    send(&[NotifyState::Watchdog]);
}

/// systemd's watchdog period (`WATCHDOG_USEC`), when the watchdog is on for this process.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
