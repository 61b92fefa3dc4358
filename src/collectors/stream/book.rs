//! In-memory order books per asset, maintained from `book` snapshots and `price_change`
//! level updates. After a reconnect every asset is unsynced: level changes are withheld until
//! a fresh `book` arrives for it (a change applied to a stale book would be a lie).

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;

use crate::polymarket::clob::Book;
use crate::polymarket::decode::Side;
use crate::polymarket::ws::LevelChange;

#[derive(Debug, Default)]
struct AssetBook {
    synced: bool,
    bids: BTreeMap<Decimal, Decimal>,
    asks: BTreeMap<Decimal, Decimal>,
}

/// What applying a level change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied; the computed top of book agrees with upstream's `best_bid`/`best_ask`.
    Ok,
    /// Applied, but the computed top of book disagrees with upstream's: a missed update.
    Diverged,
    /// Not applied: no fresh book since the (re)connect.
    Withheld,
}

#[derive(Debug, Default)]
pub struct Books {
    assets: HashMap<String, AssetBook>,
}

impl Books {
    /// Replaces the asset's book with a snapshot; the asset is synced from now on.
    pub fn snapshot(&mut self, book: &Book) {
        let parse = |levels: &[crate::polymarket::clob::Level]| {
            levels
                .iter()
                .filter_map(|l| Some((l.price, crate::polymarket::decode::parse_decimal(&l.size_text)?)))
                .filter(|(_, s)| !s.is_zero())
                .collect::<BTreeMap<_, _>>()
        };
        let entry = self.assets.entry(book.token_id.clone()).or_default();
        entry.bids = parse(&book.bids);
        entry.asks = parse(&book.asks);
        entry.synced = true;
    }

    /// Applies one level change: size replaces the level, zero removes it.
    pub fn apply(&mut self, c: &LevelChange) -> Applied {
        let Some(book) = self.assets.get_mut(&c.asset_id).filter(|b| b.synced) else {
            return Applied::Withheld;
        };
        let side = match c.side {
            Side::Buy => &mut book.bids,
            Side::Sell => &mut book.asks,
        };
        if c.size.is_zero() {
            side.remove(&c.price);
        } else {
            side.insert(c.price, c.size);
        }
        let best_bid = book.bids.keys().next_back().copied();
        let best_ask = book.asks.keys().next().copied();
        let agrees = |ours: Option<Decimal>, theirs: Option<Decimal>| theirs.is_none() || ours == theirs;
        if agrees(best_bid, c.best_bid) && agrees(best_ask, c.best_ask) { Applied::Ok } else { Applied::Diverged }
    }

    /// After a reconnect: every asset waits for a fresh `book`.
    pub fn unsync_all(&mut self) {
        for b in self.assets.values_mut() {
            b.synced = false;
        }
    }

    pub fn is_synced(&self, asset: &str) -> bool {
        self.assets.get(asset).is_some_and(|b| b.synced)
    }

    pub fn forget(&mut self, asset: &str) {
        self.assets.remove(asset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::polymarket::ws::{Event, Frame, decode_frame};

    use crate::polymarket::fixtures::text as fixture;

    fn change(asset: &str, price: &str, size: &str, side: &str, bid: &str, ask: &str) -> LevelChange {
        LevelChange {
            asset_id: asset.into(),
            price: price.parse().unwrap(),
            size: size.parse().unwrap(),
            side: if side == "BUY" { Side::Buy } else { Side::Sell },
            hash: None,
            best_bid: Some(bid.parse().unwrap()),
            best_ask: Some(ask.parse().unwrap()),
        }
    }

    #[test]
    fn changes_apply_to_a_synced_book_and_are_withheld_otherwise() {
        let Frame::Events { events, .. } = decode_frame(&fixture("ws_book.json")) else { panic!() };
        let Event::Book(book) = &events[0] else { panic!() };
        let mut books = Books::default();
        let asset = book.token_id.clone();
        let (bid, ask) = (book.best_bid().unwrap().to_string(), book.best_ask().unwrap().to_string());
        assert_eq!(books.apply(&change(&asset, &bid, "1", "BUY", &bid, &ask)), Applied::Withheld);
        books.snapshot(book);
        assert_eq!(books.apply(&change(&asset, &bid, "1", "BUY", &bid, &ask)), Applied::Ok);
        // Removing the best bid moves the top; upstream saying otherwise is a divergence.
        assert_eq!(books.apply(&change(&asset, &bid, "0", "BUY", &bid, &ask)), Applied::Diverged);
        books.unsync_all();
        assert_eq!(books.apply(&change(&asset, &bid, "5", "BUY", &bid, &ask)), Applied::Withheld);
        assert!(!books.is_synced(&asset));
    }
}
