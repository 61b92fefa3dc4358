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

/// Requests in flight at once; the request budget still bounds the rate.
const CONCURRENCY: usize = 4;

pub struct BooksCollector {
    client: Arc<PolymarketClient>,
    pool: Pool,
    cfg: BooksConfig,
    /// Last `(source_ts, hash)` stored per token, to skip unchanged books before the database.
    last: HashMap<String, (DateTime<Utc>, String)>,
    /// Books upstream sent that could not be decoded.
    pub bad_books: Arc<AtomicU64>,
}

impl BooksCollector {
    pub fn new(client: Arc<PolymarketClient>, pool: Pool, cfg: BooksConfig) -> Self {
        BooksCollector { client, pool, cfg, last: HashMap::new(), bad_books: Arc::default() }
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
            db::catalog::active_token_ids(&*conn).await?
        };
        // Forget tokens no longer polled, so the map stays the size of the active set.
        let active: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
        self.last.retain(|t, _| active.contains(t.as_str()));

        let batches: Vec<Vec<String>> = tokens.chunks(self.cfg.batch_size as usize).map(<[String]>::to_vec).collect();
        let this = &*self;
        let mut results = futures_util::stream::iter(batches)
            .map(move |batch: Vec<String>| async move { (this.fetch(&batch).await, crate::clock::now()) })
            .buffer_unordered(CONCURRENCY);
        let mut fresh: Vec<(Book, DateTime<Utc>)> = Vec::new();
        let mut first_error = None;
        let mut seen_now: HashMap<String, (DateTime<Utc>, String)> = HashMap::new();
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
                        let key = (book.source_ts, book.hash.clone());
                        let unchanged = this.last.get(&book.token_id) == Some(&key) || seen_now.get(&book.token_id) == Some(&key);
                        if !unchanged {
                            seen_now.insert(book.token_id.clone(), key);
                            fresh.push((book, received_at));
                        }
                    }
                    Err(e) => {
                        this.bad_books.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(collector = "books", error = %e, "undecodable book skipped");
                    }
                }
            }
        }
        drop(results);
        let mut stored = 0;
        let conn = self.pool.get().await?;
        for chunk in fresh.chunks(1000) {
            stored += db::books::insert_snapshots(&*conn, chunk, BookSource::Rest).await?;
        }
        drop(conn);
        self.last.extend(seen_now);
        match first_error {
            // Books fetched before the failure are stored; the pass still reports the error.
            Some(e) => Err(e),
            None => Ok(stored),
        }
    }
}
