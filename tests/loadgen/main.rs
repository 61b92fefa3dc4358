//! `loadgen`: Polymarket on loopback at the size of the whole universe, in its own process, for
//! the universe benchmark (BENCHMARKS.md, "Universe"; `tests/integration/bench_universe.rs`).
//! Built only with `--features loadgen`; never packaged.
//!
//! It serves Gamma (`/events/keyset` open and closed, `/markets/keyset` newest first or by id),
//! CLOB `POST /books`, the Data API (`/v2/trades`, the last trades it sent) and the market
//! WebSocket (`/ws/market`: the `type: market` subscription, `operation` frames, `PING`/`PONG`,
//! initial book dumps, handshakes past `--handshakes-per-sec` refused with 429). A universe of
//! `--markets` markets (two tokens each) from `--seed`; the stream is the real mix — level
//! changes (a `price_change` of both tokens of a market), trades, quotes, books, now and then a
//! tick size change — at `--rate` events a second, spread over the subscribed assets; markets
//! open and close every `--churn-secs` (with `new_market` and `market_resolved` events).
//!
//! `GET /stats` says what it sent (events per kind, trades, frames), what is subscribed, the
//! handshakes refused; `POST /control` `{"markets": N, "rate": R, "churn_secs": S}` changes the
//! universe or the rate live; every trade is written as a JSON line to `--trades-log`.
//! The first line on stdout is `listening on <addr>`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const EVENT: &str = include_str!("../fixtures/polymarket/gamma_event.json");
const MARKETS_PAGE: &str = include_str!("../fixtures/polymarket/gamma_markets_keyset_page.json");

/// A 77-digit token id, distinct per (market, outcome): the tests' own form.
fn token_id(market: u64, outcome: u64) -> String {
    format!("{:077}", market * 10 + outcome + 10u64.pow(15))
}

/// The (market, outcome) of a token id of [`token_id`]'s form.
fn token_of(id: &str) -> Option<(u64, u64)> {
    let n: u64 = id.trim_start_matches('0').parse().ok()?;
    let n = n.checked_sub(10u64.pow(15))?;
    Some((n / 10, n % 10))
}

fn condition(m: u64) -> String {
    format!("0x{:064x}", m + 1)
}

struct Args {
    listen: SocketAddr,
    markets: u64,
    rate: u64,
    seed: u64,
    churn_secs: u64,
    handshakes_per_sec: u64,
    trades_log: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        listen: "127.0.0.1:0".parse().unwrap(),
        markets: 1000,
        rate: 1000,
        seed: 1,
        churn_secs: 0,
        handshakes_per_sec: 50,
        trades_log: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--listen" => a.listen = v.parse().expect("an address"),
            "--markets" => a.markets = v.parse().expect("a count"),
            "--rate" => a.rate = v.parse().expect("events a second"),
            "--seed" => a.seed = v.parse().expect("a number"),
            "--churn-secs" => a.churn_secs = v.parse().expect("seconds"),
            "--handshakes-per-sec" => a.handshakes_per_sec = v.parse().expect("a count"),
            "--trades-log" => a.trades_log = Some(v),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// What it sent and refused.
#[derive(Default)]
struct Counters {
    price_change: AtomicU64,
    level_changes: AtomicU64,
    last_trade_price: AtomicU64,
    best_bid_ask: AtomicU64,
    book: AtomicU64,
    tick_size_change: AtomicU64,
    new_market: AtomicU64,
    market_resolved: AtomicU64,
    frames: AtomicU64,
    handshakes: AtomicU64,
    refused: AtomicU64,
    gamma_requests: AtomicU64,
    books_requests: AtomicU64,
    data_requests: AtomicU64,
}

struct Conn {
    tx: mpsc::UnboundedSender<String>,
    assets: HashSet<u64>,
}

/// The universe and the subscriptions.
struct World {
    /// Markets `first_open..markets` are open; those before are closed.
    first_open: u64,
    markets: u64,
    rate: u64,
    churn_secs: u64,
    conns: HashMap<u64, Conn>,
    /// Subscribed tokens (market * 2 + outcome), for a uniform pick, and who carries each.
    subscribed: Vec<u64>,
    position: HashMap<u64, usize>,
    carrier: HashMap<u64, u64>,
    /// The last trades sent, for the Data API (newest last).
    trades: VecDeque<Value>,
    next_conn: u64,
    handshake_window: (Instant, u64),
}

impl World {
    fn subscribe(&mut self, conn: u64, token: u64) {
        if self.position.contains_key(&token) {
            return;
        }
        self.position.insert(token, self.subscribed.len());
        self.subscribed.push(token);
        self.carrier.insert(token, conn);
    }

    fn unsubscribe(&mut self, token: u64) {
        if let Some(i) = self.position.remove(&token) {
            self.subscribed.swap_remove(i);
            if let Some(moved) = self.subscribed.get(i) {
                self.position.insert(*moved, i);
            }
            self.carrier.remove(&token);
        }
    }
}

struct Gen {
    world: Mutex<World>,
    counters: Counters,
    trades_log: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
    event: Value,
    market: Value,
    seed: u64,
}

type Shared = Arc<Gen>;

fn market_json(g: &Gen, n: u64, closed: bool) -> Value {
    let mut m = g.market.clone();
    m["id"] = json!(format!("{}", 700_000 + n));
    m["conditionId"] = json!(condition(n));
    m["slug"] = json!(format!("market-{n}"));
    m["question"] = json!(format!("Will thing {n} happen?"));
    m["createdAt"] = json!(format!("2026-10-01T00:00:00.{:06}Z", n % 1_000_000));
    m["clobTokenIds"] = json!(format!("[\"{}\", \"{}\"]", token_id(n, 0), token_id(n, 1)));
    m["volume"] = json!(format!("{n}.5"));
    m["outcomePrices"] = json!("[\"0.345\", \"0.655\"]");
    m["closed"] = json!(closed);
    m["active"] = json!(!closed);
    m.as_object_mut().unwrap().remove("events");
    m
}

fn event_json(g: &Gen, n: u64, closed: bool) -> Value {
    let mut ev = g.event.clone();
    ev["id"] = json!(format!("{}", 90_000 + n));
    ev["slug"] = json!(format!("event-{n}"));
    ev["title"] = json!(format!("Event {n}"));
    ev["closed"] = json!(closed);
    ev["markets"] = json!([market_json(g, n, closed)]);
    ev
}

fn json_response(v: Value) -> Response {
    let mut r = v.to_string().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

type Params = Vec<(String, String)>;

fn param<'a>(p: &'a Params, k: &str) -> Option<&'a str> {
    p.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
}

/// Keyset paging over market numbers `range` (a cursor is the next offset in it).
#[allow(clippy::result_large_err)] // the error is the handler's own answer (an axum response), returned at once
fn page(p: &Params, total: u64, max: u64) -> Result<(u64, u64, Option<String>), Response> {
    let limit = param(p, "limit").and_then(|l| l.parse().ok()).unwrap_or(20u64).min(max);
    let start = match param(p, "after_cursor") {
        Some(c) => c
            .strip_prefix("ks1.")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| (StatusCode::BAD_REQUEST, "invalid cursor").into_response())?,
        None => 0,
    };
    let end = (start + limit).min(total);
    Ok((start, end, (end < total).then(|| format!("ks1.{end}"))))
}

async fn events_keyset(State(g): State<Shared>, Query(p): Query<Params>) -> Response {
    g.counters.gamma_requests.fetch_add(1, Ordering::Relaxed);
    let (first_open, markets) = {
        let w = g.world.lock().unwrap();
        (w.first_open, w.markets)
    };
    let closed = param(&p, "closed") == Some("true");
    let (base, total) = if closed { (0, first_open) } else { (first_open, markets - first_open) };
    let (start, end, next) = match page(&p, total, 500) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let events: Vec<Value> = (start..end).map(|i| event_json(&g, base + i, closed)).collect();
    let mut body = json!({ "events": events });
    if let Some(n) = next {
        body["next_cursor"] = json!(n);
    }
    json_response(body)
}

async fn markets_keyset(State(g): State<Shared>, Query(p): Query<Params>) -> Response {
    g.counters.gamma_requests.fetch_add(1, Ordering::Relaxed);
    let (first_open, markets) = {
        let w = g.world.lock().unwrap();
        (w.first_open, w.markets)
    };
    let ids: Vec<u64> = p.iter().filter(|(k, _)| k == "id").filter_map(|(_, v)| v.parse::<u64>().ok()?.checked_sub(700_000)).collect();
    if !ids.is_empty() {
        let list: Vec<Value> = ids.into_iter().filter(|n| *n < markets).map(|n| market_json(&g, n, n < first_open)).collect();
        return json_response(json!({ "markets": list }));
    }
    // Newest first (the new-markets pass), open ones only.
    let closed = param(&p, "closed") == Some("true");
    let total = if closed { first_open } else { markets - first_open };
    let (start, end, next) = match page(&p, total, 100) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let newest_first = param(&p, "ascending") == Some("false");
    let list: Vec<Value> = (start..end)
        .map(|i| {
            let n = if closed {
                i
            } else if newest_first {
                markets - 1 - i
            } else {
                first_open + i
            };
            market_json(&g, n, closed)
        })
        .collect();
    let mut body = json!({ "markets": list });
    if let Some(n) = next {
        body["next_cursor"] = json!(n);
    }
    json_response(body)
}

/// A book as deep as upstream's: every tick from the mid out, 3–57 levels a side (a captured
/// book had 7 bids and 57 asks), capped by the price range.
fn book_json(token: &str, market: u64, ts: u64, seq: u64) -> Value {
    let mid = 5 + market % 90;
    let (bid_depth, ask_depth) = (3 + (market * 13) % 55, 3 + (market * 29) % 55);
    let bids: Vec<Value> = (1..=bid_depth.min(mid - 1))
        .rev()
        .map(|k| json!({"price": format!("0.{:02}", mid - k), "size": format!("{}", 100 * k + seq % 97)}))
        .collect();
    let asks: Vec<Value> = (1..=ask_depth.min(99 - mid))
        .rev()
        .map(|k| json!({"price": format!("0.{:02}", mid + k), "size": format!("{}.5", 90 * k)}))
        .collect();
    json!({"event_type": "book", "market": condition(market), "asset_id": token, "timestamp": ts.to_string(),
           "hash": format!("{:040x}", seq), "bids": bids, "asks": asks})
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn books(State(g): State<Shared>, body: Bytes) -> Response {
    g.counters.books_requests.fetch_add(1, Ordering::Relaxed);
    let Ok(Value::Array(wanted)) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "Invalid payload").into_response();
    };
    if wanted.len() > 500 {
        return (StatusCode::PAYLOAD_TOO_LARGE, "too many token ids").into_response();
    }
    let ts = now_ms();
    let out: Vec<Value> = wanted
        .iter()
        .filter_map(|w| {
            let t = w["token_id"].as_str()?;
            let (m, _) = token_of(t)?;
            let mut b = book_json(t, m, ts - ts % 60_000, m);
            b.as_object_mut().unwrap().remove("event_type");
            Some(b)
        })
        .collect();
    json_response(Value::Array(out))
}

async fn trades_v2(State(g): State<Shared>, Query(p): Query<Params>) -> Response {
    g.counters.data_requests.fetch_add(1, Ordering::Relaxed);
    let wanted: HashSet<&str> = param(&p, "condition").map(|c| c.split(',').collect()).unwrap_or_default();
    let rows: Vec<Value> = {
        let w = g.world.lock().unwrap();
        w.trades.iter().rev().filter(|t| wanted.is_empty() || wanted.contains(t["condition_id"].as_str().unwrap_or(""))).cloned().collect()
    };
    let (start, limit) = match param(&p, "cursor") {
        Some(c) => {
            let mut it = c.split(':');
            (it.next().and_then(|x| x.parse().ok()).unwrap_or(0usize), it.next().and_then(|x| x.parse().ok()).unwrap_or(500usize))
        }
        None => (0, param(&p, "limit").and_then(|l| l.parse().ok()).unwrap_or(100usize)),
    };
    let end = (start + limit).min(rows.len());
    let next = (end < rows.len()).then(|| format!("{end}:{limit}"));
    json_response(
        json!({"data": rows[start.min(end)..end], "pagination": {"limit": limit, "has_more": next.is_some(), "next_cursor": next}}),
    )
}

async fn stats(State(g): State<Shared>) -> Response {
    let c = &g.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let w = g.world.lock().unwrap();
    json_response(json!({
        "markets": w.markets, "open_markets": w.markets - w.first_open, "rate": w.rate,
        "connections": w.conns.len(), "subscribed_assets": w.subscribed.len(),
        "sent": {"price_change": get(&c.price_change), "level_changes": get(&c.level_changes), "last_trade_price": get(&c.last_trade_price),
                 "best_bid_ask": get(&c.best_bid_ask), "book": get(&c.book), "tick_size_change": get(&c.tick_size_change),
                 "new_market": get(&c.new_market), "market_resolved": get(&c.market_resolved)},
        "frames": get(&c.frames), "handshakes": get(&c.handshakes), "refused_429": get(&c.refused),
        "requests": {"gamma": get(&c.gamma_requests), "books": get(&c.books_requests), "data": get(&c.data_requests)},
    }))
}

async fn control(State(g): State<Shared>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else { return (StatusCode::BAD_REQUEST, "not JSON").into_response() };
    let mut w = g.world.lock().unwrap();
    if let Some(m) = v["markets"].as_u64() {
        // Grows the open universe to `m` open markets (never shrinks it).
        let open = w.markets - w.first_open;
        if m > open {
            w.markets += m - open;
        }
    }
    if let Some(r) = v["rate"].as_u64() {
        w.rate = r;
    }
    if let Some(s) = v["churn_secs"].as_u64() {
        w.churn_secs = s;
    }
    json_response(json!({"markets": w.markets, "open_markets": w.markets - w.first_open, "rate": w.rate}))
}

async fn ws_handler(State(g): State<Shared>, upgrade: WebSocketUpgrade) -> Response {
    {
        let mut w = g.world.lock().unwrap();
        let now = Instant::now();
        if now.duration_since(w.handshake_window.0) >= Duration::from_secs(1) {
            w.handshake_window = (now, 0);
        }
        w.handshake_window.1 += 1;
        let limit = HANDSHAKES.load(Ordering::Relaxed);
        if w.handshake_window.1 > limit {
            g.counters.refused.fetch_add(1, Ordering::Relaxed);
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").into_response();
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return r;
        }
    }
    g.counters.handshakes.fetch_add(1, Ordering::Relaxed);
    upgrade.on_upgrade(move |socket| serve_ws(g, socket))
}

static HANDSHAKES: AtomicU64 = AtomicU64::new(50);

/// The assets of a subscription frame (token numbers).
fn tokens(v: &Value) -> Vec<u64> {
    v["assets_ids"].as_array().map(|a| a.iter().filter_map(|t| token_of(t.as_str()?).map(|(m, o)| m * 2 + o)).collect()).unwrap_or_default()
}

fn dump(g: &Gen, tokens: &[u64]) -> Option<String> {
    let ts = now_ms();
    let books: Vec<Value> = tokens.iter().map(|t| book_json(&token_id(t / 2, t % 2), t / 2, ts, *t)).collect();
    g.counters.book.fetch_add(books.len() as u64, Ordering::Relaxed);
    (!books.is_empty()).then(|| Value::Array(books).to_string())
}

async fn serve_ws(g: Shared, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let id = {
        let mut w = g.world.lock().unwrap();
        w.next_conn += 1;
        let id = w.next_conn;
        w.conns.insert(id, Conn { tx, assets: HashSet::new() });
        id
    };
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(frame) => {
                    g.counters.frames.fetch_add(1, Ordering::Relaxed);
                    if socket.send(Message::Text(frame.into())).await.is_err() { break; }
                }
                None => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "PING" {
                        if socket.send(Message::Text("PONG".into())).await.is_err() { break; }
                        continue;
                    }
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    let list = tokens(&v);
                    let subscribe = v["type"] == "market" || v["operation"] == "subscribe";
                    let frame = {
                        let mut w = g.world.lock().unwrap();
                        for t in &list {
                            if subscribe {
                                w.subscribe(id, *t);
                                w.conns.get_mut(&id).unwrap().assets.insert(*t);
                            } else if v["operation"] == "unsubscribe" {
                                w.unsubscribe(*t);
                                w.conns.get_mut(&id).unwrap().assets.remove(t);
                            }
                        }
                        if subscribe { dump(&g, &list) } else { None }
                    };
                    if let Some(f) = frame {
                        if socket.send(Message::Text(f.into())).await.is_err() { break; }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut w = g.world.lock().unwrap();
    if let Some(c) = w.conns.remove(&id) {
        for t in c.assets {
            if w.carrier.get(&t) == Some(&id) {
                w.unsubscribe(t);
            }
        }
    }
}

/// The event pump: every 10 ms, the rate's share of events over the subscribed assets, one
/// array frame per connection per tick.
async fn pump(g: Shared) {
    let mut rng = fastrand::Rng::with_seed(g.seed);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (mut carry, mut seq, mut last_churn) = (0f64, 0u64, Instant::now());
    loop {
        tick.tick().await;
        let ts = now_ms();
        let mut frames: HashMap<u64, Vec<String>> = HashMap::new();
        let mut churned: Vec<String> = Vec::new();
        {
            let mut w = g.world.lock().unwrap();
            if w.churn_secs > 0 && last_churn.elapsed() >= Duration::from_secs(w.churn_secs) && w.markets > w.first_open + 1 {
                last_churn = Instant::now();
                let (old, new) = (w.first_open, w.markets);
                w.first_open += 1;
                w.markets += 1;
                churned.push(
                    json!({"event_type": "market_resolved", "id": format!("{}", 700_000 + old), "market": condition(old),
                    "assets_ids": [token_id(old, 0), token_id(old, 1)], "winning_asset_id": token_id(old, 0), "winning_outcome": "Yes",
                    "timestamp": ts.to_string()})
                    .to_string(),
                );
                churned.push(
                    json!({"event_type": "new_market", "id": format!("{}", 700_000 + new), "market": condition(new),
                    "condition_id": condition(new), "question": format!("Will thing {new} happen?"), "slug": format!("market-{new}"),
                    "assets_ids": [token_id(new, 0), token_id(new, 1)], "outcomes": ["Yes", "No"], "timestamp": ts.to_string()})
                    .to_string(),
                );
                g.counters.market_resolved.fetch_add(1, Ordering::Relaxed);
                g.counters.new_market.fetch_add(1, Ordering::Relaxed);
            }
            carry += w.rate as f64 / 100.0;
            let n = carry as u64;
            carry -= n as f64;
            if w.subscribed.is_empty() {
                continue;
            }
            let mut trades = Vec::new();
            for _ in 0..n {
                let token = w.subscribed[rng.usize(..w.subscribed.len())];
                let conn = w.carrier[&token];
                let (m, o) = (token / 2, token % 2);
                let asset = token_id(m, o);
                let cond = condition(m);
                seq += 1;
                let mid = 5 + (m + seq / 50) % 90;
                let roll = rng.u32(0..1000);
                let ev = if roll < 880 {
                    g.counters.price_change.fetch_add(1, Ordering::Relaxed);
                    g.counters.level_changes.fetch_add(2, Ordering::Relaxed);
                    let off = rng.u64(0..6);
                    let size = if rng.u8(0..5) == 0 { "0".to_string() } else { format!("{}.{:02}", rng.u32(1..20000), rng.u32(0..100)) };
                    format!(
                        r#"{{"event_type":"price_change","market":"{cond}","timestamp":"{ts}","price_changes":[{{"asset_id":"{a}","price":"0.{p:02}","size":"{size}","side":"BUY","hash":"{h1:040x}","best_bid":"0.{mid:02}","best_ask":"0.{ask:02}"}},{{"asset_id":"{b}","price":"0.{q:02}","size":"{size}","side":"SELL","hash":"{h2:040x}","best_bid":"0.{bid2:02}","best_ask":"0.{ask2:02}"}}]}}"#,
                        a = token_id(m, 0),
                        b = token_id(m, 1),
                        p = mid.saturating_sub(off).max(1),
                        q = (100 - mid + off).min(99),
                        ask = (mid + 1).min(99),
                        bid2 = 99 - mid,
                        ask2 = (100 - mid).min(99),
                        h1 = seq * 2,
                        h2 = seq * 2 + 1,
                    )
                } else if roll < 930 {
                    g.counters.last_trade_price.fetch_add(1, Ordering::Relaxed);
                    let size = format!("{}.{:06}", rng.u32(1..500), rng.u32(0..1_000_000));
                    let side = if rng.bool() { "BUY" } else { "SELL" };
                    let tx = format!("0x{:064x}", seq);
                    trades.push(json!({"proxy_wallet": "0x1111111111111111111111111111111111111111", "side": side, "token_id": asset,
                        "condition_id": cond, "size": size.parse::<f64>().unwrap(), "price": format!("0.{mid:02}").parse::<f64>().unwrap(),
                        "timestamp": ts / 1000, "outcome": "Yes", "outcome_index": o, "transaction_hash": tx, "size_text": size, "ts_ms": ts}));
                    format!(
                        r#"{{"event_type":"last_trade_price","market":"{cond}","asset_id":"{asset}","price":"0.{mid:02}","size":"{size}","side":"{side}","fee_rate_bps":"0","timestamp":"{ts}","transaction_hash":"{tx}"}}"#
                    )
                } else if roll < 990 {
                    g.counters.best_bid_ask.fetch_add(1, Ordering::Relaxed);
                    format!(
                        r#"{{"event_type":"best_bid_ask","market":"{cond}","asset_id":"{asset}","best_bid":"0.{mid:02}","best_ask":"0.{a:02}","spread":"0.01","timestamp":"{ts}"}}"#,
                        a = (mid + 1).min(99)
                    )
                } else if roll < 999 {
                    g.counters.book.fetch_add(1, Ordering::Relaxed);
                    book_json(&asset, m, ts, seq).to_string()
                } else {
                    g.counters.tick_size_change.fetch_add(1, Ordering::Relaxed);
                    format!(
                        r#"{{"event_type":"tick_size_change","market":"{cond}","asset_id":"{asset}","old_tick_size":"0.01","new_tick_size":"0.01","timestamp":"{ts}"}}"#
                    )
                };
                frames.entry(conn).or_default().push(ev);
            }
            for (conn, events) in frames.drain() {
                if let Some(c) = w.conns.get(&conn) {
                    let _ = c.tx.send(format!("[{}]", events.join(",")));
                }
            }
            if !churned.is_empty() {
                for c in w.conns.values() {
                    for e in &churned {
                        let _ = c.tx.send(e.clone());
                    }
                }
            }
            if let Some(log) = &g.trades_log {
                let mut log = log.lock().unwrap();
                for t in &trades {
                    let _ = writeln!(
                        log,
                        "{}",
                        json!({"asset_id": t["token_id"], "size": t["size_text"], "ts_ms": t["ts_ms"], "tx": t["transaction_hash"]})
                    );
                }
            }
            w.trades.extend(trades);
            while w.trades.len() > 2_000_000 {
                w.trades.pop_front();
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    HANDSHAKES.store(a.handshakes_per_sec, Ordering::Relaxed);
    let trades_log = a.trades_log.as_ref().map(|p| Mutex::new(std::io::BufWriter::new(std::fs::File::create(p).expect("the trades log"))));
    let event: Value = serde_json::from_str(EVENT).unwrap();
    let market = serde_json::from_str::<Value>(MARKETS_PAGE).unwrap()["markets"][0].clone();
    let g = Arc::new(Gen {
        world: Mutex::new(World {
            first_open: 0,
            markets: a.markets,
            rate: a.rate,
            churn_secs: a.churn_secs,
            conns: HashMap::new(),
            subscribed: Vec::new(),
            position: HashMap::new(),
            carrier: HashMap::new(),
            trades: VecDeque::new(),
            next_conn: 0,
            handshake_window: (Instant::now(), 0),
        }),
        counters: Counters::default(),
        trades_log,
        event,
        market,
        seed: a.seed,
    });
    let app = Router::new()
        .route("/events/keyset", get(events_keyset))
        .route("/markets/keyset", get(markets_keyset))
        .route("/books", post(books))
        .route("/v2/trades", get(trades_v2))
        .route("/ws/market", get(ws_handler))
        .route("/stats", get(stats))
        .route("/control", post(control))
        .with_state(g.clone());
    let listener = tokio::net::TcpListener::bind(a.listen).await.expect("bind");
    println!("listening on {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    tokio::spawn(pump(g.clone()));
    // Flush the trades log every second.
    let gl = g.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(log) = &gl.trades_log {
                let _ = log.lock().unwrap().flush();
            }
        }
    });
    axum::serve(listener, app).await.unwrap();
}
