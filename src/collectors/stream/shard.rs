//! One shard: a WebSocket connection carrying up to `max_assets_per_connection` assets,
//! rebuilt whenever it drops, stalls or misses first books, with every interval in which its
//! assets were not captured reported as a gap: from the last data frame received (capture is
//! known good up to there) to the first data frame after resubscribing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::book::{Applied, Books};
use super::domain;
use super::gaps::{GapEvent, GapReason};
use super::watch::{FirstBookWatch, SilenceWatch};
use super::{AssetId, Lifecycle, StreamCtx};
use crate::backoff::{Backoff, rest};
use crate::db::stream::{Row, TradeSource};
use crate::fault::{self, Fault};
use crate::journal;
use crate::polymarket::retry::parse_retry_after;
use crate::polymarket::ws::{self, Event, Frame};

/// A change of a shard's assets.
#[derive(Debug)]
pub enum ShardCmd {
    Subscribe(Vec<AssetId>),
    Unsubscribe(Vec<AssetId>),
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Cancelled,
    Lost(GapReason),
}

/// What the manager shares with a shard's task (and keeps when the task dies).
#[derive(Debug, Default)]
pub struct ShardShared {
    /// Last data frame received, µs since the epoch (0: none yet). Where a gap starts if the
    /// task dies.
    pub last_data_us: AtomicI64,
    /// Subscribed on an open connection now.
    pub connected: AtomicBool,
    /// Sessions lost (rebuilt) since start.
    pub reconnects: AtomicU64,
    /// Assets the shard carries.
    pub assets: AtomicU64,
}

impl ShardShared {
    pub fn last_data_at(&self) -> Option<DateTime<Utc>> {
        match self.last_data_us.load(Ordering::Relaxed) {
            0 => None,
            us => DateTime::from_timestamp_micros(us),
        }
    }
}

pub struct Shard {
    pub id: i32,
    pub assets: BTreeSet<AssetId>,
    pub cmd_rx: mpsc::Receiver<ShardCmd>,
    pub ctx: Arc<StreamCtx>,
    pub shared: Arc<ShardShared>,
    /// Delay before the first connect (connections open gradually; a restart waits its
    /// backoff here).
    pub start_delay: Duration,
    /// A gap is open for this shard's assets (a start gap, or one opened by the manager when
    /// the previous task died): it closes at the first data frame.
    pub gap_open: bool,
    /// Told once, after the first successful subscription (or when giving up on READY).
    pub first_up: Option<tokio::sync::oneshot::Sender<()>>,
    /// The test-only fault hook.
    pub fault: Option<Fault>,
}

impl Shard {
    pub async fn run(mut self, cancel: CancellationToken) {
        if !rest(&cancel, self.start_delay).await {
            return;
        }
        let cfg = &self.ctx.cfg;
        let mut retries = Backoff::new(cfg.reconnect_base, cfg.reconnect_max).start();
        let mut books_watch = FirstBookWatch::new(cfg.first_book_timeout);
        // Capture is known good up to here: where the next gap starts.
        let mut last_data_at = self.shared.last_data_at().unwrap_or_else(Utc::now);
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
            // Handshakes one at a time across every shard (`connect_interval`).
            if !rest(&cancel, self.ctx.handshake_slot()).await {
                return;
            }
            // Small buffers: up to ~1,600 connections, and frames are read as they come (a
            // larger frame grows the buffer for itself: see `_held` below).
            let ws_config = tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(0);
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
                    let ra = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, Utc::now(), self.ctx.retry_after_max));
                    (None, ra, Some(format!("handshake refused: HTTP {}", resp.status().as_u16())))
                }
                Ok(Err(e)) => (None, None, Some(format!("connect failed: {e}"))),
                Err(_) => (None, None, Some("connect timed out".to_string())),
            };
            let Some(ws) = ws else {
                let reason = GapReason::Connect(failure.unwrap_or_default());
                self.gap_open(&reason, last_data_at);
                let delay = retries.next_delay().max(retry_after.unwrap_or_default());
                tracing::warn!(message_id = journal::RECONNECT, conn = self.id, reason = %reason, attempt = retries.attempts(),
                    delay_ms = delay.as_millis() as u64, "stream connection {} failed, retrying: {reason}", self.id);
                if !rest(&cancel, delay).await {
                    return;
                }
                continue;
            };
            let started = Instant::now();
            let (end, last) = self.session(ws, &cancel, &mut books_watch, last_data_at).await;
            last_data_at = last;
            let reason = match end {
                End::Cancelled => return,
                End::Lost(reason) => reason,
            };
            self.ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
            if reason == GapReason::Stall {
                self.ctx.stats.stalls.fetch_add(1, Ordering::Relaxed);
            }
            self.gap_open(&reason, last_data_at);
            if started.elapsed() > Duration::from_secs(60) {
                retries.reset();
            }
            let delay = retries.next_delay();
            tracing::warn!(message_id = journal::RECONNECT, conn = self.id, reason = %reason, assets = self.assets.len(),
                delay_ms = delay.as_millis() as u64, "stream connection {} lost, reconnecting: {reason}", self.id);
            if !rest(&cancel, delay).await {
                return;
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
        self.count_assets();
    }

    /// Publishes how many assets the shard carries (`collector status`).
    fn count_assets(&self) {
        self.shared.assets.store(self.assets.len() as u64, Ordering::Relaxed);
    }

    /// Opens a gap for this shard's assets from `since` (once; it closes at the next data).
    fn gap_open(&mut self, reason: &GapReason, since: DateTime<Utc>) {
        if self.gap_open {
            return;
        }
        self.gap_open = true;
        self.ctx.send_gap(GapEvent::Open {
            conn: self.id,
            assets: self.assets.iter().map(|a| a.to_string()).collect(),
            reason: reason.clone(),
            at: since,
        });
    }

    /// One connection, subscribed, until it ends; returns why and the last data frame's time.
    async fn session(
        &mut self,
        ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
        cancel: &CancellationToken,
        books_watch: &mut FirstBookWatch,
        last_data_at: DateTime<Utc>,
    ) -> (End, DateTime<Utc>) {
        let (mut tx, mut rx) = ws.split();
        let all: Vec<AssetId> = self.assets.iter().cloned().collect();
        self.count_assets();
        if let Err(e) = tx.send(Message::text(ws::subscribe_initial(&all))).await {
            return (End::Lost(GapReason::Error(e.to_string())), last_data_at);
        }
        let stats = self.ctx.stats.clone();
        stats.connections_active.fetch_add(1, Ordering::Relaxed);
        let _active = DecOnDrop(&stats.connections_active);
        self.shared.connected.store(true, Ordering::Relaxed);
        let _connected = Disconnected(self.shared.clone());
        if let Some(up) = self.first_up.take() {
            let _ = up.send(());
        }
        let mut books = Books::default();
        books_watch.reset();
        books_watch.subscribed(&all, Instant::now());
        // Silence counts from the subscription; until data flows, capture is known good only
        // up to the previous session's last frame.
        let mut silence = SilenceWatch::new(self.ctx.cfg.silence_timeout, Instant::now(), last_data_at);
        let mut got_data = false;
        // Shared, not cloned: the scope may list tens of thousands of token ids.
        let ctx = self.ctx.clone();
        let cfg = &ctx.cfg;
        let mut ping = tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
        let mut check = tokio::time::interval(Duration::from_millis(250));
        // The last text frame, kept until the next one is read. tungstenite reads frames into
        // one buffer that grows to the largest frame (an initial dump of 200 deep books is
        // ~0.3 MB) and takes the whole allocation back whenever no frame still points into it,
        // so it would keep that size for the connection's life: ~0.5 GB over the universe's
        // 1,600 connections. With a frame still held, the buffer's next growth starts a new
        // allocation of its usual size and the large one is freed (BENCHMARKS.md, "Universe").
        let mut _held: Option<tungstenite::Utf8Bytes> = None;
        let end = loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), tx.send(Message::Close(None))).await;
                    break End::Cancelled;
                }
                _ = ping.tick() => {
                    if let Err(e) = tx.send(Message::text(ws::PING)).await {
                        break End::Lost(GapReason::Error(format!("sending PING: {e}")));
                    }
                }
                _ = check.tick() => {
                    if let Some(silent) = silence.stalled(Instant::now()) {
                        tracing::warn!(conn = self.id, silent_secs = silent.as_secs(), "stream connection silent");
                        break End::Lost(GapReason::Stall);
                    }
                    let late = books_watch.late(Instant::now());
                    if !late.is_empty() {
                        break End::Lost(GapReason::MissingBooks(late.len()));
                    }
                }
                cmd = self.cmd_rx.recv() => {
                    let Some(cmd) = cmd else { break End::Cancelled };
                    let frame = match cmd {
                        ShardCmd::Subscribe(a) => {
                            let new: Vec<AssetId> = a.into_iter().filter(|x| self.assets.insert(x.clone())).collect();
                            self.count_assets();
                            if new.is_empty() { continue; }
                            books_watch.subscribed(&new, Instant::now());
                            ws::subscribe_more(&new)
                        }
                        ShardCmd::Unsubscribe(a) => {
                            let gone: Vec<AssetId> = a.into_iter().filter(|x| self.assets.remove(x)).collect();
                            self.count_assets();
                            if gone.is_empty() { continue; }
                            for g in &gone {
                                books.forget(g);
                                books_watch.forget(g);
                            }
                            ws::unsubscribe(&gone)
                        }
                    };
                    if let Err(e) = tx.send(Message::text(frame)).await {
                        break End::Lost(GapReason::Error(e.to_string()));
                    }
                }
                msg = rx.next() => {
                    let received_at = crate::clock::now();
                    match msg {
                        None => break End::Lost(GapReason::Closed("end of stream".into())),
                        Some(Err(e)) => break End::Lost(GapReason::Error(e.to_string())),
                        Some(Ok(Message::Close(frame))) => {
                            break End::Lost(GapReason::Closed(frame.map_or("no reason".into(), |f| format!("{} {}", u16::from(f.code), f.reason))));
                        }
                        Some(Ok(Message::Text(text))) => {
                            if self.handle_text(text.as_str(), received_at, &mut books, books_watch) {
                                silence.data(Instant::now(), received_at);
                                self.shared.last_data_us.store(received_at.timestamp_micros(), Ordering::Relaxed);
                                if !got_data {
                                    got_data = true;
                                    self.first_data(received_at);
                                }
                            }
                            _held = Some(text);
                        }
                        Some(Ok(Message::Binary(b))) => {
                            self.quarantine("binary frame", String::from_utf8_lossy(&b).into_owned(), received_at);
                        }
                        Some(Ok(_)) => {} // protocol ping/pong: tungstenite answers pings itself
                    }
                }
            }
        };
        (end, silence.last_data_at())
    }

    /// The first data frame after (re)subscribing: the open gap, if any, ends here.
    fn first_data(&mut self, at: DateTime<Utc>) {
        if self.gap_open {
            self.ctx.send_gap(GapEvent::Close { conn: self.id, at });
            self.gap_open = false;
        }
        if self.fault == Some(Fault::PanicOnce) && fault::fire_once() {
            panic!("injected fault: stream shard {} panics once", self.id);
        }
    }

    fn quarantine(&self, reason: &str, frame: String, received_at: DateTime<Utc>) {
        self.ctx.stats.quarantined.fetch_add(1, Ordering::Relaxed);
        let (reason, frame) = (domain::printable(reason), domain::printable(&frame));
        self.ctx.sink.push(Row::Quarantine { connection: Some(self.id), reason, frame, received_at });
    }

    /// Handles one text frame; `true` if it carried data (feeds the silence watchdog).
    fn handle_text(&self, text: &str, received_at: DateTime<Utc>, books: &mut Books, books_watch: &mut FirstBookWatch) -> bool {
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
                // The events' own texts, found only when one of them is quarantined.
                let mut texts: Option<Option<Vec<&str>>> = None;
                let n = events.len();
                // Counted once a frame: the shards share these counters.
                stats.events_received.fetch_add(n as u64, Ordering::Relaxed);
                let mut trades = 0;
                // The frame's rows, handed to the sink together.
                let mut rows = Vec::with_capacity(n * 2);
                for (i, event) in events.into_iter().enumerate() {
                    if let Err(reason) = domain::check(&event, received_at, &self.assets) {
                        let own = texts.get_or_insert_with(|| ws::event_texts(text)).as_ref().filter(|t| t.len() == n).map(|t| t[i]);
                        self.quarantine(&reason, own.unwrap_or(text).to_string(), received_at);
                        continue;
                    }
                    match event {
                        Event::Book(book) => {
                            books_watch.book(&book.token_id);
                            // Kept in memory only for an asset subscribed here (its shared id).
                            if let Some(asset) = self.assets.get(book.token_id.as_str()) {
                                books.snapshot(asset, &book);
                            }
                            rows.push(Row::Book { book, received_at });
                        }
                        Event::PriceChange(pc) => {
                            let condition_id: Option<std::sync::Arc<str>> = pc.condition_id.map(Into::into);
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
                                    rows.push(Row::PriceChange {
                                        change,
                                        condition_id: condition_id.clone(),
                                        source_ts: pc.source_ts,
                                        received_at,
                                    });
                                }
                            }
                        }
                        Event::Trade(trade) => {
                            trades += 1;
                            rows.push(Row::Trade { trade, received_at, source: TradeSource::Ws });
                        }
                        Event::Quote(quote) => rows.push(Row::Quote { quote, received_at }),
                        Event::TickSize(change) => rows.push(Row::TickSize { change, received_at }),
                        Event::NewMarket(l) => {
                            self.ctx.lifecycle(Lifecycle::Listed { condition: l.condition_id.clone(), assets: l.assets.clone() });
                            rows.push(Row::Lifecycle { event: l, received_at });
                        }
                        Event::MarketResolved(l) => {
                            self.ctx.lifecycle(Lifecycle::Resolved(l.assets.clone()));
                            rows.push(Row::Lifecycle { event: l, received_at });
                        }
                    }
                }
                if trades > 0 {
                    stats.trades_received.fetch_add(trades, Ordering::Relaxed);
                }
                sink.push_all(rows);
                true
            }
        }
    }
}

/// Marks the shard disconnected when a session ends, however it ends.
struct Disconnected(Arc<ShardShared>);

impl Drop for Disconnected {
    fn drop(&mut self) {
        self.0.connected.store(false, Ordering::Relaxed);
    }
}

/// Decrements a gauge when a session ends, however it ends.
struct DecOnDrop<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for DecOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
