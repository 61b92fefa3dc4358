//! The spool's binary segment format (version 2, `segment-N.bin`). Version 1 (`.jsonl`, JSON
//! lines) spelt out a level change's 78-digit token id, its market's 66 characters and two
//! RFC 3339 times on every line — several times the bytes, and a replayed row dearer than a
//! live one (sizes in BENCHMARKS.md, issue 10, sixth part). Version 1 segments of an older
//! release are still read.
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

    /// Adds this record's assets and receive time to `window` (what a gap must cover if the
    /// record is lost).
    fn note_loss(&self, _window: &mut LossWindow) {}
}

/// What lost records covered: their assets and the span of their receive times. The sink turns
/// it into a gap, whose trades the backfill recovers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossWindow {
    pub assets: std::collections::BTreeSet<String>,
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    pub rows: u64,
}

impl LossWindow {
    /// One more lost row: its assets, received at `at`.
    pub fn add<'a>(&mut self, assets: impl IntoIterator<Item = &'a str>, at: chrono::DateTime<chrono::Utc>) {
        for a in assets {
            if !self.assets.contains(a) {
                self.assets.insert(a.to_string());
            }
        }
        self.from = Some(self.from.map_or(at, |f| f.min(at)));
        self.to = Some(self.to.map_or(at, |t| t.max(at)));
        self.rows += 1;
    }

    /// Widens the span to `t` (a lost trade's source time).
    pub fn cover(&mut self, t: chrono::DateTime<chrono::Utc>) {
        self.from = Some(self.from.map_or(t, |f| f.min(t)));
        self.to = Some(self.to.map_or(t, |x| x.max(t)));
    }

    pub fn merge(&mut self, other: LossWindow) {
        self.assets.extend(other.assets);
        self.from = self.from.min(other.from).or(self.from).or(other.from);
        self.to = self.to.max(other.to);
        self.rows += other.rows;
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
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

pub(super) fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

pub(super) fn unzigzag(v: u128) -> i128 {
    ((v >> 1) as i128) ^ -((v & 1) as i128)
}

#[cfg(test)]
#[path = "spool_format_tests.rs"]
pub(super) mod tests;
