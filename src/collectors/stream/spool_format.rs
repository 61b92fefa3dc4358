//! The spool's binary segment format (version 2, `segment-N.bin`). Version 1 (`.jsonl`, JSON
//! lines) took ~380 bytes for a level change — its 78-digit token id, its market's 66
//! characters and two RFC 3339 times spelt out on every line — so the default 1 GiB covered
//! about a minute of the stream at 30,000 events/s; and parsing it made a replayed row ~1.5×
//! dearer than a live one. Version 1 segments of an older release are still read.
//!
//! A segment is [`HEADER`], then records: a varint length, then the body, whose first byte is
//! its kind:
//! - [`DEFINE`]: varint id, then a string. Token and market ids are written once per segment
//!   and referred to by id after that; a segment is read from its start, so its dictionary is
//!   complete wherever the replay stands.
//! - [`JSON`]: the record as JSON (every kind of row without a binary form: lifecycle events,
//!   tick sizes, quarantined frames, and any value the binary forms cannot hold exactly).
//! - other kinds: a [`Record`]'s own binary form (a level change ~48 bytes; a book's levels
//!   as the texts upstream sent).
//!
//! Values stay exact: decimals as their 96-bit mantissa and scale, times in nanoseconds,
//! hashes as raw bytes only when their text is lowercase hex (so the text comes back the same).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Serialize, de::DeserializeOwned};

use crate::db::stream::{push_hex_text, push_lower_hex};

/// The first bytes of a version 2 segment.
pub const HEADER: &[u8] = b"collector spool v2\n";
/// A dictionary entry.
pub const DEFINE: u8 = 0;
/// A record stored as JSON.
pub const JSON: u8 = 1;

/// A record the spool holds: JSON always works; [`Record::encode`] may give a binary form.
pub trait Record: Serialize + DeserializeOwned {
    /// Writes this record's kind (≥ 2) and payload; `false` stores it as JSON instead.
    fn encode(&self, _enc: &mut Encoder<'_>) -> bool {
        false
    }

    /// Reads a record of `kind` (≥ 2) written by [`Record::encode`].
    fn decode(kind: u8, _dec: &mut Decoder<'_>) -> Result<Self, String> {
        Err(format!("unknown record kind {kind}"))
    }
}

/// The ids a segment's writer has defined: string → id.
#[derive(Default)]
pub struct WriteDict {
    ids: HashMap<Arc<str>, u32>,
    order: Vec<Arc<str>>,
}

impl WriteDict {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Forgets the ids defined from `len` on (a record that was not written after all).
    pub fn truncate(&mut self, len: usize) {
        for s in self.order.drain(len..) {
            self.ids.remove(&s);
        }
    }
}

/// Encodes one record: its dictionary entries go to `defs`, its body to `body`.
pub struct Encoder<'a> {
    dict: &'a mut WriteDict,
    defs: &'a mut Vec<u8>,
    pub body: &'a mut Vec<u8>,
}

/// Encodes `record` as framed records (its new dictionary entries first) appended to `out`.
pub fn encode<T: Record>(record: &T, dict: &mut WriteDict, out: &mut Vec<u8>) {
    let (mut defs, mut body) = (Vec::new(), Vec::new());
    let before = dict.len();
    let binary = record.encode(&mut Encoder { dict, defs: &mut defs, body: &mut body });
    if !binary {
        dict.truncate(before);
        defs.clear();
        body.clear();
        body.push(JSON);
        serde_json::to_writer(&mut body, record).expect("records serialise");
    }
    out.extend_from_slice(&defs);
    frame(out, &body);
}

fn frame(out: &mut Vec<u8>, body: &[u8]) {
    put_varint(out, body.len() as u128);
    out.extend_from_slice(body);
}

impl Encoder<'_> {
    pub fn u8(&mut self, b: u8) {
        self.body.push(b);
    }

    pub fn varint(&mut self, v: u128) {
        put_varint(self.body, v);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        put_varint(self.body, b.len() as u128);
        self.body.extend_from_slice(b);
    }

    /// A token or market id: its dictionary id (defined in this segment on first use).
    pub fn id(&mut self, s: &str) {
        let id = match self.dict.ids.get(s) {
            Some(id) => *id,
            None => {
                let id = self.dict.order.len() as u32;
                let s: Arc<str> = Arc::from(s);
                self.dict.ids.insert(s.clone(), id);
                self.dict.order.push(s.clone());
                let mut def = vec![DEFINE];
                put_varint(&mut def, id as u128);
                put_varint(&mut def, s.len() as u128);
                def.extend_from_slice(s.as_bytes());
                frame(self.defs, &def);
                id
            }
        };
        self.varint(id as u128);
    }

    /// An exact decimal; `false` for a negative zero (its sign is not in the mantissa).
    pub fn decimal(&mut self, d: &Decimal) -> bool {
        let m = d.mantissa();
        if m == 0 && d.is_sign_negative() {
            return false;
        }
        self.varint(zigzag(m));
        self.u8(d.scale() as u8);
        true
    }

    /// Hex text of `len` bytes after `prefix`, in lowercase only, as raw bytes: whether it was.
    pub fn hex_or_text(&mut self, s: &str, prefix: &str, len: usize) -> bool {
        if s.strip_prefix(prefix).is_some_and(|h| push_lower_hex(h, 2 * len, self.body)) {
            return true;
        }
        self.bytes(s.as_bytes());
        false
    }
}

/// Reads one record's body; ids through the segment's dictionary.
pub struct Decoder<'a> {
    buf: &'a [u8],
    dict: &'a [Arc<str>],
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8], dict: &'a [Arc<str>]) -> Self {
        Decoder { buf, dict }
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        let (&b, rest) = self.buf.split_first().ok_or("record ends early")?;
        self.buf = rest;
        Ok(b)
    }

    pub fn varint(&mut self) -> Result<u128, String> {
        let (v, n) = get_varint(self.buf).ok_or("bad varint")?;
        self.buf = &self.buf[n..];
        Ok(v)
    }

    pub fn raw(&mut self, len: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < len {
            return Err("record ends early".into());
        }
        let (b, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(b)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()? as usize;
        self.raw(len)
    }

    pub fn text(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|e| e.to_string())
    }

    pub fn id(&mut self) -> Result<Arc<str>, String> {
        let id = self.varint()? as usize;
        self.dict.get(id).cloned().ok_or_else(|| format!("id {id} not defined in this segment"))
    }

    pub fn decimal(&mut self) -> Result<Decimal, String> {
        let m = unzigzag(self.varint()?);
        let scale = self.u8()? as u32;
        Decimal::try_from_i128_with_scale(m, scale).map_err(|e| e.to_string())
    }

    /// The inverse of [`Encoder::hex_or_text`], `hex` being whether it wrote raw bytes.
    pub fn hex_or_text(&mut self, hex: bool, prefix: &str, len: usize) -> Result<String, String> {
        if !hex {
            return self.text();
        }
        let mut s = String::with_capacity(prefix.len() + 2 * len);
        s.push_str(prefix);
        push_hex_text(self.raw(len)?, &mut s);
        Ok(s)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The dictionary of the segment being read, as far as it has been read.
#[derive(Default)]
pub struct ReadDict {
    pub ids: Vec<Arc<str>>,
}

/// What one framed record at the start of `buf` is: `None` while it is incomplete (a torn
/// tail, or more to read); else its total length and body.
pub fn next_frame(buf: &[u8]) -> Option<(usize, &[u8])> {
    let (len, n) = get_varint(buf)?;
    let end = n.checked_add(usize::try_from(len).ok()?)?;
    (buf.len() >= end).then(|| (end, &buf[n..end]))
}

/// Decodes one body: `Ok(None)` for a dictionary entry (taken into `dict`).
pub fn decode<T: Record>(body: &[u8], dict: &mut ReadDict) -> Result<Option<T>, String> {
    let (&kind, rest) = body.split_first().ok_or("empty record")?;
    match kind {
        DEFINE => {
            let mut d = Decoder::new(rest, &[]);
            let id = d.varint()? as usize;
            let s: Arc<str> = Arc::from(d.text()?);
            if id > dict.ids.len() {
                return Err(format!("dictionary id {id} out of order"));
            }
            if id == dict.ids.len() {
                dict.ids.push(s);
            } else {
                dict.ids[id] = s;
            }
            Ok(None)
        }
        JSON => serde_json::from_slice(rest).map(Some).map_err(|e| e.to_string()),
        kind => {
            let mut d = Decoder::new(rest, &dict.ids);
            let r = T::decode(kind, &mut d)?;
            if !d.is_empty() {
                return Err(format!("{} bytes left over in a record of kind {kind}", d.buf.len()));
            }
            Ok(Some(r))
        }
    }
}

/// Level changes, trades, quotes and books — nearly every row a spill holds, and nearly all
/// of its bytes — in binary; the rest as JSON.
impl Record for crate::db::stream::Row {
    fn encode(&self, enc: &mut Encoder<'_>) -> bool {
        use crate::db::stream::{Row, TradeSource};
        use crate::polymarket::decode::Side;
        let flags_at = enc.body.len() + 1;
        match self {
            Row::PriceChange { change: c, condition_id, source_ts, received_at } => {
                enc.u8(PRICE_CHANGE);
                let mut flags = bit(c.side == Side::Buy, 0)
                    | bit(c.hash.is_some(), 1)
                    | bit(c.best_bid.is_some(), 3)
                    | bit(c.best_ask.is_some(), 4)
                    | bit(condition_id.is_some(), 5);
                enc.u8(0);
                enc.id(&c.asset_id);
                if let Some(m) = condition_id {
                    enc.id(m);
                }
                let mut ok = enc.decimal(&c.price) && enc.decimal(&c.size);
                if let Some(h) = &c.hash {
                    flags |= bit(enc.hex_or_text(h, "", 20), 2);
                }
                for d in [&c.best_bid, &c.best_ask].into_iter().flatten() {
                    ok &= enc.decimal(d);
                }
                enc.body[flags_at] = flags;
                ok && times(enc, source_ts, received_at)
            }
            Row::Trade { trade: t, received_at, source } => {
                enc.u8(TRADE);
                let mut flags = bit(t.side == Side::Buy, 0)
                    | bit(t.condition_id.is_some(), 1)
                    | bit(t.fee_rate_bps.is_some(), 2)
                    | bit(t.tx_hash.is_some(), 3)
                    | bit(*source == TradeSource::Backfill, 5);
                enc.u8(0);
                enc.id(&t.asset_id);
                if let Some(m) = &t.condition_id {
                    enc.id(m);
                }
                let mut ok = enc.decimal(&t.price) && enc.decimal(&t.size);
                if let Some(f) = &t.fee_rate_bps {
                    ok &= enc.decimal(f);
                }
                if let Some(h) = &t.tx_hash {
                    flags |= bit(enc.hex_or_text(h, "0x", 32), 4);
                }
                enc.body[flags_at] = flags;
                ok && times(enc, &t.source_ts, received_at)
            }
            Row::Quote { quote: q, received_at } => {
                enc.u8(QUOTE);
                enc.u8(bit(q.condition_id.is_some(), 0)
                    | bit(q.best_bid.is_some(), 1)
                    | bit(q.best_ask.is_some(), 2)
                    | bit(q.spread.is_some(), 3));
                enc.id(&q.asset_id);
                if let Some(m) = &q.condition_id {
                    enc.id(m);
                }
                let mut ok = true;
                for d in [&q.best_bid, &q.best_ask, &q.spread].into_iter().flatten() {
                    ok &= enc.decimal(d);
                }
                ok && times(enc, &q.source_ts, received_at)
            }
            Row::Book { book: b, received_at } => {
                enc.u8(BOOK);
                let mut flags = bit(b.condition_id.is_some(), 0)
                    | bit(b.tick_size.is_some(), 1)
                    | bit(b.min_order_size.is_some(), 2)
                    | bit(b.last_trade_price.is_some(), 3)
                    | bit(b.neg_risk.is_some(), 4)
                    | bit(b.neg_risk == Some(true), 5);
                enc.u8(0);
                enc.id(&b.token_id);
                if let Some(m) = &b.condition_id {
                    enc.id(m);
                }
                flags |= bit(enc.hex_or_text(&b.hash, "", 20), 6);
                let mut ok = true;
                for side in [&b.bids, &b.asks] {
                    enc.varint(side.len() as u128);
                    for l in side {
                        // The parsed price is the text's: only the texts are written.
                        ok &= l.price_text.parse::<Decimal>().is_ok_and(|p| p == l.price && p.scale() == l.price.scale());
                        enc.bytes(l.price_text.as_bytes());
                        enc.bytes(l.size_text.as_bytes());
                    }
                }
                for d in [&b.tick_size, &b.min_order_size, &b.last_trade_price].into_iter().flatten() {
                    ok &= enc.decimal(d);
                }
                enc.body[flags_at] = flags;
                ok && times(enc, &b.source_ts, received_at)
            }
            _ => false,
        }
    }

    fn decode(kind: u8, dec: &mut Decoder<'_>) -> Result<Self, String> {
        use crate::db::stream::{Row, TradeSource};
        use crate::polymarket::clob::{Book, Level};
        use crate::polymarket::decode::Side;
        use crate::polymarket::ws::{LevelChange, Quote, Trade};
        let flags = dec.u8()?;
        let has = |n: u8| flags & (1 << n) != 0;
        let side = if has(0) { Side::Buy } else { Side::Sell };
        match kind {
            PRICE_CHANGE => {
                let asset_id = dec.id()?.to_string();
                let condition_id = if has(5) { Some(dec.id()?) } else { None };
                let (price, size) = (dec.decimal()?, dec.decimal()?);
                let hash = if has(1) { Some(dec.hex_or_text(has(2), "", 20)?) } else { None };
                let best_bid = if has(3) { Some(dec.decimal()?) } else { None };
                let best_ask = if has(4) { Some(dec.decimal()?) } else { None };
                let (source_ts, received_at) = read_times(dec)?;
                Ok(Row::PriceChange {
                    change: LevelChange { asset_id, price, size, side, hash, best_bid, best_ask },
                    condition_id,
                    source_ts,
                    received_at,
                })
            }
            TRADE => {
                let asset_id = dec.id()?.to_string();
                let condition_id = if has(1) { Some(dec.id()?.to_string()) } else { None };
                let (price, size) = (dec.decimal()?, dec.decimal()?);
                let fee_rate_bps = if has(2) { Some(dec.decimal()?) } else { None };
                let tx_hash = if has(3) { Some(dec.hex_or_text(has(4), "0x", 32)?) } else { None };
                let (source_ts, received_at) = read_times(dec)?;
                let source = if has(5) { TradeSource::Backfill } else { TradeSource::Ws };
                Ok(Row::Trade {
                    trade: Trade { asset_id, condition_id, price, size, side, fee_rate_bps, source_ts, tx_hash },
                    received_at,
                    source,
                })
            }
            QUOTE => {
                let asset_id = dec.id()?.to_string();
                let condition_id = if has(0) { Some(dec.id()?.to_string()) } else { None };
                let best_bid = if has(1) { Some(dec.decimal()?) } else { None };
                let best_ask = if has(2) { Some(dec.decimal()?) } else { None };
                let spread = if has(3) { Some(dec.decimal()?) } else { None };
                let (source_ts, received_at) = read_times(dec)?;
                Ok(Row::Quote { quote: Quote { asset_id, condition_id, best_bid, best_ask, spread, source_ts }, received_at })
            }
            BOOK => {
                let token_id = dec.id()?.to_string();
                let condition_id = if has(0) { Some(dec.id()?.to_string()) } else { None };
                let hash = dec.hex_or_text(has(6), "", 20)?;
                let mut sides = [Vec::new(), Vec::new()];
                for side in &mut sides {
                    let n = dec.varint()? as usize;
                    side.reserve(n.min(4096));
                    for _ in 0..n {
                        let price_text = dec.text()?;
                        let size_text = dec.text()?;
                        let price = price_text.parse().map_err(|e| format!("level price {price_text:?}: {e}"))?;
                        side.push(Level { price, price_text, size_text });
                    }
                }
                let [bids, asks] = sides;
                let tick_size = if has(1) { Some(dec.decimal()?) } else { None };
                let min_order_size = if has(2) { Some(dec.decimal()?) } else { None };
                let last_trade_price = if has(3) { Some(dec.decimal()?) } else { None };
                let neg_risk = has(4).then_some(has(5));
                let (source_ts, received_at) = read_times(dec)?;
                let book =
                    Book { token_id, condition_id, source_ts, hash, bids, asks, tick_size, min_order_size, last_trade_price, neg_risk };
                Ok(Row::Book { book, received_at })
            }
            kind => Err(format!("unknown record kind {kind}")),
        }
    }
}

/// The binary kinds of [`crate::db::stream::Row`].
const PRICE_CHANGE: u8 = 2;
const TRADE: u8 = 3;
const QUOTE: u8 = 4;
const BOOK: u8 = 5;

fn bit(on: bool, n: u8) -> u8 {
    (on as u8) << n
}

/// The source time, then the receive time as nanoseconds after it.
fn times(enc: &mut Encoder<'_>, source_ts: &DateTime<Utc>, received_at: &DateTime<Utc>) -> bool {
    match (source_ts.timestamp_nanos_opt(), received_at.timestamp_nanos_opt()) {
        (Some(s), Some(r)) => {
            enc.varint(zigzag(s as i128));
            enc.varint(zigzag(r as i128 - s as i128));
            true
        }
        _ => false,
    }
}

fn read_times(dec: &mut Decoder<'_>) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let s = unzigzag(dec.varint()?);
    let r = i64::try_from(s + unzigzag(dec.varint()?)).map_err(|e| e.to_string())?;
    let s = i64::try_from(s).map_err(|e| e.to_string())?;
    Ok((DateTime::from_timestamp_nanos(s), DateTime::from_timestamp_nanos(r)))
}

fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8]) -> Option<(u128, usize)> {
    let mut v: u128 = 0;
    for (i, b) in buf.iter().enumerate().take(19) {
        v |= ((b & 0x7f) as u128) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

fn unzigzag(v: u128) -> i128 {
    ((v >> 1) as i128) ^ -((v & 1) as i128)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::db::stream::{Row, TradeSource};
    use crate::polymarket::decode::Side;
    use crate::polymarket::ws::{LevelChange, Quote, TickSizeChange, Trade};

    pub const TOKEN: &str = "71321045679252212594626385532706912750332728571942532289631379312455583992563";
    pub const MARKET: &str = "0x5f65177b394277fd294cd75650044e32ba009a95022d88a0c1d565897d72f8f1";

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    /// A level change as upstream sends them: 40 hex digits of hash, both best prices.
    pub fn level_change(asset: &str, i: i64) -> Row {
        let at = DateTime::from_timestamp_nanos(1_764_547_200_123_000_000 + i * 1_000_000);
        Row::PriceChange {
            change: LevelChange {
                asset_id: asset.into(),
                price: d("0.47"),
                size: d(&format!("{}.{:02}", 100 + i % 900, i % 100)),
                side: Side::Buy,
                hash: Some(format!("{:040x}", i)),
                best_bid: Some(d("0.47")),
                best_ask: Some(d("0.48")),
            },
            condition_id: Some(Arc::from(MARKET)),
            source_ts: at,
            received_at: at + chrono::Duration::nanoseconds(3_456_789),
        }
    }

    /// Every kind of row, with the values the binary forms must keep exactly or leave to JSON.
    fn rows() -> Vec<Row> {
        let at = DateTime::from_timestamp_nanos(1_764_547_200_123_456_789);
        let trade = |tx: Option<&str>, fee: Option<&str>, source| Row::Trade {
            trade: Trade {
                asset_id: TOKEN.into(),
                condition_id: Some(MARKET.into()),
                price: d("0.350"),
                size: d("10.000001"),
                side: Side::Sell,
                fee_rate_bps: fee.map(d),
                source_ts: at,
                tx_hash: tx.map(Into::into),
            },
            received_at: at - chrono::Duration::nanoseconds(5),
            source,
        };
        let mut plain = level_change(TOKEN, 7);
        if let Row::PriceChange { change, condition_id, .. } = &mut plain {
            change.hash = Some("NOT-HEX".into());
            change.best_bid = None;
            *condition_id = None;
            change.side = Side::Sell;
        }
        let mut upper = level_change("other token", 8);
        if let Row::PriceChange { change, .. } = &mut upper {
            change.hash = Some(format!("{:040X}", 0xabcdef_u64));
            change.size = d("79228162514264337593543950335");
            change.price = d("0.0000000000000000000000000001");
        }
        vec![
            level_change(TOKEN, 1),
            plain,
            upper,
            trade(Some(&format!("0x{:064x}", 0xfeed_u64)), Some("0"), TradeSource::Ws),
            trade(Some("0xABC"), None, TradeSource::Backfill),
            trade(None, Some("-1.5"), TradeSource::Ws),
            Row::Quote {
                quote: Quote {
                    asset_id: TOKEN.into(),
                    condition_id: None,
                    best_bid: Some(d("0.52")),
                    best_ask: None,
                    spread: Some(d("0.01")),
                    source_ts: at,
                },
                received_at: at,
            },
            // Without a binary form, or with values it cannot hold: JSON.
            Row::TickSize {
                change: TickSizeChange {
                    asset_id: TOKEN.into(),
                    condition_id: None,
                    old_tick_size: Some(d("0.01")),
                    new_tick_size: Some(d("0.001")),
                    source_ts: at,
                },
                received_at: at,
            },
            Row::Quarantine { connection: Some(3), reason: "odd".into(), frame: "{\"x\":1}".into(), received_at: at },
            Row::Quote {
                quote: Quote {
                    asset_id: TOKEN.into(),
                    condition_id: None,
                    best_bid: Some(negative_zero()),
                    best_ask: None,
                    spread: None,
                    source_ts: at,
                },
                received_at: at,
            },
            book(Some(true), &format!("{:040x}", 77)),
            book(None, "a hash of another form"),
            // A level whose parsed price is not its text's.
            {
                let mut b = book(Some(false), "h");
                if let Row::Book { book, .. } = &mut b {
                    book.asks[0].price = d("0.6");
                }
                b
            },
            level_change(TOKEN, 9),
        ]
    }

    fn book(neg_risk: Option<bool>, hash: &str) -> Row {
        use crate::polymarket::clob::{Book, Level};
        let level = |p: &str, s: &str| Level { price: d(p), price_text: p.into(), size_text: s.into() };
        let at = DateTime::from_timestamp_nanos(1_764_547_200_123_000_000);
        Row::Book {
            book: Book {
                token_id: TOKEN.into(),
                condition_id: neg_risk.map(|_| MARKET.to_string()),
                source_ts: at,
                hash: hash.into(),
                bids: vec![level("0.47", "1200.5"), level("0.46", "10")],
                asks: vec![level("0.60", "3.000000")],
                tick_size: Some(d("0.01")),
                min_order_size: neg_risk.map(|_| d("5")),
                last_trade_price: None,
                neg_risk,
            },
            received_at: at + chrono::Duration::milliseconds(2),
        }
    }

    fn negative_zero() -> Decimal {
        let mut z = Decimal::ZERO;
        z.set_sign_negative(true);
        assert!(z.is_sign_negative() && z.is_zero());
        z
    }

    /// Decodes a buffer of framed records.
    pub fn decode_all(mut buf: &[u8]) -> Vec<Row> {
        let (mut dict, mut out) = (ReadDict::default(), Vec::new());
        while let Some((n, body)) = next_frame(buf) {
            out.extend(decode::<Row>(body, &mut dict).unwrap());
            buf = &buf[n..];
        }
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        out
    }

    #[test]
    fn every_row_comes_back_exactly() {
        let (mut dict, mut buf) = (WriteDict::default(), Vec::new());
        let mut kinds = Vec::new();
        for r in rows() {
            let start = buf.len();
            encode(&r, &mut dict, &mut buf);
            // The record's own kind (after any dictionary entries it defined).
            let mut at = &buf[start..];
            loop {
                let (n, body) = next_frame(at).unwrap();
                if body[0] != DEFINE {
                    kinds.push(body[0]);
                    break;
                }
                at = &at[n..];
            }
        }
        assert_eq!(
            kinds,
            [PRICE_CHANGE, PRICE_CHANGE, PRICE_CHANGE, TRADE, TRADE, TRADE, QUOTE, JSON, JSON, JSON, BOOK, BOOK, JSON, PRICE_CHANGE]
        );
        let back = decode_all(&buf);
        assert_eq!(back, rows());
        // Text comes back as sent: the upper-case hash, the short transaction hash, scales.
        if let Row::PriceChange { change, .. } = &back[2] {
            assert_eq!(change.hash.as_deref(), Some(format!("{:040X}", 0xabcdef_u64).as_str()));
        }
        if let Row::Trade { trade, .. } = &back[3] {
            assert_eq!(trade.price.to_string(), "0.350");
        }
        // The negative zero's record defined no id it does not use.
        assert_eq!(dict.len(), 3, "the token, the market and the other token");
    }

    #[test]
    fn a_level_change_takes_a_seventh_of_its_json() {
        let (mut dict, mut buf) = (WriteDict::default(), Vec::new());
        let n = 1000;
        for i in 0..n {
            encode(&level_change(TOKEN, i), &mut dict, &mut buf);
        }
        let json: usize = (0..n).map(|i| serde_json::to_vec(&level_change(TOKEN, i)).unwrap().len() + 1).sum();
        let (binary, json) = (buf.len() as f64 / n as f64, json as f64 / n as f64);
        println!("{binary:.1} bytes a level change, JSON {json:.1}");
        assert!(binary < 55.0 && binary * 7.0 < json, "{binary:.1} bytes a level change, JSON {json:.1}");
        assert_eq!(decode_all(&buf), (0..n).map(|i| level_change(TOKEN, i)).collect::<Vec<_>>());
    }

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [0i128, 1, -1, 63, -64, 64, 1 << 40, -(1 << 40), i64::MAX as i128, i64::MIN as i128, (1 << 96) - 1, -((1 << 96) - 1)] {
            let mut out = Vec::new();
            put_varint(&mut out, zigzag(v));
            let (back, n) = get_varint(&out).unwrap();
            assert_eq!((unzigzag(back), n), (v, out.len()));
        }
        assert_eq!(get_varint(&[0x80, 0x80]), None, "a varint cut short");
    }
}
