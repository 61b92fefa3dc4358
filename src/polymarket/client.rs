//! The REST client for Gamma, CLOB and the Data API: explicit User-Agent, timeouts,
//! per-endpoint budgets, and retries with capped exponential backoff and jitter on 429
//! (honouring `Retry-After`), 5xx, HTML block pages, malformed bodies and transport errors,
//! each counted in [`ClientStats`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::Serialize;
use serde_json::Value;
use url::Url;

use super::budget::Budget;
use super::retry::{Backoff, Outcome, parse_retry_after, retry_delay};
use crate::config::UpstreamConfig;
use crate::errors::error_chain;

/// The budget a request is charged to. Windows are upstream's 10 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Gamma `/events/keyset`, `/markets/keyset` (listings share one budget).
    GammaListing,
    /// CLOB `POST /books`.
    ClobBooks,
    /// Data API trades.
    DataTrades,
}

/// Counters of what the client saw, for health and tests.
#[derive(Debug, Default, Serialize)]
pub struct ClientStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub server_errors: AtomicU64,
    pub html_pages: AtomicU64,
    pub transport_errors: AtomicU64,
    pub malformed_bodies: AtomicU64,
    pub client_errors: AtomicU64,
    pub gave_up: AtomicU64,
    /// Requests and retries per budget route, in [`Route::ALL`] order.
    pub by_route: [RouteStats; 3],
}

/// One route's request counters.
#[derive(Debug, Default, Serialize)]
pub struct RouteStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
}

impl Route {
    pub const ALL: [Route; 3] = [Route::GammaListing, Route::ClobBooks, Route::DataTrades];

    /// The route's name in health and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Route::GammaListing => "gamma_listing",
            Route::ClobBooks => "clob_books",
            Route::DataTrades => "data_trades",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl ClientStats {
    fn count(&self, outcome: Outcome) {
        let c = match outcome {
            Outcome::Success => return,
            Outcome::RateLimited { .. } => &self.rate_limited,
            Outcome::ServerError => &self.server_errors,
            Outcome::HtmlPage => &self.html_pages,
            Outcome::Transport => &self.transport_errors,
            Outcome::Malformed => &self.malformed_bodies,
            Outcome::ClientError => &self.client_errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A 4xx other than 429: the request itself is wrong or the thing does not exist.
    #[error("{url} answered {status}: {body}")]
    Rejected { url: String, status: u16, body: String },
    #[error("{url} failed after {attempts} attempts, last: {last}")]
    GaveUp { url: String, attempts: u32, last: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

impl ClientError {
    /// The HTTP status of a rejected request.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub struct PolymarketClient {
    http: reqwest::Client,
    pub gamma_url: Url,
    pub clob_url: Url,
    pub data_url: Url,
    gamma_budget: Budget,
    books_budget: Budget,
    data_budget: Budget,
    backoff: Backoff,
    retry_after_max: Duration,
    max_retries: u32,
    pub stats: Arc<ClientStats>,
}

const WINDOW: Duration = Duration::from_secs(10);

impl PolymarketClient {
    pub fn new(cfg: &UpstreamConfig) -> Result<PolymarketClient, ClientError> {
        let http = reqwest::Client::builder()
            .user_agent(cfg.user_agent.clone())
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(ClientError::Build)?;
        Ok(PolymarketClient {
            http,
            gamma_url: cfg.gamma_url.clone(),
            clob_url: cfg.clob_url.clone(),
            data_url: cfg.data_url.clone(),
            gamma_budget: Budget::new(cfg.gamma_requests_per_10s, WINDOW),
            books_budget: Budget::new(cfg.clob_books_requests_per_10s, WINDOW),
            data_budget: Budget::new(cfg.data_requests_per_10s, WINDOW),
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_max),
            retry_after_max: cfg.retry_after_max,
            max_retries: cfg.max_retries,
            stats: Arc::new(ClientStats::default()),
        })
    }

    /// Applies the request budgets of `cfg` (a reload) to the requests from now on.
    pub fn set_budgets(&self, cfg: &UpstreamConfig) {
        self.gamma_budget.set_limit(cfg.gamma_requests_per_10s, WINDOW);
        self.books_budget.set_limit(cfg.clob_books_requests_per_10s, WINDOW);
        self.data_budget.set_limit(cfg.data_requests_per_10s, WINDOW);
    }

    fn budget(&self, route: Route) -> &Budget {
        match route {
            Route::GammaListing => &self.gamma_budget,
            Route::ClobBooks => &self.books_budget,
            Route::DataTrades => &self.data_budget,
        }
    }

    /// `GET url` and decode the JSON body.
    pub async fn get_json(&self, route: Route, url: Url) -> Result<Value, ClientError> {
        self.send(route, &url, None).await
    }

    /// `POST url` with a JSON body and decode the JSON answer.
    pub async fn post_json(&self, route: Route, url: Url, body: &Value) -> Result<Value, ClientError> {
        self.send(route, &url, Some(body)).await
    }

    async fn send(&self, route: Route, url: &Url, body: Option<&Value>) -> Result<Value, ClientError> {
        let mut attempt = 0;
        loop {
            self.budget(route).acquire().await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.stats.by_route[route.index()].requests.fetch_add(1, Ordering::Relaxed);
            let request = match body {
                Some(b) => self.http.post(url.clone()).json(b),
                None => self.http.get(url.clone()),
            };
            let (outcome, detail) = match request.send().await {
                Err(e) => (Outcome::Transport, error_chain(&e)),
                Ok(resp) => match classify(resp, self.retry_after_max).await {
                    Ok(value) => return Ok(value),
                    Err((Outcome::ClientError, status, text)) => {
                        self.stats.count(Outcome::ClientError);
                        return Err(ClientError::Rejected { url: url.to_string(), status, body: snippet(&text) });
                    }
                    Err((outcome, status, text)) => (outcome, format!("{status}: {}", snippet(&text))),
                },
            };
            self.stats.count(outcome);
            if attempt >= self.max_retries {
                self.stats.gave_up.fetch_add(1, Ordering::Relaxed);
                return Err(ClientError::GaveUp { url: url.to_string(), attempts: attempt + 1, last: format!("{outcome:?} {detail}") });
            }
            let delay = retry_delay(&self.backoff, attempt, outcome, fastrand::f64());
            tracing::warn!(
                url = %url, ?outcome, detail = %detail, attempt = attempt + 1,
                delay_ms = delay.as_millis() as u64, "upstream request failed, retrying: {url}: {outcome:?} {detail}"
            );
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            self.stats.by_route[route.index()].retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// Turns a response into JSON or a classified failure `(outcome, status, body text)`.
async fn classify(resp: reqwest::Response, retry_after_max: Duration) -> Result<Value, (Outcome, u16, String)> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let is_html = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.contains("text/html"));
    let cf_ray = headers.get("cf-ray").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Err((Outcome::Transport, status, error_chain(&e))),
    };
    let text = || {
        let t = String::from_utf8_lossy(&bytes).into_owned();
        match &cf_ray {
            Some(ray) => format!("{t} [cf-ray {ray}]"),
            None => t,
        }
    };
    let looks_html = is_html || bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<');
    match status {
        200..=299 if looks_html => Err((Outcome::HtmlPage, status, text())),
        200..=299 => serde_json::from_slice(&bytes).map_err(|e| (Outcome::Malformed, status, format!("invalid JSON ({e}): {}", text()))),
        429 => {
            let retry_after = headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, chrono::Utc::now(), retry_after_max));
            Err((Outcome::RateLimited { retry_after }, status, text()))
        }
        _ if looks_html => Err((Outcome::HtmlPage, status, text())),
        // Cloudflare's plain "error code: 1010" is a block, not a verdict on the request.
        403 if text().contains("error code") => Err((Outcome::HtmlPage, status, text())),
        500..=599 => Err((Outcome::ServerError, status, text())),
        _ => Err((Outcome::ClientError, status, text())),
    }
}

fn snippet(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}
