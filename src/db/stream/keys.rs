//! [`Keys`]: the dictionary keys (`stream_tokens`, `stream_conditions`) and the day partitions
//! this process knows exist, so the hot path copies integers and runs no DDL.

use chrono::NaiveDate;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use super::Row;
use crate::db::catalog::{INSERT_MISSING_CONDITIONS, INSERT_MISSING_TOKENS, SET_MISSING_MARKETS};
use crate::db::{DbError, Pool, partitions};

/// What this process knows exists in the database: the dictionaries' keys (filled by the
/// catalog for every token it stores, and here for any other the stream meets) and the days
/// whose partitions exist. Unknown ids are added, and missing days made, in their own
/// committed statements before the batch's transaction, never inside it: a key is cached only
/// once its dictionary row is durable. One per database, shared by the writer and the
/// backfill.
///
/// Only ids missing from a dictionary are inserted: an `INSERT … ON CONFLICT DO NOTHING` takes
/// a value of the 32-bit key sequence for every row it proposes, conflicting or not, and
/// proposing every id of every batch would spend the keys in weeks (docs/schema.md,
/// "Dictionary keys").
#[derive(Debug, Default)]
pub struct Keys {
    /// Token id → (token key, whether the dictionary knows its market).
    tokens: Mutex<FxHashMap<String, (i32, bool)>>,
    conditions: Mutex<FxHashMap<String, i32>>,
    days: Mutex<BTreeSet<NaiveDate>>,
    /// Held while missing days are made: two writers at once, and two concurrent
    /// `CREATE TABLE IF NOT EXISTS` of one name can fail on PostgreSQL's catalog.
    making_days: tokio::sync::Mutex<()>,
}

impl Keys {
    /// The key of a token resolved before.
    pub(super) fn token(&self, id: &str) -> i32 {
        self.tokens.lock().expect("keys lock").get(id).expect("resolved before the copy").0
    }

    /// The keys of these tokens (resolved before), under one lock: the write tasks share it,
    /// and a lock per row cost more than the lookup.
    pub(super) fn tokens_of<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Vec<i32> {
        let known = self.tokens.lock().expect("keys lock");
        ids.map(|id| known.get(id).expect("resolved before the copy").0).collect()
    }

    fn condition(&self, id: Option<&str>) -> Option<i32> {
        id.map(|c| *self.conditions.lock().expect("keys lock").get(c).expect("resolved before the copy"))
    }

    /// Makes sure every token and market of these rows has a cached key, and every token
    /// whose row names its market has that market in the dictionary.
    pub async fn resolve(&self, pool: &Pool, rows: &[Row]) -> Result<(), DbError> {
        // Ordered sets: each id once, and sorted like the catalog's inserts, so concurrent
        // writers never wait on each other in opposite orders.
        let (mut tokens, mut conditions): (BTreeMap<&str, Option<&str>>, BTreeSet<&str>) = (BTreeMap::new(), BTreeSet::new());
        {
            let (known_t, known_c) = (self.tokens.lock().expect("keys lock"), self.conditions.lock().expect("keys lock"));
            for (token, condition) in rows.iter().filter_map(Row::token) {
                let stale = match known_t.get(token) {
                    None => true,
                    Some((_, has_market)) => !has_market && condition.is_some(),
                };
                if stale {
                    tokens.entry(token).or_insert(condition);
                }
                if let Some(c) = condition.filter(|c| !known_c.contains_key(*c)) {
                    conditions.insert(c);
                }
            }
        }
        if tokens.is_empty() && conditions.is_empty() {
            return Ok(());
        }
        let db = pool.get().await?;
        if !conditions.is_empty() {
            let conditions: Vec<&str> = conditions.into_iter().collect();
            db.execute(INSERT_MISSING_CONDITIONS, &[&conditions]).await?;
            let rows =
                db.query("SELECT condition_id, condition_key FROM stream_conditions WHERE condition_id = ANY($1)", &[&conditions]).await?;
            let mut known = self.conditions.lock().expect("keys lock");
            for r in rows {
                known.insert(r.get(0), r.get(1));
            }
        }
        if !tokens.is_empty() {
            let ids: Vec<&str> = tokens.keys().copied().collect();
            let markets: Vec<Option<i32>> = tokens.values().map(|c| self.condition(*c)).collect();
            db.execute(INSERT_MISSING_TOKENS, &[&ids, &markets]).await?;
            db.execute(SET_MISSING_MARKETS, &[&ids, &markets]).await?;
            let rows = db
                .query("SELECT token_id, token_key, condition_key IS NOT NULL FROM stream_tokens WHERE token_id = ANY($1)", &[&ids])
                .await?;
            let mut known = self.tokens.lock().expect("keys lock");
            for r in rows {
                known.insert(r.get(0), (r.get(1), r.get(2)));
            }
        }
        Ok(())
    }

    /// Makes the partitions of the days of these rows that this process has not seen yet
    /// (today's are made ahead by the maintenance; an older day comes with a replay or a
    /// backfill). The DDL waits for its locks at most `partitions::DDL_LOCK_TIMEOUT`: a
    /// reader holding the parent table makes the batch fail as transient (retried with
    /// backoff), never queues every writer behind it. Only days from yesterday on are
    /// remembered: retention never drops those, while an older day may be dropped (and is then
    /// made again for a late row, and dropped again by the next maintenance).
    pub async fn ensure_days(&self, pool: &Pool, rows: &[Row]) -> Result<(), DbError> {
        let missing: BTreeSet<NaiveDate> = {
            let known = self.days.lock().expect("keys lock");
            rows.iter().filter_map(Row::partition_day).filter(|d| !known.contains(d)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let _making = self.making_days.lock().await;
        let yesterday = crate::clock::today() - chrono::Duration::days(1);
        for day in missing {
            partitions::ensure(pool, day, day).await?;
            if day >= yesterday {
                self.days.lock().expect("keys lock").insert(day);
            }
        }
        Ok(())
    }
}
