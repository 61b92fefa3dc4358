//! Which markets this instance records (`[stream] shard = "i/n"`): instance `i` of `n` takes
//! the markets whose condition id hashes to `i` modulo `n`, every token of a market together
//! (docs/scaling.md). The hash is named and fixed so that instances of any version on any
//! machine agree: **FNV-1a, 64 bits** (offset basis `0xcbf29ce484222325`, prime
//! `0x100000001b3`) over the UTF-8 bytes of the condition id in lower case. A token listed
//! without a known market (`stream.token_ids`) is placed by its token id the same way.

use std::fmt;

/// One slice of the universe: `index` of `count` (`0/1`: everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub index: u32,
    pub count: u32,
}

impl Default for Slice {
    fn default() -> Self {
        Slice { index: 0, count: 1 }
    }
}

impl Slice {
    /// Parses `"i/n"` (`0 <= i < n`, `n >= 1`).
    pub fn parse(text: &str) -> Result<Slice, String> {
        let bad = || format!("{text:?} is not \"i/n\" with 0 <= i < n (for example \"0/1\", \"1/3\")");
        let (i, n) = text.trim().split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Slice { index, count })
    }

    /// Whether the market keyed `key` (its condition id; a token id when no market is known)
    /// belongs to this slice.
    pub fn owns(&self, key: &str) -> bool {
        self.count == 1 || slice_hash(key) % u64::from(self.count) == u64::from(self.index)
    }

    pub fn is_everything(&self) -> bool {
        self.count == 1
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// FNV-1a, 64 bits, over the lower-cased UTF-8 bytes of `key`.
pub fn slice_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published FNV-1a test vectors: any instance of any version computes these.
    #[test]
    fn the_hash_is_fnv1a_64() {
        assert_eq!(slice_hash(""), 0xcbf29ce484222325);
        assert_eq!(slice_hash("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(slice_hash("foobar"), 0x85944171f73967e8);
        assert_eq!(slice_hash("0xABC"), slice_hash("0xabc"), "case does not matter");
    }

    #[test]
    fn slices_cover_every_market_once() {
        for n in 1..=5u32 {
            let slices: Vec<Slice> = (0..n).map(|i| Slice::parse(&format!("{i}/{n}")).unwrap()).collect();
            for m in 0..2000 {
                let key = format!("0x{m:064x}");
                assert_eq!(slices.iter().filter(|s| s.owns(&key)).count(), 1, "{key} in {n} slices");
            }
        }
        // Spread: each of 4 slices gets roughly a quarter of 10,000 markets.
        let counts: Vec<usize> =
            (0..4).map(|i| (0..10_000).filter(|m| Slice { index: i, count: 4 }.owns(&format!("0x{m:064x}"))).count()).collect();
        assert!(counts.iter().all(|c| (2250..2750).contains(c)), "{counts:?}");
    }

    #[test]
    fn only_i_of_n_parses() {
        assert_eq!(Slice::parse("0/1"), Ok(Slice::default()));
        assert_eq!(Slice::parse(" 2 / 3 "), Ok(Slice { index: 2, count: 3 }));
        for bad in ["", "1", "1/1", "3/2", "0/0", "-1/2", "a/b", "1/2/3"] {
            assert!(Slice::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Slice { index: 1, count: 4 }.to_string(), "1/4");
    }
}
