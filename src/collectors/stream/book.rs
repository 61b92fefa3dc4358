//! In-memory order books per asset, maintained from `book` snapshots and `price_change`
//! level updates. After a reconnect every asset is unsynced: level changes are withheld until
//! a fresh `book` arrives for it (a change applied to a stale book would be a lie).

use std::cmp::Ordering;

use rust_decimal::Decimal;
use rustc_hash::FxHashMap;

use crate::polymarket::clob::Book;
use crate::polymarket::decode::Side;
use crate::polymarket::ws::LevelChange;

/// One asset's book: each side's levels `(price, size)` sorted by price, ascending. A sorted
/// vector, not a tree: books are tens of levels, held for tens of thousands of assets, and a
/// vector is 32 bytes a level where a B-tree node is ~370 bytes however few levels it holds.
#[derive(Debug, Default)]
struct AssetBook {
    synced: bool,
    bids: Levels,
    asks: Levels,
}

#[derive(Debug, Default)]
struct Levels(Vec<(Decimal, Decimal)>);

impl Levels {
    /// A snapshot's levels; of two levels at one price, the later one counts.
    fn from_unsorted(mut levels: Vec<(Decimal, Decimal)>) -> Levels {
        levels.reverse();
        levels.sort_by_key(|(p, _)| *p); // stable: the later level first among equals
        levels.dedup_by_key(|(p, _)| *p);
        levels.shrink_to_fit();
        Levels(levels)
    }

    /// Sets the level's size; zero removes it.
    fn set(&mut self, price: Decimal, size: Decimal) {
        match (self.0.binary_search_by(|(p, _)| cmp_decimal(p, &price)), size.is_zero()) {
            (Ok(i), true) => {
                self.0.remove(i);
            }
            (Ok(i), false) => self.0[i].1 = size,
            (Err(_), true) => {}
            (Err(i), false) => self.0.insert(i, (price, size)),
        }
    }

    fn lowest(&self) -> Option<Decimal> {
        self.0.first().map(|(p, _)| *p)
    }

    fn highest(&self) -> Option<Decimal> {
        self.0.last().map(|(p, _)| *p)
    }
}

/// `a.cmp(b)`, quicker where both mantissas are under 2^63 and the scales differ by at most 18
/// (every price upstream sends): the one of smaller scale is scaled up and the two compared as
/// integers (under 2^63 × 10^18 < 2^127). `Decimal`'s own comparison rescales through its
/// 96-bit parts: ~a third of applying a level change, on the real mix.
fn cmp_decimal(a: &Decimal, b: &Decimal) -> Ordering {
    const LIMIT: i128 = 1 << 63;
    let (ma, mb, sa, sb) = (a.mantissa(), b.mantissa(), a.scale(), b.scale());
    if ma.abs() < LIMIT && mb.abs() < LIMIT && sa.abs_diff(sb) <= 18 {
        return if sa <= sb { (ma * 10i128.pow(sb - sa)).cmp(&mb) } else { ma.cmp(&(mb * 10i128.pow(sa - sb))) };
    }
    a.cmp(b)
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
    assets: FxHashMap<String, AssetBook>,
}

impl Books {
    /// Replaces the asset's book with a snapshot; the asset is synced from now on.
    pub fn snapshot(&mut self, book: &Book) {
        let parse = |levels: &[crate::polymarket::clob::Level]| {
            levels
                .iter()
                .filter_map(|l| Some((l.price, crate::polymarket::decode::parse_decimal(&l.size_text)?)))
                .filter(|(_, s)| !s.is_zero())
                .collect::<Vec<_>>()
        };
        let entry = self.assets.entry(book.token_id.clone()).or_default();
        entry.bids = Levels::from_unsorted(parse(&book.bids));
        entry.asks = Levels::from_unsorted(parse(&book.asks));
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
        side.set(c.price, c.size);
        let (best_bid, best_ask) = (book.bids.highest(), book.asks.lowest());
        let agrees = |ours: Option<Decimal>, theirs: Option<Decimal>| match (ours, theirs) {
            (_, None) => true,
            (Some(o), Some(t)) => cmp_decimal(&o, &t) == Ordering::Equal,
            (None, Some(_)) => false,
        };
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

    #[test]
    fn decimals_compare_as_decimal_does() {
        let texts = [
            "0",
            "-0",
            "0.5",
            "0.50",
            "0.05",
            "-0.5",
            "1",
            "0.999999999999999999",
            "1.000000000000000000000000001",
            "79228162514264337593543950335",
            "-79228162514264337593543950335",
            "0.0000000000000000000000000001",
            "9223372036854775807",
            "9223372036854775808",
            "0.9223372036854775808",
            "-0.9223372036854775807",
        ];
        let mut all: Vec<Decimal> = texts.iter().map(|t| t.parse().unwrap()).collect();
        let mut x: u64 = 11;
        for i in 0..3000u32 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let m = ((x >> 1) as i64 >> (x % 64)) * if i % 2 == 0 { 1 } else { -1 };
            all.push(Decimal::new(m, (x >> 40) as u32 % 29));
        }
        for a in &all {
            for b in all.iter().step_by(7) {
                assert_eq!(cmp_decimal(a, b), a.cmp(b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn levels_stay_sorted_and_zero_removes() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let mut l = Levels::from_unsorted(vec![(d("0.5"), d("1")), (d("0.3"), d("2")), (d("0.50"), d("9"))]);
        assert_eq!(l.0, vec![(d("0.3"), d("2")), (d("0.50"), d("9"))], "sorted, one level per price, the later one");
        l.set(d("0.4"), d("3"));
        l.set(d("0.5"), d("0"));
        l.set(d("0.9"), d("0"));
        l.set(d("0.3"), d("7"));
        assert_eq!(l.0, vec![(d("0.3"), d("7")), (d("0.4"), d("3"))]);
        assert_eq!((l.lowest(), l.highest()), (Some(d("0.3")), Some(d("0.4"))));
    }
}
