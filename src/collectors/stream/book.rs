//! In-memory order books per asset, maintained from `book` snapshots and `price_change`
//! level updates. After a reconnect every asset is unsynced: level changes are withheld until
//! a fresh `book` arrives for it (a change applied to a stale book would be a lie).

use std::cmp::Ordering;

use rust_decimal::Decimal;
use rustc_hash::FxHashMap;

use super::AssetId;
use crate::polymarket::clob::Book;
use crate::polymarket::decode::Side;
use crate::polymarket::ws::LevelChange;

/// One asset's book: each side's price levels. Only which prices have a size is kept, not the
/// sizes: the book decides whether a change may be applied (synced) and whether the top of
/// book agrees with upstream's, and both need the prices alone. A book is tens of levels, held
/// for every asset of the universe (BENCHMARKS.md, "Universe").
#[derive(Debug, Default)]
struct AssetBook {
    synced: bool,
    bids: Levels,
    asks: Levels,
}

/// Upstream's finest price grid: 0.0001 (the smallest tick size), prices in [0, 1].
const TICKS_PER_UNIT: i128 = 10_000;

/// `price` on the 0.0001 grid in [0, 1] as a count of ticks; `None` off the grid.
fn to_tick(price: &Decimal) -> Option<u16> {
    let (m, scale) = (price.mantissa(), price.scale());
    let ticks = if scale <= 4 {
        if !(0..=TICKS_PER_UNIT).contains(&m) {
            return None;
        }
        m * 10i128.pow(4 - scale)
    } else {
        let step = 10i128.pow(scale - 4);
        if m % step != 0 {
            return None;
        }
        m / step
    };
    (0..=TICKS_PER_UNIT).contains(&ticks).then_some(ticks as u16)
}

/// One side's price levels, sorted ascending: 2 bytes a level on the 0.0001 grid (every price
/// upstream sends), exact decimals once a price off the grid arrives.
#[derive(Debug)]
enum Levels {
    Ticks(Vec<u16>),
    Exact(Vec<Decimal>),
}

impl Default for Levels {
    fn default() -> Self {
        Levels::Ticks(Vec::new())
    }
}

impl Levels {
    /// A snapshot's levels (the prices with a size).
    fn from_prices(prices: Vec<Decimal>) -> Levels {
        let mut levels = match prices.iter().map(to_tick).collect::<Option<Vec<u16>>>() {
            Some(mut ticks) => {
                ticks.sort_unstable();
                ticks.dedup();
                Levels::Ticks(ticks)
            }
            None => {
                let mut exact = prices;
                exact.sort_by(cmp_decimal);
                exact.dedup_by(|a, b| cmp_decimal(a, b) == Ordering::Equal);
                Levels::Exact(exact)
            }
        };
        match &mut levels {
            Levels::Ticks(v) => v.shrink_to_fit(),
            Levels::Exact(v) => v.shrink_to_fit(),
        }
        levels
    }

    /// Sets whether the price has a size (a zero size removes the level).
    fn set(&mut self, price: Decimal, present: bool) {
        if let Levels::Ticks(ticks) = self {
            match to_tick(&price) {
                Some(t) => return set_sorted(ticks, t, present, u16::cmp),
                None if !present => return,
                None => *self = Levels::Exact(ticks.iter().map(|t| Decimal::new(*t as i64, 4)).collect()),
            }
        }
        if let Levels::Exact(exact) = self {
            set_sorted(exact, price, present, cmp_decimal);
        }
    }

    fn lowest(&self) -> Option<Decimal> {
        match self {
            Levels::Ticks(t) => t.first().map(|t| Decimal::new(*t as i64, 4)),
            Levels::Exact(e) => e.first().copied(),
        }
    }

    fn highest(&self) -> Option<Decimal> {
        match self {
            Levels::Ticks(t) => t.last().map(|t| Decimal::new(*t as i64, 4)),
            Levels::Exact(e) => e.last().copied(),
        }
    }
}

/// Inserts `x` into (or removes it from) the sorted `v`.
fn set_sorted<T>(v: &mut Vec<T>, x: T, present: bool, cmp: impl Fn(&T, &T) -> Ordering) {
    match (v.binary_search_by(|y| cmp(y, &x)), present) {
        (Ok(i), false) => {
            v.remove(i);
        }
        (Err(i), true) => v.insert(i, x),
        _ => {}
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
    assets: FxHashMap<AssetId, AssetBook>,
}

impl Books {
    /// Replaces the asset's book with a snapshot (`asset`: its id, shared with the shard's
    /// set); the asset is synced from now on.
    pub fn snapshot(&mut self, asset: &AssetId, book: &Book) {
        let prices = |levels: &[crate::polymarket::clob::Level]| {
            levels
                .iter()
                .filter(|l| crate::polymarket::decode::parse_decimal(&l.size_text).is_some_and(|s| !s.is_zero()))
                .map(|l| l.price)
                .collect::<Vec<_>>()
        };
        let entry = self.assets.entry(asset.clone()).or_default();
        entry.bids = Levels::from_prices(prices(&book.bids));
        entry.asks = Levels::from_prices(prices(&book.asks));
        entry.synced = true;
    }

    /// Applies one level change: size replaces the level, zero removes it.
    pub fn apply(&mut self, c: &LevelChange) -> Applied {
        let Some(book) = self.assets.get_mut(c.asset_id.as_str()).filter(|b| b.synced) else {
            return Applied::Withheld;
        };
        let side = match c.side {
            Side::Buy => &mut book.bids,
            Side::Sell => &mut book.asks,
        };
        side.set(c.price, !c.size.is_zero());
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
        let asset = AssetId::from(book.token_id.as_str());
        let (bid, ask) = (book.best_bid().unwrap().to_string(), book.best_ask().unwrap().to_string());
        assert_eq!(books.apply(&change(&asset, &bid, "1", "BUY", &bid, &ask)), Applied::Withheld);
        books.snapshot(&asset, book);
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
        let mut l = Levels::from_prices(vec![d("0.5"), d("0.3"), d("0.50")]);
        assert!(matches!(&l, Levels::Ticks(t) if t == &[3000, 5000]), "sorted, one level per price: {l:?}");
        l.set(d("0.4"), true);
        l.set(d("0.5"), false);
        l.set(d("0.9"), false);
        l.set(d("0.3"), true);
        assert!(matches!(&l, Levels::Ticks(t) if t == &[3000, 4000]), "{l:?}");
        assert_eq!((l.lowest(), l.highest()), (Some(d("0.3")), Some(d("0.4"))));
        // A price off the grid is kept exactly; the side's other prices stay.
        l.set(d("0.00005"), false);
        assert!(matches!(&l, Levels::Ticks(_)), "an absent off-grid price changes nothing");
        l.set(d("0.00005"), true);
        l.set(d("1.5"), true);
        assert_eq!((l.lowest(), l.highest()), (Some(d("0.00005")), Some(d("1.5"))));
        l.set(d("0.40"), false);
        l.set(d("0.00005"), false);
        assert!(matches!(&l, Levels::Exact(e) if e == &[d("0.3"), d("1.5")]), "{l:?}");
        let exact = Levels::from_prices(vec![d("0.7"), d("-0.1"), d("0.70")]);
        assert!(matches!(&exact, Levels::Exact(e) if e == &[d("-0.1"), d("0.7")]), "{exact:?}");
    }

    #[test]
    fn ticks_are_exactly_the_grid() {
        let t = |s: &str| to_tick(&s.parse::<Decimal>().unwrap());
        assert_eq!(
            [t("0"), t("-0"), t("0.0001"), t("0.5"), t("0.50000000"), t("1"), t("1.0000")],
            [Some(0), Some(0), Some(1), Some(5000), Some(5000), Some(10000), Some(10000)]
        );
        assert_eq!([t("0.00005"), t("1.0001"), t("2"), t("-0.1"), t("79228162514264337593543950335")], [None; 5]);
    }
}
