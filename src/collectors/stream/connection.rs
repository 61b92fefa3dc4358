//! One shard: a WebSocket connection carrying up to `max_assets_per_connection` assets,
//! rebuilt whenever it drops, stalls or misses first books, with every interval in which its
//! assets were not captured reported as a gap.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::book::{Applied, Books};
use super::{GapEvent, Lifecycle, StreamCtx};
use crate::daemon::journal;
use crate::db::writer::{Row, TradeSource};
use crate::polymarket::retry::{Backoff, Outcome, parse_retry_after};
use crate::polymarket::ws::{self, Event, Frame};

/// A change of a shard's assets.
#[derive(Debug)]
pub enum ShardCmd {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Cancelled,
    /// No data frame for the silence timeout (PING/PONG may still work).
    Stall,
    /// Assets without a first `book` past the deadline.
    MissingBooks(usize),
    Closed(String),
    Error(String),
}

impl End {
    fn reason(&self) -> String {
        match self {
            End::Cancelled => "shutdown".into(),
            End::Stall => "stall".into(),
            End::MissingBooks(n) => format!("no first book for {n} assets"),
            End::Closed(r) => format!("closed: {r}"),
            End::Error(e) => format!("error: {e}"),
        }
    }
}

pub struct Shard {
    pub id: i32,
    pub assets: BTreeSet<String>,
    pub cmd_rx: mpsc::Receiver<ShardCmd>,
    pub ctx: Arc<StreamCtx>,
    /// Delay before the first connect (connections open gradually).
    pub start_delay: Duration,
    /// Told once, after the first successful subscription (or when giving up on READY).
    pub first_up: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Shard {
    pub async fn run(mut self, cancel: CancellationToken) {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(self.start_delay) => {}
        }
        let cfg = &self.ctx.cfg;
        let backoff = Backoff { base: cfg.reconnect_base, max: cfg.reconnect_max };
        let mut attempt = 0u32;
        let mut gap_open = false;
        // Assets that already cost one rebuild for a missing first book.
        let mut quiet: HashSet<String> = HashSet::new();
        loop {
            if self.assets.is_empty() {
                // Nothing to capture: no connection (and no PING before a subscription).
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    cmd = self.cmd_rx.recv() => match cmd {
                        Some(c) => { self.apply_cmd_offline(c); continue; }
                        None => return,
                    },
                }
            }
            // Small buffers: hundreds of connections, and frames are read as they come.
            let ws_config = tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(16 * 1024)
                .write_buffer_size(0);
            let connect = tokio::time::timeout(
                Duration::from_secs(30),
                tokio_tungstenite::connect_async_with_config(self.ctx.ws_url.as_str(), Some(ws_config), false),
            );
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = connect => r,
            };
            let (ws, retry_after, failure) = match result {
                Ok(Ok((ws, _))) => (Some(ws), None, None),
                Ok(Err(tungstenite::Error::Http(resp))) => {
                    let ra = resp.headers().get("retry-after").and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, Utc::now()));
                    (None, ra, Some(format!("handshake refused: HTTP {}", resp.status().as_u16())))
                }
                Ok(Err(e)) => (None, None, Some(format!("connect failed: {e}"))),
                Err(_) => (None, None, Some("connect timed out".to_string())),
            };
            let Some(ws) = ws else {
                let reason = failure.unwrap_or_default();
                if !gap_open {
                    self.gap_open(&reason);
                    gap_open = true;
                }
                let outcome = if retry_after.is_some() { Outcome::RateLimited { retry_after } } else { Outcome::Transport };
                let delay = backoff.delay(attempt, outcome, 0.5 + fastrand::f64() / 2.0);
                attempt += 1;
                tracing::warn!(message_id = journal::RECONNECT, conn = self.id, reason = %reason, attempt,
                    delay_ms = delay.as_millis() as u64, "stream connection {} failed, retrying: {reason}", self.id);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            };
            let started = Instant::now();
            let end = self.session(ws, &cancel, &mut gap_open, &mut quiet).await;
            if matches!(end, End::Cancelled) {
                return;
            }
            self.ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            if matches!(end, End::Stall) {
                self.ctx.stats.stalls.fetch_add(1, Ordering::Relaxed);
            }
            let reason = end.reason();
            if !gap_open {
                self.gap_open(&reason);
                gap_open = true;
            }
            if started.elapsed() > Duration::from_secs(60) {
                attempt = 0;
            }
            let delay = backoff.delay(attempt, Outcome::Transport, 0.5 + fastrand::f64() / 2.0);
            attempt += 1;
            tracing::warn!(message_id = journal::RECONNECT, conn = self.id, reason = %reason, assets = self.assets.len(),
                delay_ms = delay.as_millis() as u64, "stream connection {} lost, reconnecting: {reason}", self.id);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn apply_cmd_offline(&mut self, cmd: ShardCmd) {
        match cmd {
            ShardCmd::Subscribe(a) => self.assets.extend(a),
            ShardCmd::Unsubscribe(a) => {
                for x in a {
                    self.assets.remove(&x);
                }
            }
        }
    }

    fn gap_open(&self, reason: &str) {
        self.ctx.send_gap(GapEvent::Open {
            conn: self.id,
            assets: self.assets.iter().cloned().collect(),
            reason: reason.to_string(),
            at: Utc::now(),
        });
    }

    async fn session(
        &mut self,
        ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
        cancel: &CancellationToken,
        gap_open: &mut bool,
        quiet: &mut HashSet<String>,
    ) -> End {
        let (mut tx, mut rx) = ws.split();
        let all: Vec<String> = self.assets.iter().cloned().collect();
        if let Err(e) = tx.send(Message::text(ws::subscribe_initial(&all))).await {
            return End::Error(e.to_string());
        }
        let stats = &self.ctx.stats;
        stats.connections_active.fetch_add(1, Ordering::Relaxed);
        let _active = DecOnDrop(&stats.connections_active);
        if *gap_open {
            self.ctx.send_gap(GapEvent::Close { conn: self.id, at: Utc::now() });
            *gap_open = false;
        }
        if let Some(up) = self.first_up.take() {
            let _ = up.send(());
        }
        let mut books = Books::default();
        let now = Instant::now();
        let mut awaiting_book: HashMap<String, Instant> = all.iter().map(|a| (a.clone(), now)).collect();
        let mut last_data = Instant::now();
        // Shared, not cloned: the scope may list tens of thousands of token ids.
        let ctx = self.ctx.clone();
        let cfg = &ctx.cfg;
        let mut ping = tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
        let mut check = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), tx.send(Message::Close(None))).await;
                    return End::Cancelled;
                }
                _ = ping.tick() => {
                    if let Err(e) = tx.send(Message::text(ws::PING)).await {
                        return End::Error(format!("sending PING: {e}"));
                    }
                }
                _ = check.tick() => {
                    if last_data.elapsed() > cfg.silence_timeout {
                        tracing::warn!(conn = self.id, silent_secs = last_data.elapsed().as_secs(), "stream connection silent");
                        return End::Stall;
                    }
                    let late: Vec<String> = awaiting_book
                        .iter()
                        .filter(|(a, since)| since.elapsed() > cfg.first_book_timeout && !quiet.contains(*a))
                        .map(|(a, _)| a.clone())
                        .collect();
                    if !late.is_empty() {
                        quiet.extend(late.iter().cloned());
                        return End::MissingBooks(late.len());
                    }
                }
                cmd = self.cmd_rx.recv() => {
                    let Some(cmd) = cmd else { return End::Cancelled };
                    let (frame, added) = match cmd {
                        ShardCmd::Subscribe(a) => {
                            let new: Vec<String> = a.into_iter().filter(|x| self.assets.insert(x.clone())).collect();
                            if new.is_empty() { continue; }
                            (ws::subscribe_more(&new), new)
                        }
                        ShardCmd::Unsubscribe(a) => {
                            let gone: Vec<String> = a.into_iter().filter(|x| self.assets.remove(x)).collect();
                            if gone.is_empty() { continue; }
                            for g in &gone {
                                books.forget(g);
                                awaiting_book.remove(g);
                            }
                            (ws::unsubscribe(&gone), Vec::new())
                        }
                    };
                    let t = Instant::now();
                    for a in added {
                        awaiting_book.insert(a, t);
                    }
                    if let Err(e) = tx.send(Message::text(frame)).await {
                        return End::Error(e.to_string());
                    }
                }
                msg = rx.next() => {
                    let received_at = Utc::now();
                    match msg {
                        None => return End::Closed("end of stream".into()),
                        Some(Err(e)) => return End::Error(e.to_string()),
                        Some(Ok(Message::Close(frame))) => {
                            return End::Closed(frame.map_or("no reason".into(), |f| format!("{} {}", u16::from(f.code), f.reason)));
                        }
                        Some(Ok(Message::Text(text))) => {
                            if self.handle_text(text.as_str(), received_at, &mut books, &mut awaiting_book) {
                                last_data = Instant::now();
                            }
                        }
                        Some(Ok(Message::Binary(b))) => {
                            self.quarantine("binary frame", String::from_utf8_lossy(&b).into_owned(), received_at);
                        }
                        Some(Ok(_)) => {} // protocol ping/pong: tungstenite answers pings itself
                    }
                }
            }
        }
    }

    fn quarantine(&self, reason: &str, frame: String, received_at: chrono::DateTime<Utc>) {
        self.ctx.stats.quarantined.fetch_add(1, Ordering::Relaxed);
        self.ctx.sink.push(Row::Quarantine { connection: Some(self.id), reason: reason.to_string(), frame, received_at });
    }

    /// Handles one text frame; `true` if it carried data (feeds the silence watchdog).
    fn handle_text(
        &self,
        text: &str,
        received_at: chrono::DateTime<Utc>,
        books: &mut Books,
        awaiting_book: &mut HashMap<String, Instant>,
    ) -> bool {
        let stats = &self.ctx.stats;
        let sink = &self.ctx.sink;
        match ws::decode_frame(text) {
            Frame::Pong | Frame::NoNewAssets => false,
            Frame::OtherText(t) => {
                tracing::warn!(conn = self.id, text = %t, "unexpected text frame");
                self.quarantine("unexpected text frame", t, received_at);
                false
            }
            Frame::Events { events, rejected } => {
                for (frame, reason) in rejected {
                    self.quarantine(&reason, frame, received_at);
                }
                for event in events {
                    stats.events_received.fetch_add(1, Ordering::Relaxed);
                    match event {
                        Event::Book(book) => {
                            awaiting_book.remove(&book.token_id);
                            books.snapshot(&book);
                            sink.push(Row::Book { book, received_at });
                        }
                        Event::PriceChange(pc) => {
                            for change in pc.changes {
                                match books.apply(&change) {
                                    Applied::Withheld => {
                                        stats.withheld.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                    Applied::Diverged => {
                                        stats.book_divergences.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Applied::Ok => {}
                                }
                                if self.ctx.cfg.store_price_changes {
                                    sink.push(Row::PriceChange {
                                        change,
                                        condition_id: pc.condition_id.clone(),
                                        source_ts: pc.source_ts,
                                        received_at,
                                    });
                                }
                            }
                        }
                        Event::Trade(trade) => {
                            stats.trades_received.fetch_add(1, Ordering::Relaxed);
                            sink.push(Row::Trade { trade, received_at, source: TradeSource::Ws });
                        }
                        Event::Quote(quote) => sink.push(Row::Quote { quote, received_at }),
                        Event::TickSize(change) => sink.push(Row::TickSize { change, received_at }),
                        Event::NewMarket(l) => {
                            self.ctx.lifecycle(Lifecycle::Listed(l.assets.clone()));
                            sink.push(Row::Lifecycle { event: l, received_at });
                        }
                        Event::MarketResolved(l) => {
                            self.ctx.lifecycle(Lifecycle::Resolved(l.assets.clone()));
                            sink.push(Row::Lifecycle { event: l, received_at });
                        }
                    }
                }
                true
            }
        }
    }
}

/// Decrements a gauge when a session ends, however it ends.
struct DecOnDrop<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for DecOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
