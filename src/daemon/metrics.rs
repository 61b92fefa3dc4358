//! The opt-in Prometheus endpoint (`[metrics] listen`): `GET /metrics` answers what
//! `get_health()` knows, in the OpenMetrics text format (encoded with `prometheus-client`).
//! Each scrape builds its registry from one health snapshot, so the numbers of one scrape are
//! consistent with each other and with `collector status`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::health::{Health, HealthSnapshot};
use crate::collectors::stream::stats::MetricKind;

type Labels = Vec<(String, String)>;

fn gauge(r: &mut Registry, name: &str, help: &str, v: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(v);
    r.register(name, help, g);
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    r.register(name, help, c);
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The metrics of one snapshot, as OpenMetrics text.
pub fn render(h: &HealthSnapshot) -> String {
    let mut r = Registry::with_prefix("collector");
    gauge(&mut r, "uptime_seconds", "Seconds since the daemon started", h.uptime_seconds as f64);
    let tasks = Family::<Labels, Gauge>::default();
    tasks.get_or_create(&labels(&[("state", "alive")])).set(h.tasks_alive as i64);
    tasks.get_or_create(&labels(&[("state", "dead")])).set(h.tasks_dead as i64);
    r.register("tasks", "Supervised tasks by state", tasks);
    counter(&mut r, "restarts", "Task restarts after a panic", h.total_restarts);
    gauge(&mut r, "leader", "1 when this instance leads the shared work of its database (docs/scaling.md)", f64::from(h.role == "leader"));
    let (items, errors, last) =
        (Family::<Labels, Counter>::default(), Family::<Labels, Counter>::default(), Family::<Labels, Gauge<f64, AtomicU64>>::default());
    for (name, c) in &h.collectors {
        let l = labels(&[("collector", name)]);
        items.get_or_create(&l).inc_by(c.total_items);
        errors.get_or_create(&l).inc_by(c.error_count);
        if let Some(ts) = c.last_collect_ts {
            last.get_or_create(&l).set(ts.timestamp_millis() as f64 / 1000.0);
        }
    }
    r.register("items", "Items stored by each polling collector", items);
    r.register("errors", "Failed passes of each polling collector", errors);
    r.register("last_success_timestamp_seconds", "End of each polling collector's last successful pass (Unix time)", last);
    if let Some(m) = h.open_markets {
        gauge(&mut r, "open_markets", "Open markets in the catalog", m as f64);
    }
    if let Some(d) = &h.disk {
        gauge(&mut r, "database_bytes", "Size of the database on disk", d.database_bytes as f64);
        if let Some(p) = d.projected_bytes_per_day {
            gauge(&mut r, "database_growth_bytes_per_day", "Database growth projected to a day", p as f64);
        }
        gauge(&mut r, "archive_bytes", "Size of the archive's Parquet files (archive_files)", d.archive_bytes as f64);
        gauge(&mut r, "archive_growth_bytes_per_day", "Archive bytes written in the last 24 hours", d.archive_bytes_last_day as f64);
    }
    if let Some(t) = &h.trade_listener {
        let s = r.sub_registry_with_prefix("stream");
        // Every number of the stream's health, as declared once in `stream::stats`.
        for (name, help, kind, value) in t.metrics() {
            match kind {
                MetricKind::Counter => counter(s, name, help, value),
                MetricKind::Gauge => gauge(s, name, help, value as f64),
                MetricKind::StatusOnly => {}
            }
        }
        let conns = Family::<Labels, Gauge>::default();
        conns.get_or_create(&labels(&[("state", "active")])).set(t.connections_active as i64);
        conns.get_or_create(&labels(&[("state", "total")])).set(t.connections_total as i64);
        s.register("connections", "Stream connections", conns);
        let latency = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (q, v) in [("0.5", t.commit_latency_p50_ms), ("0.99", t.commit_latency_p99_ms)] {
            if let Some(ms) = v {
                latency.get_or_create(&labels(&[("quantile", q)])).set(ms as f64 / 1000.0);
            }
        }
        s.register("commit_latency_seconds", "Frame received → row committed, quantiles since start", latency);
    }
    let u = &h.upstream;
    let http = Family::<Labels, Counter>::default();
    for (outcome, n) in [
        ("rate_limited", u.rate_limited),
        ("server_error", u.server_errors),
        ("html_page", u.html_pages),
        ("transport_error", u.transport_errors),
        ("malformed_body", u.malformed_bodies),
        ("client_error", u.client_errors),
    ] {
        http.get_or_create(&labels(&[("outcome", outcome)])).inc_by(n);
    }
    r.register("http_failures", "Upstream HTTP failures by kind", http);
    let (requests, retries) = (Family::<Labels, Counter>::default(), Family::<Labels, Counter>::default());
    for (endpoint, e) in &u.by_endpoint {
        let l = labels(&[("endpoint", endpoint)]);
        requests.get_or_create(&l).inc_by(e.requests);
        retries.get_or_create(&l).inc_by(e.retries);
    }
    r.register("http_requests", "Upstream HTTP requests sent, by endpoint", requests);
    r.register("http_retries", "Upstream HTTP requests retried, by endpoint", retries);
    counter(&mut r, "http_gave_up", "Upstream HTTP requests given up after the retries", u.gave_up);
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String");
    out
}

/// Serves `GET /metrics` on `listener` until cancelled (anything else: 404).
pub async fn serve(listener: TcpListener, health: Health, cancel: CancellationToken) {
    loop {
        let (mut conn, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            // The request head, bounded in size and time.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = conn.read(&mut buf[len..]).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Some(())
            });
            if read.await.ok().flatten().is_none() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("");
            let response = if head.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
                let body = render(&health.get_health());
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                let body = "not found: try /metrics\n";
                format!("HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.write_all(response.as_bytes())).await;
            let _ = conn.shutdown().await;
        });
    }
}
