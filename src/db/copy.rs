//! Binary `COPY … FROM STDIN (FORMAT binary)` rows, encoded field by field into one buffer
//! and sent in chunks of [`CHUNK`] bytes.
//!
//! In place of `tokio_postgres::binary_copy::BinaryCopyInWriter` on the stream's hot tables:
//! that writer awaits per row, checks each field's type through a `dyn ToSql`, sends 4 KB
//! messages, and encodes a `NUMERIC` through a vector allocated per value. Here the caller
//! writes each field with the method of its column's type (the column lists beside the calls
//! say which; a wrong one is refused by the database as a malformed binary field, which every
//! table's tests would show).
//!
//! Formats (PostgreSQL's `*_send` functions): a row is an `int2` field count, then each field
//! an `int4` length (`-1`: NULL) and its bytes.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::SinkExt;
use rust_decimal::Decimal;
use tokio_postgres::{CopyInSink, Transaction};

/// Bytes buffered before they are sent as one `CopyData` message.
const CHUNK: usize = 64 * 1024;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A binary COPY in progress.
pub struct CopyIn {
    sink: std::pin::Pin<Box<CopyInSink<Bytes>>>,
    buf: BytesMut,
    /// Fields in a row: the columns named at the start.
    fields: i16,
}

impl CopyIn {
    /// Starts `COPY {table} ({columns}) FROM STDIN (FORMAT binary)`; every row then writes
    /// one field per column, in their order.
    pub async fn start(client: &Transaction<'_>, table: &str, columns: &str) -> Result<CopyIn, tokio_postgres::Error> {
        let sink = client.copy_in(&format!("COPY {table} ({columns}) FROM STDIN (FORMAT binary)")).await?;
        let mut buf = BytesMut::with_capacity(CHUNK + 1024);
        // Signature, flags, header extension length.
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0);
        buf.put_i32(0);
        let fields = i16::try_from(columns.split(',').count()).expect("under 32,768 columns");
        Ok(CopyIn { sink: Box::pin(sink), buf, fields })
    }

    /// Begins a row (its fields are written next); sends what is buffered when a chunk is full.
    pub async fn row(&mut self) -> Result<Fields<'_>, tokio_postgres::Error> {
        if self.buf.len() >= CHUNK {
            let chunk = self.buf.split().freeze();
            self.sink.send(chunk).await?;
        }
        self.buf.put_i16(self.fields);
        Ok(Fields(&mut self.buf))
    }

    /// Ends the COPY: the rows it stored.
    pub async fn finish(mut self) -> Result<u64, tokio_postgres::Error> {
        self.buf.put_i16(-1);
        let rest = self.buf.split().freeze();
        self.sink.send(rest).await?;
        self.sink.as_mut().finish().await
    }
}

/// The fields of a row, written in their columns' order.
pub struct Fields<'b>(&'b mut BytesMut);

impl Fields<'_> {
    pub fn null(&mut self) -> &mut Self {
        self.0.put_i32(-1);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.0.put_i32(1);
        self.0.put_u8(u8::from(v));
        self
    }

    pub fn int2(&mut self, v: i16) -> &mut Self {
        self.0.put_i32(2);
        self.0.put_i16(v);
        self
    }

    pub fn int4(&mut self, v: i32) -> &mut Self {
        self.0.put_i32(4);
        self.0.put_i32(v);
        self
    }

    /// `timestamptz`: microseconds since 2000-01-01 UTC, a time's nanoseconds truncated toward
    /// that epoch (as the `chrono` binding does).
    pub fn timestamptz(&mut self, t: &DateTime<Utc>) -> &mut Self {
        let mut micros = t.timestamp_micros() - PG_EPOCH_MICROS;
        if micros < 0 && t.timestamp_subsec_nanos() % 1000 != 0 {
            micros += 1;
        }
        self.0.put_i32(8);
        self.0.put_i64(micros);
        self
    }

    /// `bytea`, or `text`/`varchar` (UTF-8 bytes).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.put_i32(i32::try_from(v.len()).expect("a field under 2 GB"));
        self.0.put_slice(v);
        self
    }

    pub fn text(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// `numeric`, exactly: its digits and its scale (`0.50` stays `0.50`, zero's scale too).
    pub fn numeric(&mut self, d: &Decimal) -> &mut Self {
        let (digits, n, weight) = numeric_digits(d);
        self.0.put_i32(8 + 2 * n as i32);
        self.0.put_u16(n as u16);
        self.0.put_i16(weight);
        self.0.put_u16(if d.is_sign_negative() && n > 0 { 0x4000 } else { 0 });
        self.0.put_u16(d.scale() as u16);
        for g in &digits[..n] {
            self.0.put_i16(*g);
        }
        self
    }

    /// `jsonb`: format version 1, then the JSON text.
    pub fn jsonb(&mut self, v: &serde_json::Value) -> &mut Self {
        let at = self.0.len();
        self.0.put_i32(0);
        self.0.put_u8(1);
        serde_json::to_writer((&mut *self.0).writer(), v).expect("a JSON value serializes");
        let len = i32::try_from(self.0.len() - at - 4).expect("a field under 2 GB");
        self.0[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self
    }

    pub fn opt_text(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn opt_bool(&mut self, v: Option<bool>) -> &mut Self {
        match v {
            Some(v) => self.bool(v),
            None => self.null(),
        }
    }

    pub fn opt_numeric(&mut self, d: Option<&Decimal>) -> &mut Self {
        match d {
            Some(d) => self.numeric(d),
            None => self.null(),
        }
    }

    pub fn opt_int2(&mut self, v: Option<i16>) -> &mut Self {
        match v {
            Some(v) => self.int2(v),
            None => self.null(),
        }
    }

    pub fn opt_bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            Some(v) => self.bytes(v),
            None => self.null(),
        }
    }
}

/// A decimal's base-10,000 digits as `numeric_send` writes them, most significant first
/// (the first `n` of the array), and the weight of the first: the power of 10,000 it counts.
/// Leading zero groups are not written, nor (when it is at least 1) zero groups after the
/// decimal point at the end; a zero has none. The digits are aligned on the decimal point: the mantissa is scaled up to a
/// multiple of 4 decimals.
fn numeric_digits(d: &Decimal) -> ([i16; 10], usize, i16) {
    let scale = d.scale();
    let pad = (4 - scale % 4) % 4;
    // |mantissa| < 2^96, times at most 1000: within a u128.
    let mut m = d.mantissa().unsigned_abs() * 10u128.pow(pad);
    let mut groups = [0i16; 10];
    let mut n = 0;
    while m > 0 {
        groups[n] = (m % 10_000) as i16;
        m /= 10_000;
        n += 1;
    }
    // Least significant first, so far.
    groups[..n].reverse();
    let fraction_groups = ((scale + pad) / 4) as usize;
    let weight = n as i16 - fraction_groups as i16 - 1;
    // Trailing zero groups of the fraction (not of the integer part) of a number of at least
    // 1, as rust_decimal's `ToSql` writes it (PostgreSQL strips any others as it reads).
    let mut end = n;
    while weight >= 0 && end as i16 - 1 > weight && groups[end - 1] == 0 {
        end -= 1;
    }
    (groups, end, if n == 0 { 0 } else { weight })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use tokio_postgres::types::{ToSql, Type};

    fn ours(d: &Decimal) -> Vec<u8> {
        let mut buf = BytesMut::new();
        Fields(&mut buf).numeric(d);
        buf.to_vec()
    }

    fn reference(d: &Decimal) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        d.to_sql(&Type::NUMERIC, &mut buf).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        buf.to_vec()
    }

    /// Every non-zero decimal encodes as rust_decimal's `ToSql` does (which the tables'
    /// round-trip tests read back exactly); zeros keep their scale, which it drops.
    #[test]
    fn numerics_encode_as_postgres_reads_them() {
        let texts = [
            "0.5",
            "0.0025",
            "0.00001",
            "123.45",
            "1",
            "10000",
            "100000000",
            "9999.9999",
            "0.0001",
            "1.5",
            "0.50",
            "-0.1",
            "-12345678.90123",
            "79228162514264337593543950335",
            "-79228162514264337593543950335",
            "0.0000000000000000000000000001",
            "7.9228162514264337593543950335",
            "100.001",
            "1e-5",
            "31.4159e3",
        ];
        for t in texts {
            let d = Decimal::from_str(t).or_else(|_| Decimal::from_scientific(t)).unwrap();
            assert_eq!(ours(&d), reference(&d), "{t}");
        }
        let mut x: u64 = 1;
        for i in 0..20_000u32 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let d = Decimal::new(((x >> 1) as i64 * if i % 3 == 0 { -1 } else { 1 }) >> (i % 60), i % 20);
            if !d.is_zero() {
                assert_eq!(ours(&d), reference(&d), "{d}");
            }
        }
        // Zero: no digits, its scale kept ("0.00" reads back as 0.00).
        assert_eq!(ours(&Decimal::from_str("0.00").unwrap()), [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(ours(&Decimal::from_str("-0").unwrap()), [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn the_other_fields_encode_as_their_to_sql_does() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T02:03:04.567891234Z").unwrap().with_timezone(&Utc);
        let early = DateTime::parse_from_rfc3339("1999-12-31T23:59:59.5000005Z").unwrap().with_timezone(&Utc);
        let mut buf = BytesMut::new();
        let json = serde_json::json!([{"price": "0.5", "size": "1é"}]);
        Fields(&mut buf).timestamptz(&t).timestamptz(&early).int2(-7).int4(70_000).bool(true).text("é").jsonb(&json).null();
        let mut want = BytesMut::new();
        let fields: [(&(dyn ToSql + Sync), Type); 7] = [
            (&t, Type::TIMESTAMPTZ),
            (&early, Type::TIMESTAMPTZ),
            (&-7i16, Type::INT2),
            (&70_000i32, Type::INT4),
            (&true, Type::BOOL),
            (&"é", Type::TEXT),
            (&json, Type::JSONB),
        ];
        for (v, ty) in fields {
            let at = want.len();
            want.put_i32(0);
            v.to_sql_checked(&ty, &mut want).unwrap();
            let len = (want.len() - at - 4) as i32;
            want[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        want.put_i32(-1);
        assert_eq!(buf, want);
    }
}
