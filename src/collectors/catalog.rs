//! The catalog: events, markets and tokens from Gamma, kept current by three passes.
//!
//! - [`FullSweep`] (`catalog`): every open event with its markets, `/events/keyset?closed=false`.
//! - [`NewMarkets`] (`new_markets`): the newest markets first, `/markets/keyset` ordered by
//!   creation, until a page holds nothing new; picks up new markets within a minute.
//! - [`Resolutions`] (`resolutions`): re-reads, by id, markets that passed their end date,
//!   vanished from the open list, or closed without a resolution yet, so closes and
//!   resolutions are captured.
//! - [`History`] (`history`): once, every closed event with its markets and tokens
//!   (`/events/keyset?closed=true`), a few pages per pass, resumable after a restart; from
//!   then on the other passes keep the catalog current.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{CollectError, Collector};
use crate::config::CatalogConfig;
use crate::db::{self, Pool};
use crate::polymarket::client::{PolymarketClient, Route};
use crate::polymarket::gamma::{self, EventRecord, MarketRecord, Oddity};

/// State the passes share.
#[derive(Debug, Default)]
pub struct CatalogState {
    /// Start of the last completed full sweep: open markets not seen since were delisted or
    /// closed.
    pub last_full_sweep: Mutex<Option<DateTime<Utc>>>,
    /// Odd markets seen (stored partly or skipped), by all passes.
    pub oddities: std::sync::atomic::AtomicU64,
}

/// What every pass needs.
#[derive(Clone)]
pub struct CatalogCtx {
    pub client: Arc<PolymarketClient>,
    pub pool: Pool,
    pub cfg: CatalogConfig,
    pub state: Arc<CatalogState>,
}

impl CatalogCtx {
    fn note_oddities(&self, odd: Vec<Oddity>) {
        for o in &odd {
            tracing::warn!(market_id = %o.market_id, problem = %o.what, "odd market");
        }
        self.state.oddities.fetch_add(odd.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes one page in one transaction; returns markets written.
    async fn store(&self, events: &[EventRecord], stubs: &[EventRecord], markets: &[MarketRecord]) -> Result<u64, CollectError> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        db::catalog::upsert_events(&tx, events).await?;
        db::catalog::upsert_event_stubs(&tx, stubs).await?;
        let n = db::catalog::upsert_markets(&tx, markets).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Decodes a page of events (from `/events/keyset`, markets embedded) and stores it;
    /// returns markets written.
    async fn store_events(&self, items: &[Value]) -> Result<u64, CollectError> {
        let mut odd = Vec::new();
        let (mut events, mut markets) = (Vec::with_capacity(items.len()), Vec::new());
        for item in items {
            match gamma::decode_event(item, &mut odd) {
                Ok((e, ms)) => {
                    events.push(e);
                    markets.extend(ms);
                }
                Err(e) => odd.push(Oddity { market_id: String::new(), what: format!("event skipped: {e}") }),
            }
        }
        self.note_oddities(odd);
        self.store(&events, &[], &markets).await
    }

    /// Fetches one keyset page of `path` with `params` (resent identically on every page).
    async fn page(&self, path: &str, params: &[(&str, String)], cursor: Option<&str>) -> Result<Value, CollectError> {
        let mut url = self.client.gamma_url.join(path).expect("static path");
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(c) = cursor {
                // `after_cursor`, not `cursor`: the latter is silently ignored upstream.
                q.append_pair("after_cursor", c);
            }
        }
        Ok(self.client.get_json(Route::GammaListing, url).await?)
    }

    /// Decodes a page of markets (from `/markets/keyset`) and their parent-event stubs.
    fn decode_markets(&self, items: &[Value]) -> (Vec<EventRecord>, Vec<MarketRecord>) {
        let mut odd = Vec::new();
        let mut stubs = Vec::new();
        let mut markets = Vec::new();
        for item in items {
            match gamma::decode_market(item, &mut odd) {
                Ok(Some(m)) => {
                    stubs.extend(gamma::parent_events(item));
                    markets.push(m);
                }
                Ok(None) => {}
                Err(e) => odd.push(Oddity {
                    market_id: crate::polymarket::decode::string(item, "id").unwrap_or_default(),
                    what: format!("skipped: {e}"),
                }),
            }
        }
        self.note_oddities(odd);
        (stubs, markets)
    }
}

/// Follows `next_cursor` until it is absent, refusing a cursor seen before (an ignored cursor
/// parameter returns page 1 with the same `next_cursor` forever).
struct Cursor {
    next: Option<String>,
    seen: HashSet<String>,
}

impl Cursor {
    fn new() -> Self {
        Cursor { next: None, seen: HashSet::new() }
    }

    /// Records the page's `next_cursor`; `Ok(false)` at the end.
    fn advance(&mut self, next: Option<String>) -> Result<bool, CollectError> {
        match next {
            None => Ok(false),
            Some(c) if !self.seen.insert(c.clone()) => Err(CollectError::CursorRepeated(c)),
            Some(c) => {
                self.next = Some(c);
                Ok(true)
            }
        }
    }
}

/// `catalog`: the full sweep.
pub struct FullSweep(pub CatalogCtx);

impl Collector for FullSweep {
    fn shared(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "catalog"
    }

    fn interval(&self) -> Duration {
        self.0.cfg.full_sweep_interval
    }

    async fn collect_once(&mut self) -> Result<u64, CollectError> {
        let ctx = &self.0;
        let started = Utc::now();
        let params = [("closed", "false".to_string()), ("limit", ctx.cfg.page_size.to_string())];
        let mut cursor = Cursor::new();
        let (mut stored, mut pages) = (0, 0u64);
        loop {
            let body = ctx.page("events/keyset", &params, cursor.next.as_deref()).await?;
            let (items, next) = gamma::keyset_page(&body, "events")?;
            stored += ctx.store_events(&items).await?;
            pages += 1;
            if !cursor.advance(next)? {
                break;
            }
        }
        *ctx.state.last_full_sweep.lock().expect("state lock") = Some(started);
        tracing::info!(
            collector = "catalog",
            pages,
            markets = stored,
            secs = (Utc::now() - started).num_milliseconds() as f64 / 1000.0,
            "full sweep done"
        );
        Ok(stored)
    }
}

/// `new_markets`: newest markets first until a page holds nothing new.
pub struct NewMarkets(pub CatalogCtx);

impl Collector for NewMarkets {
    fn shared(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "new_markets"
    }

    fn interval(&self) -> Duration {
        self.0.cfg.new_markets_interval
    }

    async fn collect_once(&mut self) -> Result<u64, CollectError> {
        let ctx = &self.0;
        let params = [
            ("closed", "false".to_string()),
            ("order", "createdAt".to_string()),
            ("ascending", "false".to_string()),
            ("limit", ctx.cfg.page_size.to_string()),
        ];
        let mut cursor = Cursor::new();
        let mut stored = 0;
        for _ in 0..ctx.cfg.new_markets_max_pages {
            let body = ctx.page("markets/keyset", &params, cursor.next.as_deref()).await?;
            let (items, next) = gamma::keyset_page(&body, "markets")?;
            let (stubs, markets) = ctx.decode_markets(&items);
            let ids: Vec<&str> = markets.iter().map(|m| m.id.as_str()).collect();
            let known = {
                let conn = ctx.pool.get().await?;
                db::catalog::known_market_ids(&*conn, &ids).await?
            };
            let new: Vec<MarketRecord> = markets.into_iter().filter(|m| !known.contains(&m.id)).collect();
            if !new.is_empty() {
                tracing::info!(collector = "new_markets", count = new.len(), "new markets listed");
            }
            stored += ctx.store(&[], &stubs, &new).await?;
            if new.is_empty() || !cursor.advance(next)? {
                break;
            }
        }
        Ok(stored)
    }
}

/// `resolutions`: re-reads markets that may have closed or resolved.
pub struct Resolutions(pub CatalogCtx);

/// Ids per request; URLs with ~400 ids stay under upstream's 8 KB limit.
const IDS_PER_REQUEST: usize = 100;

impl Collector for Resolutions {
    fn shared(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "resolutions"
    }

    fn interval(&self) -> Duration {
        self.0.cfg.resolutions_interval
    }

    async fn collect_once(&mut self) -> Result<u64, CollectError> {
        let ctx = &self.0;
        let stale_before = *ctx.state.last_full_sweep.lock().expect("state lock");
        let watch_since = Utc::now() - chrono::Duration::from_std(ctx.cfg.resolution_watch).unwrap_or(chrono::Duration::days(14));
        let ids = {
            let conn = ctx.pool.get().await?;
            db::catalog::markets_awaiting_resolution(&*conn, stale_before, watch_since).await?
        };
        let mut stored = 0;
        for chunk in ids.chunks(IDS_PER_REQUEST) {
            let mut params: Vec<(&str, String)> = chunk.iter().map(|id| ("id", id.clone())).collect();
            params.push(("closed", "true".to_string()));
            params.push(("limit", IDS_PER_REQUEST.to_string()));
            let mut cursor = Cursor::new();
            loop {
                let body = ctx.page("markets/keyset", &params, cursor.next.as_deref()).await?;
                let (items, next) = gamma::keyset_page(&body, "markets")?;
                let (stubs, markets) = ctx.decode_markets(&items);
                stored += ctx.store(&[], &stubs, &markets).await?;
                if !cursor.advance(next)? {
                    break;
                }
            }
        }
        Ok(stored)
    }
}

/// `history`: the closed part of the catalog, swept once.
pub struct History(pub CatalogCtx);

impl Collector for History {
    fn shared(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "history"
    }

    fn interval(&self) -> Duration {
        self.0.cfg.history_interval
    }

    /// Up to `catalog.history_pages_per_pass` pages from where the sweep stands; 0 once done.
    async fn collect_once(&mut self) -> Result<u64, CollectError> {
        let ctx = &self.0;
        let progress = {
            let conn = ctx.pool.get().await?;
            db::catalog::history_progress(&*conn).await?
        };
        if progress.finished {
            return Ok(0);
        }
        let params = [("closed", "true".to_string()), ("limit", ctx.cfg.page_size.to_string())];
        let mut cursor = Cursor::new();
        cursor.next = progress.next_cursor.clone();
        let mut stored = 0;
        for _ in 0..ctx.cfg.history_pages_per_pass {
            let body = match ctx.page("events/keyset", &params, cursor.next.as_deref()).await {
                Ok(b) => b,
                // A stored cursor upstream no longer knows: start over (storing is idempotent).
                Err(CollectError::Upstream(e)) if cursor.next.is_some() && matches!(e.status(), Some(400 | 410 | 422)) => {
                    tracing::warn!(collector = "history", error = %e, "history cursor refused; the sweep starts over");
                    let conn = ctx.pool.get().await?;
                    db::catalog::history_restart(&*conn).await?;
                    return Ok(stored);
                }
                Err(e) => return Err(e),
            };
            let (items, next) = gamma::keyset_page(&body, "events")?;
            let n = ctx.store_events(&items).await?;
            stored += n;
            let more = cursor.advance(next.clone())?;
            {
                let conn = ctx.pool.get().await?;
                db::catalog::history_page_done(&*conn, next.as_deref().filter(|_| more), n as i64).await?;
            }
            if !more {
                let conn = ctx.pool.get().await?;
                let p = db::catalog::history_progress(&*conn).await?;
                tracing::info!(
                    collector = "history",
                    pages = p.pages,
                    markets = p.markets,
                    "catalog history complete: every closed event and market stored"
                );
                break;
            }
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_guard_stops_a_repeating_cursor() {
        let mut c = Cursor::new();
        assert!(c.advance(Some("a".into())).unwrap());
        assert!(c.advance(Some("b".into())).unwrap());
        assert!(matches!(c.advance(Some("a".into())), Err(CollectError::CursorRepeated(_))));
        assert!(!Cursor::new().advance(None).unwrap());
    }
}
