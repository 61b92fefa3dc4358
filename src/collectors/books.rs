//! `books`: `POST /books` in batches for every token of every open market, storing a snapshot
//! only when `(token_id, source_ts, hash)` is new.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::Value;

use super::{CollectError, Collector};
use crate::config::BooksConfig;
use crate::db::books::BookSource;
use crate::db::{self, Pool};
use crate::polymarket::client::{ClientError, PolymarketClient, Route};
use crate::polymarket::clob::{self, Book};
use crate::slice::Slice;

/// Requests in flight at once; the request budget still bounds the rate.
const CONCURRENCY: usize = 4;

pub struct BooksCollector {
    client: Arc<PolymarketClient>,
    pool: Pool,
    cfg: BooksConfig,
    /// Last book stored per token, to skip unchanged books before the database: a 64-bit
    /// fingerprint of the token id to one of `(source_ts, hash)`, 16 bytes a token where the
    /// texts were ~200 (the whole universe is ~312,000 tokens).
    last: HashMap<u64, u64>,
    /// Books upstream sent that could not be decoded.
    pub bad_books: Arc<AtomicU64>,
    /// The markets this instance polls (`[stream] shard`).
    slice: Slice,
}

impl BooksCollector {
    pub fn new(client: Arc<PolymarketClient>, pool: Pool, cfg: BooksConfig) -> Self {
        BooksCollector { client, pool, cfg, last: HashMap::new(), bad_books: Arc::default(), slice: Slice::default() }
    }

    /// Polls only the markets of `slice` (`[stream] shard`).
    pub fn with_slice(mut self, slice: Slice) -> Self {
        self.slice = slice;
        self
    }

    /// Fetches the books of `tokens`. A 4xx for the batch (a bad token id, a batch too large)
    /// splits it in halves down to single tokens; a single token's 4xx is logged and skipped.
    async fn fetch(&self, tokens: &[String]) -> Result<Vec<Value>, CollectError> {
        let mut pending = vec![tokens];
        let mut out = Vec::new();
        while let Some(batch) = pending.pop() {
            let body = Value::Array(batch.iter().map(|t| serde_json::json!({ "token_id": t })).collect());
            let url = self.client.clob_url.join("books").expect("static path");
            match self.client.post_json(Route::ClobBooks, url, &body).await {
                Ok(Value::Array(books)) => out.extend(books),
                Ok(other) => {
                    tracing::warn!(collector = "books", body = %truncate(&other.to_string()),
                        "POST /books answered something other than an array");
                    self.bad_books.fetch_add(1, Ordering::Relaxed);
                }
                Err(ClientError::Rejected { status, body, .. }) if batch.len() > 1 => {
                    tracing::warn!(collector = "books", status, body = %body, size = batch.len(),
                        "batch rejected, splitting");
                    let (a, b) = batch.split_at(batch.len() / 2);
                    pending.push(a);
                    pending.push(b);
                }
                Err(ClientError::Rejected { status, body, .. }) => {
                    tracing::warn!(collector = "books", status, body = %body, token_id = %batch[0],
                        "token rejected, skipped");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}

/// Books stored in one go.
const STORE_EVERY: usize = 1000;

async fn store(pool: &Pool, books: &[(Book, DateTime<Utc>)]) -> Result<u64, CollectError> {
    if books.is_empty() {
        return Ok(0);
    }
    let conn = pool.get().await?;
    Ok(db::books::insert_snapshots(&*conn, books, BookSource::Rest).await?)
}

/// A 64-bit fingerprint (the same within a process run; nothing stores it).
fn fingerprint(x: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(x)
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

impl Collector for BooksCollector {
    fn name(&self) -> &'static str {
        "books"
    }

    fn interval(&self) -> Duration {
        self.cfg.interval
    }

    async fn collect_once(&mut self) -> Result<u64, CollectError> {
        let tokens = {
            let conn = self.pool.get().await?;
            db::catalog::active_token_ids(&*conn, self.slice).await?
        };
        // Forget tokens no longer polled, so the map stays the size of the active set.
        let active: std::collections::HashSet<u64> = tokens.iter().map(fingerprint).collect();
        self.last.retain(|t, _| active.contains(t));
        drop(active);

        let (mut tokens, size) = (tokens.into_iter(), self.cfg.batch_size as usize);
        let batches = std::iter::from_fn(move || Some(tokens.by_ref().take(size).collect::<Vec<String>>()).filter(|b| !b.is_empty()));
        let this = &*self;
        let mut results = futures_util::stream::iter(batches)
            .map(move |batch: Vec<String>| async move { (this.fetch(&batch).await, crate::clock::now()) })
            .buffer_unordered(CONCURRENCY);
        // Books are stored as they come, a thousand at a time: a pass over the whole universe
        // never holds more than that in memory.
        let mut fresh: Vec<(Book, DateTime<Utc>)> = Vec::new();
        let mut first_error = None;
        let mut seen_now: HashMap<u64, u64> = HashMap::new();
        let mut stored = 0;
        while let Some((result, received_at)) = results.next().await {
            let raw = match result {
                Ok(r) => r,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            for obj in raw {
                match clob::decode_book(&obj) {
                    Ok(book) => {
                        let (token, key) = (fingerprint(&book.token_id), fingerprint(&(book.source_ts, &book.hash)));
                        let unchanged = this.last.get(&token) == Some(&key) || seen_now.get(&token) == Some(&key);
                        if !unchanged {
                            seen_now.insert(token, key);
                            fresh.push((book, received_at));
                        }
                    }
                    Err(e) => {
                        this.bad_books.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(collector = "books", error = %e, "undecodable book skipped");
                    }
                }
            }
            if fresh.len() >= STORE_EVERY {
                stored += store(&this.pool, &fresh).await?;
                fresh.clear();
            }
        }
        drop(results);
        stored += store(&self.pool, &fresh).await?;
        self.last.extend(seen_now);
        match first_error {
            // Books fetched before the failure are stored; the pass still reports the error.
            Some(e) => Err(e),
            None => Ok(stored),
        }
    }
}
