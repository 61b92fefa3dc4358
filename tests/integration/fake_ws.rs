//! An in-process fake of the CLOB market WebSocket on `127.0.0.1:0`, with upstream's manners:
//! the first frame must be the `type: market` subscription (a `PING` before it gets the socket
//! closed), text `PING` is answered `PONG`, an initial dump of books arrives as one JSON array
//! frame, `operation` frames change the subscription, and a connection that does not ping
//! within `ping_deadline` is closed with 1008. Misbehaviours on demand: refuse handshakes with
//! 429 + `Retry-After`, drop connections abruptly, go silent while still answering `PONG`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::fake;

#[derive(Debug)]
enum Cmd {
    Send(Utf8Bytes),
    Drop,
    Silence,
}

pub struct Conn {
    pub assets: HashSet<String>,
    pub alive: bool,
    pub silent: bool,
    pub pings: Vec<Instant>,
    tx: mpsc::UnboundedSender<Cmd>,
}

#[derive(Default)]
pub struct WsState {
    pub conns: Vec<Conn>,
    /// Handshakes still to refuse with 429.
    pub refuse_handshakes: u32,
    pub refused: u32,
    /// Connections closed for sending PING before subscribing.
    pub early_pings: u32,
    /// Close a connection that has not pinged for this long (upstream: 1008).
    pub ping_deadline: Option<Duration>,
    pub closed_for_no_ping: u32,
    /// Subscription frames received, as sent.
    pub frames: Vec<Value>,
    /// Assets for which no initial book is sent.
    pub bookless: HashSet<String>,
    /// When each handshake began (accepted or refused).
    pub handshakes: Vec<Instant>,
}

#[derive(Clone)]
pub struct FakeWs {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<WsState>>,
}

impl FakeWs {
    pub async fn start() -> FakeWs {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(WsState::default()));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let st = st.clone();
                tokio::spawn(async move { serve(tcp, st).await });
            }
        });
        FakeWs { addr, state }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws/market", self.addr)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut WsState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// Assets subscribed on live connections.
    pub fn live_assets(&self) -> HashSet<String> {
        self.with(|s| s.conns.iter().filter(|c| c.alive).flat_map(|c| c.assets.iter().cloned()).collect())
    }

    pub fn live_connections(&self) -> usize {
        self.with(|s| s.conns.iter().filter(|c| c.alive).count())
    }

    /// Sends `frame` on every live, non-silent connection carrying `asset`; `true` if any did.
    pub fn send_to_asset(&self, asset: &str, frame: &str) -> bool {
        self.send_shared_to_asset(asset, &frame.to_string().into())
    }

    /// [`FakeWs::send_to_asset`] without copying the frame (the benchmarks build their frames
    /// once, so the fake's cost stays out of the collector's).
    pub fn send_shared_to_asset(&self, asset: &str, frame: &Utf8Bytes) -> bool {
        self.with(|s| {
            let mut sent = false;
            for c in s.conns.iter().filter(|c| c.alive && !c.silent && c.assets.contains(asset)) {
                sent |= c.tx.send(Cmd::Send(frame.clone())).is_ok();
            }
            sent
        })
    }

    /// Sends `frame` on every live connection.
    pub fn broadcast(&self, frame: &str) {
        self.with(|s| {
            for c in s.conns.iter().filter(|c| c.alive) {
                let _ = c.tx.send(Cmd::Send(frame.to_string().into()));
            }
        });
    }

    /// Drops every live connection without a close frame.
    pub fn drop_all(&self) {
        self.with(|s| {
            for c in s.conns.iter_mut().filter(|c| c.alive) {
                let _ = c.tx.send(Cmd::Drop);
            }
        });
    }

    /// Live connections stop sending data (PONG still answered).
    pub fn silence_all(&self) {
        self.with(|s| {
            for c in s.conns.iter_mut().filter(|c| c.alive) {
                c.silent = true;
                let _ = c.tx.send(Cmd::Silence);
            }
        });
    }
}

fn book_frame(assets: &[String], bookless: &HashSet<String>) -> Option<String> {
    let books: Vec<Value> = assets
        .iter()
        .filter(|a| !bookless.contains(*a))
        .map(|a| {
            let mut b = fake::book(a, 1_795_683_663_127, "9d41c0e27f3b8a6d5e1c2b0a9f8e7d6c5b4a3f21");
            b["event_type"] = json!("book");
            b
        })
        .collect();
    (!books.is_empty()).then(|| Value::Array(books).to_string())
}

async fn serve(tcp: tokio::net::TcpStream, state: Arc<Mutex<WsState>>) {
    let refuse = {
        let mut s = state.lock().unwrap();
        s.handshakes.push(Instant::now());
        if s.refuse_handshakes > 0 {
            s.refuse_handshakes -= 1;
            s.refused += 1;
            true
        } else {
            false
        }
    };
    #[allow(clippy::result_large_err)] // the handshake callback's type is tungstenite's
    let callback = move |_req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if refuse {
            let mut r = ErrorResponse::new(Some("Too Many Requests".into()));
            *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::TOO_MANY_REQUESTS;
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
            return Err(r);
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else { return };
    let (mut tx, mut rx) = ws.split();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    let id = {
        let mut s = state.lock().unwrap();
        let id = s.conns.len();
        s.conns.push(Conn { assets: HashSet::new(), alive: true, silent: false, pings: Vec::new(), tx: cmd_tx });
        id
    };
    let mark_dead = |state: &Arc<Mutex<WsState>>| state.lock().unwrap().conns[id].alive = false;
    let mut subscribed = false;
    let mut last_ping = Instant::now();
    let mut silent = false;
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = check.tick() => {
                let deadline = state.lock().unwrap().ping_deadline;
                if let Some(d) = deadline {
                    if subscribed && last_ping.elapsed() > d {
                        state.lock().unwrap().closed_for_no_ping += 1;
                        let _ = tx.send(Message::Close(Some(CloseFrame { code: 1008u16.into(), reason: "no ping received".into() }))).await;
                        mark_dead(&state);
                        return;
                    }
                }
            }
            cmd = cmd_rx.recv() => {
                // The frames queued by now go out with one flush, as a busy server's writes
                // coalesce: a write per frame made the fake, not the collector, the
                // benchmarks' bottleneck. Commands keep their order; a drop flushes first.
                let (mut cmd, mut unflushed) = (cmd, 0);
                loop {
                    match cmd {
                        Some(Cmd::Send(text)) if !silent => {
                            let _ = tx.feed(Message::text(text)).await;
                            unflushed += 1;
                        }
                        Some(Cmd::Send(_)) => {}
                        Some(Cmd::Silence) => silent = true,
                        Some(Cmd::Drop) | None => {
                            let _ = tx.flush().await;
                            mark_dead(&state);
                            return; // TCP reset, no close frame
                        }
                    }
                    match cmd_rx.try_recv() {
                        Ok(next) if unflushed < 256 => cmd = Some(next),
                        Ok(next) => {
                            let _ = tx.flush().await;
                            unflushed = 0;
                            cmd = Some(next);
                        }
                        Err(_) => break,
                    }
                }
                if unflushed > 0 {
                    let _ = tx.flush().await;
                }
            }
            msg = rx.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { mark_dead(&state); return; }
                    Some(Ok(_)) => continue,
                };
                if text == "PING" {
                    if !subscribed {
                        state.lock().unwrap().early_pings += 1;
                        let _ = tx.send(Message::Close(Some(CloseFrame { code: 1008u16.into(), reason: "ping before subscription".into() }))).await;
                        mark_dead(&state);
                        return;
                    }
                    last_ping = Instant::now();
                    state.lock().unwrap().conns[id].pings.push(last_ping);
                    let _ = tx.send(Message::text("PONG")).await;
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    let _ = tx.send(Message::text("INVALID OPERATION")).await;
                    continue;
                };
                let assets: Vec<String> = v["assets_ids"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default();
                let bookless = {
                    let mut s = state.lock().unwrap();
                    s.frames.push(v.clone());
                    let c = &mut s.conns[id];
                    if v["type"] == "market" || v["operation"] == "subscribe" {
                        c.assets.extend(assets.iter().cloned());
                    } else if v["operation"] == "unsubscribe" {
                        for a in &assets { c.assets.remove(a); }
                    }
                    s.bookless.clone()
                };
                if v["type"] == "market" {
                    subscribed = true;
                    last_ping = Instant::now();
                }
                if (v["type"] == "market" || v["operation"] == "subscribe") && !silent {
                    if let Some(frame) = book_frame(&assets, &bookless) {
                        let _ = tx.send(Message::text(frame)).await;
                    }
                }
            }
        }
    }
}

/// A `last_trade_price` frame for `asset`, with a distinct size per `n`.
pub fn trade_frame(asset: &str, n: u64, ts_ms: u64) -> String {
    json!({
        "event_type": "last_trade_price",
        "market": "0x3f9a5c1e7b2d4a6081c9e0f2a4b6d8c0e1f3a5b7c9d1e3f5a7b9c1d3e5f7a9b1",
        "asset_id": asset,
        "price": "0.35",
        "size": format!("{}.{:06}", 10 + n / 1_000_000, n % 1_000_000),
        "side": if n % 2 == 0 { "BUY" } else { "SELL" },
        "fee_rate_bps": "0",
        "timestamp": ts_ms.to_string(),
        "transaction_hash": format!("0x{:064x}", n),
    })
    .to_string()
}
