//! An in-process fake Polymarket (Gamma and CLOB REST) on `127.0.0.1:0`, speaking the
//! documented protocol with its quirks: keyset paging with `after_cursor` (a `cursor=`
//! parameter is silently ignored and returns page 1 again), 422 on deep legacy offsets, and
//! scripted misbehaviours per route (429 with `Retry-After`, 5xx, an HTML 403 page, malformed
//! JSON).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// One scripted misbehaviour, served instead of the next normal answer of a route.
#[derive(Debug, Clone)]
pub enum Fault {
    TooManyRequests { retry_after_secs: Option<u64> },
    ServerError,
    CloudflareHtml,
    MalformedJson,
}

#[derive(Default)]
pub struct FakeState {
    /// Full events, each with its `markets` array (what `/events/keyset` serves).
    pub events: Vec<Value>,
    /// token id → book (what `POST /books` serves).
    pub books: HashMap<String, Value>,
    pub faults: HashMap<&'static str, VecDeque<Fault>>,
    /// Requests served per route, faults included.
    pub hits: HashMap<&'static str, u64>,
    /// Query strings seen per route, in order.
    pub queries: HashMap<&'static str, Vec<String>>,
    /// Largest `POST /books` batch accepted; larger ones get 413.
    pub max_books_batch: usize,
    /// Data API trades (v2 row shape), newest first as served.
    pub trades: Vec<Value>,
    /// The v2 route answers 404 (retired), so clients must use v1.
    pub v2_retired: bool,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

impl Fake {
    pub async fn start() -> Fake {
        let state = Arc::new(Mutex::new(FakeState { max_books_batch: 500, ..Default::default() }));
        let app = Router::new()
            .route("/events/keyset", get(events_keyset))
            .route("/markets/keyset", get(markets_keyset))
            .route("/markets", get(legacy_markets))
            .route("/books", post(books))
            .route("/v2/trades", get(trades_v2))
            .route("/trades", get(trades_v1))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn push_fault(&self, route: &'static str, fault: Fault) {
        self.with(|s| s.faults.entry(route).or_default().push_back(fault));
    }

    pub fn hits(&self, route: &'static str) -> u64 {
        self.with(|s| s.hits.get(route).copied().unwrap_or(0))
    }

    /// Every market of every event.
    pub fn markets(&self) -> Vec<Value> {
        self.with(|s| all_markets(&s.events))
    }

    /// Applies `f` to the market with `id` wherever it appears.
    pub fn update_market(&self, id: &str, f: impl Fn(&mut Value)) {
        self.with(|s| {
            for e in &mut s.events {
                for m in e["markets"].as_array_mut().unwrap() {
                    if m["id"] == id {
                        f(m);
                    }
                }
            }
        });
    }
}

fn all_markets(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .flat_map(|e| {
            let stub = json!({"id": e["id"], "slug": e["slug"], "title": e["title"]});
            e["markets"].as_array().unwrap().iter().map(move |m| {
                let mut m = m.clone();
                m["events"] = json!([stub.clone()]);
                m
            })
        })
        .collect()
}

type Params = Vec<(String, String)>;

fn param<'a>(p: &'a Params, key: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Counts the request and serves the route's next fault, if any.
fn enter(state: &Mutex<FakeState>, route: &'static str, query: String) -> Option<Response> {
    let mut s = state.lock().unwrap();
    *s.hits.entry(route).or_default() += 1;
    s.queries.entry(route).or_default().push(query);
    let fault = s.faults.get_mut(route).and_then(VecDeque::pop_front)?;
    Some(match fault {
        Fault::TooManyRequests { retry_after_secs } => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": "rate_limited", "code": "rate_limited", "retryable": true})))
                .into_response();
            if let Some(secs) = retry_after_secs {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            r
        }
        Fault::ServerError => (StatusCode::BAD_GATEWAY, "upstream connect error").into_response(),
        Fault::CloudflareHtml => {
            let mut r = (
                StatusCode::FORBIDDEN,
                "<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title></head>\
                 <body>Sorry, you have been blocked</body></html>",
            )
                .into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=UTF-8"));
            r.headers_mut().insert("cf-ray", HeaderValue::from_static("8f00000000000000-FRA"));
            r
        }
        Fault::MalformedJson => {
            let mut r = (StatusCode::OK, "{\"events\": [{\"id\": \"1\", \"ti").into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
    })
}

struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        let mut r = self.0.to_string().into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    }
}

fn query_string(p: &Params) -> String {
    p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// Keyset paging over `items`: the cursor encodes the next offset. Only `after_cursor` is
/// honoured; `cursor=` is ignored like upstream does (page 1 again, same `next_cursor`).
fn keyset(items: &[&Value], p: &Params, key: &str, max_limit: usize) -> Response {
    if param(p, "offset").is_some() {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": "offset not supported on keyset endpoints"}))).into_response();
    }
    let limit = param(p, "limit").and_then(|l| l.parse().ok()).unwrap_or(20usize).min(max_limit);
    let start = match param(p, "after_cursor") {
        Some(c) => match c.strip_prefix("ks1.").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid cursor"}))).into_response(),
        },
        None => 0,
    };
    let end = (start + limit).min(items.len());
    let page: Vec<&Value> = items.get(start..end).unwrap_or(&[]).to_vec();
    let mut body = json!({ key: page });
    if end < items.len() {
        body["next_cursor"] = json!(format!("ks1.{end}"));
    }
    Json(body).into_response()
}

fn closed_filter(p: &Params, item: &Value) -> bool {
    match param(p, "closed") {
        Some("true") => item["closed"] == true,
        Some("false") => item["closed"] != true,
        _ => true,
    }
}

async fn events_keyset(State(state): State<Arc<Mutex<FakeState>>>, Query(p): Query<Params>) -> Response {
    if let Some(r) = enter(&state, "events/keyset", query_string(&p)) {
        return r;
    }
    let s = state.lock().unwrap();
    let events: Vec<&Value> = s.events.iter().filter(|e| closed_filter(&p, e)).collect();
    keyset(&events, &p, "events", 500)
}

async fn markets_keyset(State(state): State<Arc<Mutex<FakeState>>>, Query(p): Query<Params>) -> Response {
    if let Some(r) = enter(&state, "markets/keyset", query_string(&p)) {
        return r;
    }
    let ids: Vec<&str> = p.iter().filter(|(k, _)| k == "id").map(|(_, v)| v.as_str()).collect();
    let mut markets: Vec<Value> = {
        let s = state.lock().unwrap();
        all_markets(&s.events)
            .into_iter()
            .filter(|m| closed_filter(&p, m))
            .filter(|m| ids.is_empty() || ids.contains(&m["id"].as_str().unwrap_or("")))
            .collect()
    };
    if param(&p, "order") == Some("createdAt") {
        markets.sort_by(|a, b| a["createdAt"].as_str().cmp(&b["createdAt"].as_str()));
        if param(&p, "ascending") == Some("false") {
            markets.reverse();
        }
    }
    let refs: Vec<&Value> = markets.iter().collect();
    keyset(&refs, &p, "markets", 100)
}

/// Legacy offset listing: deep offsets are refused like upstream does since 2026.
async fn legacy_markets(State(state): State<Arc<Mutex<FakeState>>>, Query(p): Query<Params>) -> Response {
    if let Some(r) = enter(&state, "markets", query_string(&p)) {
        return r;
    }
    let offset: usize = param(&p, "offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    if offset > 2000 {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": "offset too large, use /markets/keyset for deeper pagination"})))
            .into_response();
    }
    let limit: usize = param(&p, "limit").and_then(|l| l.parse().ok()).unwrap_or(20);
    let markets = all_markets(&state.lock().unwrap().events);
    Json(Value::Array(markets.into_iter().skip(offset).take(limit).collect())).into_response()
}

async fn books(State(state): State<Arc<Mutex<FakeState>>>, _h: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = enter(&state, "books", String::new()) {
        return r;
    }
    let Ok(Value::Array(wanted)) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "Invalid payload"}))).into_response();
    };
    let s = state.lock().unwrap();
    if wanted.len() > s.max_books_batch {
        return (StatusCode::PAYLOAD_TOO_LARGE, Json(json!({"error": "too many token ids"}))).into_response();
    }
    let mut out = Vec::new();
    for w in &wanted {
        let Some(token) = w["token_id"].as_str().filter(|t| t.bytes().all(|b| b.is_ascii_digit())) else {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": "Invalid token id"}))).into_response();
        };
        if let Some(b) = s.books.get(token) {
            out.push(b.clone());
        }
    }
    Json(Value::Array(out)).into_response()
}

fn trades_for(s: &FakeState, conditions: Option<&str>) -> Vec<Value> {
    let wanted: Option<Vec<&str>> = conditions.map(|c| c.split(',').collect());
    let mut rows: Vec<Value> = s
        .trades
        .iter()
        .filter(|t| wanted.as_ref().is_none_or(|w| w.contains(&t["condition_id"].as_str().unwrap_or(""))))
        .cloned()
        .collect();
    rows.sort_by_key(|t| std::cmp::Reverse(t["timestamp"].as_i64().unwrap_or(0)));
    rows
}

/// Data API v2: `{data, pagination}`, cursor paging, newest first, `limit` on the first page.
async fn trades_v2(State(state): State<Arc<Mutex<FakeState>>>, Query(p): Query<Params>) -> Response {
    if let Some(r) = enter(&state, "v2/trades", query_string(&p)) {
        return r;
    }
    let s = state.lock().unwrap();
    if s.v2_retired {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "not found", "code": "not_found", "retryable": false}))).into_response();
    }
    let rows = trades_for(&s, param(&p, "condition"));
    let (start, limit) = match param(&p, "cursor") {
        Some(c) => {
            let mut it = c.split(':');
            (it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap())
        }
        None => (0usize, param(&p, "limit").and_then(|l| l.parse().ok()).unwrap_or(100usize)),
    };
    let end = (start + limit).min(rows.len());
    let next = (end < rows.len()).then(|| format!("{end}:{limit}"));
    Json(json!({"data": rows[start.min(end)..end], "pagination": {"limit": limit, "has_more": next.is_some(), "next_cursor": next}}))
        .into_response()
}

/// Data API v1: bare camelCase array, offset paging, `start`/`end` in seconds.
async fn trades_v1(State(state): State<Arc<Mutex<FakeState>>>, Query(p): Query<Params>) -> Response {
    if let Some(r) = enter(&state, "trades", query_string(&p)) {
        return r;
    }
    let s = state.lock().unwrap();
    let num = |k: &str| param(&p, k).and_then(|v| v.parse::<i64>().ok());
    let rows: Vec<Value> = trades_for(&s, param(&p, "market"))
        .into_iter()
        .filter(|t| num("start").is_none_or(|st| t["timestamp"].as_i64().unwrap() >= st))
        .filter(|t| num("end").is_none_or(|en| t["timestamp"].as_i64().unwrap() <= en))
        .map(|t| {
            json!({"asset": t["token_id"], "conditionId": t["condition_id"], "side": t["side"],
            "size": t["size"], "price": t["price"], "timestamp": t["timestamp"], "transactionHash": t["transaction_hash"]})
        })
        .collect();
    let offset = num("offset").unwrap_or(0) as usize;
    let limit = num("limit").unwrap_or(100) as usize;
    Json(Value::Array(rows.into_iter().skip(offset).take(limit).collect())).into_response()
}

/// A Data API v2 trade row; `price` and `size` are raw JSON number text (floats upstream).
pub fn data_trade(asset: &str, condition: &str, price: &str, size: &str, side: &str, ts_secs: i64, tx: &str) -> Value {
    serde_json::from_str(&format!(
        r#"{{"proxy_wallet": "0x1111111111111111111111111111111111111111", "side": "{side}", "token_id": "{asset}",
            "condition_id": "{condition}", "size": {size}, "price": {price}, "timestamp": {ts_secs},
            "outcome": "Yes", "outcome_index": 0, "transaction_hash": "{tx}"}}"#
    ))
    .unwrap()
}

// ---- data builders -------------------------------------------------------------------------

/// One of the project's fixtures (`tests/fixtures/polymarket/`, written from the documented
/// upstream shapes).
pub fn fixture(rel: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/polymarket/");
    let text = std::fs::read_to_string(format!("{path}{rel}")).expect("fixture under tests/fixtures");
    serde_json::from_str(&text).unwrap()
}

/// A 77-digit token id, distinct per `(market, outcome)`.
pub fn token_id(market: u64, outcome: u64) -> String {
    format!("{:077}", market * 10 + outcome + 10u64.pow(15))
}

/// Market `n`, shaped like the keyset fixture, with exact decimals that `f64` would spoil.
pub fn market(n: u64) -> Value {
    let mut m = fixture("gamma_markets_keyset_page.json")["markets"][0].clone();
    m["id"] = json!(format!("{}", 700_000 + n));
    m["conditionId"] = json!(format!("0x{:064x}", n + 1));
    m["slug"] = json!(format!("market-{n}"));
    m["question"] = json!(format!("Will thing {n} happen?"));
    m["createdAt"] = json!(format!("2026-10-01T00:00:00.{:06}Z", n % 1_000_000));
    m["clobTokenIds"] = json!(format!("[\"{}\", \"{}\"]", token_id(n, 0), token_id(n, 1)));
    m["volume"] = json!(format!("{n}.000000000000000001"));
    m["outcomePrices"] = json!("[\"0.345\", \"0.655\"]");
    m.as_object_mut().unwrap().remove("events");
    m
}

/// Event `e` holding markets `e*per .. e*per+per`.
pub fn event(e: u64, per: u64) -> Value {
    let mut ev = fixture("gamma_event.json");
    ev["id"] = json!(format!("{}", 90_000 + e));
    ev["slug"] = json!(format!("event-{e}"));
    ev["title"] = json!(format!("Event {e}"));
    ev["markets"] = Value::Array((e * per..e * per + per).map(market).collect());
    ev
}

/// A book for `token` shaped like the REST fixture (bids ascending, asks descending).
pub fn book(token: &str, ts_ms: u64, hash: &str) -> Value {
    let mut b = fixture("clob_book.json");
    b["asset_id"] = json!(token);
    b["timestamp"] = json!(ts_ms.to_string());
    b["hash"] = json!(hash);
    b
}

/// Gives every token of every market a book.
pub fn books_for_all(fake: &Fake, ts_ms: u64) {
    let tokens: Vec<String> = fake
        .markets()
        .iter()
        .flat_map(|m| collector::polymarket::decode::string_array(m, "clobTokenIds").unwrap().unwrap_or_default())
        .collect();
    fake.with(|s| {
        for t in tokens {
            let b = book(&t, ts_ms, &format!("{:040x}", ts_ms));
            s.books.insert(t, b);
        }
    });
}
