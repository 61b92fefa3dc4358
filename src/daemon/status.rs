//! `collector status`: the daemon serves its `get_health()` snapshot as one JSON document on a
//! unix socket (mode 0600: the service's user and root only); the command reads and prints it.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::health::{HealthSnapshot, report_lines};

/// The bound status socket: its listener, its path, and which file it is (device and inode),
/// so that only this socket is removed at the end, never a file put at its path since.
pub struct StatusSocket {
    listener: UnixListener,
    path: PathBuf,
    id: (u64, u64),
}

/// The device and inode of the file at `path`.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Binds `path`, replacing a stale socket of a previous run (a socket nobody answers on) but
/// nothing else: a file of another kind at that path is left alone. `None`, with a warning,
/// when it cannot: the daemon runs on without a status socket.
pub fn bind(path: &Path) -> Option<StatusSocket> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            tracing::warn!(socket = %path.display(), "a file that is not a socket is at the status socket's path; left alone, not serving status");
            return None;
        }
        // A live daemon would answer; a stale socket from a crash is removed.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            tracing::warn!(socket = %path.display(), "another collector answers on the status socket; not serving status");
            return None;
        }
        let _ = std::fs::remove_file(path);
    }
    // Outside systemd the default directory (/run/collector) may not exist yet.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the status socket's directory");
        }
    }
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(socket = %path.display(), error = %e, "cannot bind the status socket; `collector status` will not work");
            return None;
        }
    };
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(socket = %path.display(), error = %e, "cannot restrict the status socket");
    }
    let id = file_id(path)?;
    Some(StatusSocket { listener, path: path.to_path_buf(), id })
}

impl StatusSocket {
    /// Removes the socket file if it is still the one bound (not a file put there since).
    fn remove(&self) {
        if file_id(&self.path) == Some(self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Answers every connection with the current health, until cancelled; removes the socket
/// (only the one it bound).
pub async fn serve(socket: StatusSocket, health: impl Fn() -> HealthSnapshot, cancel: CancellationToken) {
    let listener = &socket.listener;
    loop {
        let (mut conn, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "status socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let body = serde_json::to_vec(&health()).expect("health serialises");
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.write_all(&body)).await;
            let _ = conn.shutdown().await;
        });
    }
    socket.remove();
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no status socket at {path}: the daemon is not running, or uses another socket (see daemon.status_socket, or pass --socket)")]
    NoSocket { path: String },
    #[error("no collector daemon answers at {path} (a stale socket: the daemon is not running)")]
    NotRunning { path: String },
    #[error("permission denied on {path}: run as root or as the collector user")]
    PermissionDenied { path: String },
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("the daemon at {path} did not answer: {detail}")]
    BadAnswer { path: String, detail: String },
}

impl StatusError {
    /// What a failed connect to `path` means.
    fn connect(path: &str, source: std::io::Error) -> StatusError {
        let path = path.to_string();
        match source.kind() {
            std::io::ErrorKind::NotFound => StatusError::NoSocket { path },
            std::io::ErrorKind::ConnectionRefused => StatusError::NotRunning { path },
            std::io::ErrorKind::PermissionDenied => StatusError::PermissionDenied { path },
            _ => StatusError::Connect { path, source },
        }
    }
}

/// Reads the running daemon's health from `path`.
pub async fn fetch(path: &Path) -> Result<HealthSnapshot, StatusError> {
    let shown = path.display().to_string();
    let mut conn = UnixStream::connect(path).await.map_err(|source| StatusError::connect(&shown, source))?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut body))
        .await
        .map_err(|_| StatusError::BadAnswer { path: shown.clone(), detail: "timed out".into() })?
        .map_err(|e| StatusError::BadAnswer { path: shown.clone(), detail: e.to_string() })?;
    serde_json::from_slice(&body).map_err(|e| StatusError::BadAnswer { path: shown, detail: e.to_string() })
}

/// The human form of `collector status`.
pub fn render(h: &HealthSnapshot) -> String {
    let mut out = report_lines(h).join("\n");
    out.push('\n');
    if !h.role.is_empty() {
        out.push_str(&format!("  role: {} (the catalog, history, partitions and archive run on the leader)\n", h.role));
    }
    for (name, c) in &h.collectors {
        if let Some(e) = &c.last_error {
            out.push_str(&format!("  {name}: last error: {e}\n"));
        }
        if c.restarts > 0 || !c.alive {
            out.push_str(&format!("  {name}: restarts={} alive={}\n", c.restarts, c.alive));
        }
        if let Some(s) = c.last_pass_secs {
            out.push_str(&format!("  {name}: last pass took {s:.1} s\n"));
        }
    }
    if let Some(m) = h.open_markets {
        out.push_str(&format!("  catalog: open markets={m}\n"));
    }
    if let Some(d) = &h.disk {
        let per_day = d.projected_bytes_per_day.map_or("(measuring)".to_string(), |b| format!("{b} bytes/day projected"));
        out.push_str(&format!(
            "  disk: database={} bytes, growth {per_day}; archive={} bytes, +{} bytes in the last 24 h\n",
            d.database_bytes, d.archive_bytes, d.archive_bytes_last_day
        ));
    }
    let u = &h.upstream;
    out.push_str(&format!(
        "  upstream: requests={} retries={} rate_limited={} server_errors={} html_pages={} transport_errors={} gave_up={}\n",
        u.requests, u.retries, u.rate_limited, u.server_errors, u.html_pages, u.transport_errors, u.gave_up
    ));
    if let Some(t) = &h.trade_listener {
        out.push_str(&format!(
            "  stream: slice={} ({}) conns={}/{} reconnects={} stalls={} gaps={} quarantined={} poisoned={} task_restarts={}\n",
            if t.slice.is_empty() { "0/1" } else { &t.slice },
            match t.slice_role.as_str() {
                "writer" => "writes its level changes",
                "standby" => "standby: level changes held in memory",
                _ => "writes everything",
            },
            t.connections_active,
            t.connections_total,
            t.reconnects,
            t.stalls,
            t.gaps,
            t.quarantined,
            t.poisoned_rows,
            t.task_restarts
        ));
        if !t.worst_connections.is_empty() {
            let worst: Vec<String> = t
                .worst_connections
                .iter()
                .map(|c| {
                    format!(
                        "#{} {} {} s, {} reconnects, {} assets",
                        c.conn,
                        if c.connected { "silent" } else { "down, no data for" },
                        c.silent_secs,
                        c.reconnects,
                        c.assets
                    )
                })
                .collect();
            out.push_str(&format!("  stream: worst connections: {}\n", worst.join("; ")));
        }
        out.push_str(&format!(
            "  writer: spool_bytes={} spooled={} replayed={} write_failures_in_a_row={} write_errors={} lost={} spool_errors={}\n",
            t.spool_bytes, t.spooled_rows, t.replayed_rows, t.write_failures_in_a_row, t.write_errors, t.dropped_rows, t.spool_errors
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_failures_say_what_happened() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        assert!(matches!(fetch(&missing).await, Err(StatusError::NoSocket { .. })));
        // A socket file nobody listens on: a stale socket.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(matches!(fetch(&stale).await, Err(StatusError::NotRunning { .. })));
        let e = StatusError::connect("/run/x.sock", std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(e.to_string().starts_with("permission denied on /run/x.sock"), "{e}");
    }

    /// Only a socket is replaced, and only the socket it bound is removed at the end.
    #[tokio::test]
    async fn the_status_socket_removes_only_what_it_made() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file at the path: left alone, no status served.
        let file = dir.path().join("status.sock");
        std::fs::write(&file, "not a socket").unwrap();
        assert!(bind(&file).is_none());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket");
        // A stale socket is replaced; the bound socket is removed at the end…
        let path = dir.path().join("live.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let socket = bind(&path).expect("a stale socket is replaced");
        let cancel = CancellationToken::new();
        cancel.cancel();
        serve(socket, || -> HealthSnapshot { unreachable!("cancelled before any connection") }, cancel).await;
        assert!(!path.exists(), "its own socket removed");
        // …but not a file put at its path meanwhile.
        let socket = bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        serve(socket, || -> HealthSnapshot { unreachable!("cancelled before any connection") }, cancel).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
    }

    /// `collector status` over the whole universe: aggregate counts and the worst few
    /// connections named, not a line per connection.
    #[test]
    fn the_status_stays_short_with_1600_connections() {
        let mut h = crate::daemon::health::tests::snapshot();
        let t = h.trade_listener.as_mut().unwrap();
        (t.connections_active, t.connections_total, t.assets_subscribed) = (1599, 1612, 320_000);
        t.worst_connections = vec![
            crate::collectors::stream::ConnectionHealth { conn: 9, assets: 150, connected: false, silent_secs: 20, reconnects: 4 },
            crate::collectors::stream::ConnectionHealth { conn: 11, assets: 200, connected: true, silent_secs: 100, reconnects: 0 },
        ];
        let text = render(&h);
        assert!(text.contains("conns=1599/1612"), "{text}");
        assert!(
            text.contains(
                "worst connections: #9 down, no data for 20 s, 4 reconnects, 150 assets; #11 silent 100 s, 0 reconnects, 200 assets"
            ),
            "{text}"
        );
        assert!(text.lines().count() < 25, "{text}");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<HealthSnapshot>(&json).unwrap(), h, "the JSON round-trips");
    }
}
