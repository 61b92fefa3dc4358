//! How the stream's values are stored compactly: prices as counts of 0.0001 ([`LevelTicks`],
//! [`price_ticks`]), level-change hashes and transaction hashes as bytes ([`level_hash_bytes`],
//! [`tx_bytes`]), hex helpers, and times as the idempotent path's JSON carries them ([`us`]).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::polymarket::ws::LevelChange;

/// A level change's prices as `price_changes_ticks` stores them (migration 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelTicks {
    pub price: i16,
    pub best_bid: Option<i16>,
    pub best_ask: Option<i16>,
}

impl LevelTicks {
    /// `Some` when the price and the best bid and ask (where present) each fit
    /// [`price_ticks`]; the row then goes to `price_changes_ticks`, else to
    /// `price_changes_compact` as received.
    pub fn of(c: &LevelChange) -> Option<LevelTicks> {
        let optional = |p: &Option<Decimal>| match p {
            None => Some(None),
            Some(p) => price_ticks(p).map(Some),
        };
        Some(LevelTicks { price: price_ticks(&c.price)?, best_bid: optional(&c.best_bid)?, best_ask: optional(&c.best_ask)? })
    }
}

/// A price as a count of 0.0001 when the SQL function `price_from_ticks` reads that count
/// back as exactly the same decimal, scale included: 0 to 3.2767, at most four decimals and
/// no trailing zero (`0.5` → 5000, `0.0025` → 25, `1` → 10000; `0.50`, `0.00001`, `-0.1`,
/// `5` → `None`).
pub fn price_ticks(price: &Decimal) -> Option<i16> {
    let (mantissa, scale) = (price.mantissa(), price.scale());
    if price.is_sign_negative() || scale > 4 || (scale > 0 && mantissa % 10 == 0) {
        return None;
    }
    i16::try_from(mantissa.checked_mul(10i128.pow(4 - scale))?).ok()
}

/// A time as PostgreSQL stores it (microseconds, truncated as the binary COPY does), so the
/// idempotent path compares equal to what the COPY stored.
pub(super) fn us(t: impl std::borrow::Borrow<DateTime<Utc>>) -> String {
    t.borrow().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A level change's hash as `price_changes_compact.hash` stores it (migration 8; its inverse
/// is the SQL function `level_hash_text`): upstream's 40 lowercase hex digits as their 20
/// bytes; any other text as `\x00` and its UTF-8, with a second `\x00` when it is 19 bytes
/// long — so a length of 20 always means a hex hash.
pub fn level_hash_bytes(hash: Option<&str>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(21);
    level_hash_into(hash?, &mut out);
    Some(out)
}

/// [`level_hash_bytes`] into a buffer the caller reuses (no allocation per row).
pub(super) fn level_hash_into(hash: &str, out: &mut Vec<u8>) {
    out.clear();
    if !push_lower_hex(hash, 40, out) {
        out.extend_from_slice(if hash.len() == 19 { b"\0\0" } else { b"\0" });
        out.extend_from_slice(hash.as_bytes());
    }
}

/// A trade's transaction hash as `trades_compact.tx` stores it (migration 7; its inverse is
/// the SQL function `trade_tx_text`): `\x01` and 32 bytes for upstream's `0x` + 64 lowercase hex
/// digits, `\x00` and the UTF-8 text of anything else.
pub fn tx_bytes(tx: Option<&str>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(33);
    tx_into(tx?, &mut out);
    Some(out)
}

/// [`tx_bytes`] into a buffer the caller reuses.
pub(super) fn tx_into(tx: &str, out: &mut Vec<u8>) {
    out.clear();
    out.push(1);
    if !tx.strip_prefix("0x").is_some_and(|h| push_lower_hex(h, 64, out)) {
        out.clear();
        out.push(0);
        out.extend_from_slice(tx.as_bytes());
    }
}

/// Appends `text` as bytes when it is exactly `digits` lowercase hex digits; `false` (and
/// nothing appended) otherwise. [`push_hex_text`] is the inverse.
pub(crate) fn push_lower_hex(text: &str, digits: usize, out: &mut Vec<u8>) -> bool {
    if text.len() != digits {
        return false;
    }
    let start = out.len();
    for pair in text.as_bytes().chunks_exact(2) {
        let (hi, lo) = (LOWER_HEX[pair[0] as usize], LOWER_HEX[pair[1] as usize]);
        if (hi | lo) > 0x0f {
            out.truncate(start);
            return false;
        }
        out.push(hi << 4 | lo);
    }
    true
}

/// Each byte's value as a lowercase hex digit, 0xff where it is none (one lookup per byte on
/// the hot path: every level change's hash).
const LOWER_HEX: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Appends `bytes` as lowercase hex digits.
pub(crate) fn push_hex_text(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0x0f) as usize] as char);
    }
}

/// Bytes as PostgreSQL's `bytea` input reads them (`\x` + hex), for the JSON of the idempotent path.
pub(super) fn bytea_literal(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("\\x");
    push_hex_text(bytes, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A count of 0.0001 only where it gives back the same decimal, scale included (what
    /// `price_from_ticks`, `trim_scale(ticks * 0.0001)`, returns).
    #[test]
    fn prices_in_ticks_only_where_they_read_back_the_same() {
        let ticks = |p: &str| price_ticks(&p.parse().unwrap());
        for (price, want) in [
            ("0", Some(0)),
            ("0.0001", Some(1)),
            ("0.0025", Some(25)),
            ("0.47", Some(4700)),
            ("0.5", Some(5000)),
            ("1", Some(10000)),
            ("1.5", Some(15000)),
            ("3.2767", Some(32767)),
        ] {
            assert_eq!(ticks(price), want, "{price}");
            let back = Decimal::new(want.unwrap().into(), 4).normalize();
            assert_eq!(back.to_string(), price, "{price} reads back as itself");
        }
        for price in ["0.50", "0.0", "1.0", "0.00001", "3.2768", "5", "12", "-0.1", "0.12345"] {
            assert_eq!(ticks(price), None, "{price}");
        }
    }
}
