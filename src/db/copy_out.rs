//! Reading `COPY (…) TO STDOUT (FORMAT binary)`: rows field by field, without a `Row` or a
//! `FromSql` per value (the archive reads whole hours of the stream this way). The formats are
//! PostgreSQL's `*_send` functions, the inverse of [`super::copy`].

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio_postgres::{CopyOutStream, Transaction};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A binary COPY out, read row by row.
pub struct CopyOut {
    stream: std::pin::Pin<Box<CopyOutStream>>,
    buf: BytesMut,
    header: bool,
    done: bool,
    /// The current row's fields: offsets into `row` (`None`: NULL).
    row: Bytes,
    fields: Vec<Option<(usize, usize)>>,
}

impl CopyOut {
    /// Starts `COPY ({query}) TO STDOUT (FORMAT binary)`.
    pub async fn start(db: &Transaction<'_>, query: &str) -> Result<CopyOut, tokio_postgres::Error> {
        let stream = db.copy_out(&format!("COPY ({query}) TO STDOUT (FORMAT binary)")).await?;
        Ok(CopyOut { stream: Box::pin(stream), buf: BytesMut::new(), header: false, done: false, row: Bytes::new(), fields: Vec::new() })
    }

    /// The next row (`false` at the end); its fields are then read with [`CopyOut::field`].
    pub async fn next(&mut self) -> Result<bool, CopyOutError> {
        loop {
            if let Some(ok) = self.parse()? {
                return Ok(ok);
            }
            match self.stream.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None if self.buf.is_empty() || self.done => return Ok(false),
                None => return Err(CopyOutError::Format("the copy ended inside a row".into())),
            }
        }
    }

    /// Parses one row out of the buffer: `Some(true)` a row, `Some(false)` the trailer,
    /// `None` more bytes are needed.
    fn parse(&mut self) -> Result<Option<bool>, CopyOutError> {
        if self.done {
            return Ok(Some(false));
        }
        if !self.header {
            const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(None);
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyOutError::Format("not a binary COPY".into()));
            }
            let ext = u32::from_be_bytes(self.buf[SIGNATURE.len() + 4..SIGNATURE.len() + 8].try_into().expect("4 bytes")) as usize;
            if self.buf.len() < SIGNATURE.len() + 8 + ext {
                return Ok(None);
            }
            self.buf.advance(SIGNATURE.len() + 8 + ext);
            self.header = true;
        }
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([self.buf[0], self.buf[1]]);
        if count == -1 {
            self.done = true;
            return Ok(Some(false));
        }
        // The whole row must be buffered: walk its field lengths first.
        let mut at = 2;
        self.fields.clear();
        for _ in 0..count {
            if self.buf.len() < at + 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes(self.buf[at..at + 4].try_into().expect("4 bytes"));
            at += 4;
            if len < 0 {
                self.fields.push(None);
                continue;
            }
            let len = len as usize;
            if self.buf.len() < at + len {
                return Ok(None);
            }
            self.fields.push(Some((at, len)));
            at += len;
        }
        self.row = self.buf.split_to(at).freeze();
        Ok(Some(true))
    }

    /// Field `i` of the current row (`None`: NULL).
    pub fn field(&self, i: usize) -> Option<&[u8]> {
        self.fields.get(i).copied().flatten().map(|(at, len)| &self.row[at..at + len])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyOutError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error("reading a binary COPY: {0}")]
    Format(String),
}

/// `timestamptz` → microseconds since the Unix epoch.
pub fn timestamptz_us(b: &[u8]) -> i64 {
    i64::from_be_bytes(b.try_into().expect("8 bytes")) + PG_EPOCH_MICROS
}

pub fn int4(b: &[u8]) -> i32 {
    i32::from_be_bytes(b.try_into().expect("4 bytes"))
}

pub fn int8(b: &[u8]) -> i64 {
    i64::from_be_bytes(b.try_into().expect("8 bytes"))
}

pub fn boolean(b: &[u8]) -> bool {
    b.first() == Some(&1)
}

/// A `numeric` as an integer and a decimal scale (value = mantissa / 10^scale), exactly as
/// stored (its display scale kept); `None` when it is NaN or its digits do not fit 38.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numeric {
    pub mantissa: i128,
    pub scale: u32,
}

impl Numeric {
    /// The mantissa at `scale` if the value is exactly representable there within `precision`
    /// digits.
    pub fn at_scale(&self, scale: u32, precision: u32) -> Option<i128> {
        let m = if scale >= self.scale {
            self.mantissa.checked_mul(10i128.checked_pow(scale - self.scale)?)?
        } else {
            let div = 10i128.checked_pow(self.scale - scale)?;
            if self.mantissa % div != 0 {
                return None;
            }
            self.mantissa / div
        };
        (m.unsigned_abs() < 10u128.pow(precision)).then_some(m)
    }

    /// The text PostgreSQL would print (its display scale).
    pub fn text(&self) -> String {
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = self.scale as usize;
        let sign = if self.mantissa < 0 { "-" } else { "" };
        if scale == 0 {
            return format!("{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        format!("{sign}{int}.{frac}")
    }
}

/// Parses a binary `numeric`: digit count, weight, sign, display scale, then base-10000 digits.
pub fn numeric(b: &[u8]) -> Option<Numeric> {
    let word = |i: usize| u16::from_be_bytes([b[2 * i], b[2 * i + 1]]);
    if b.len() < 8 {
        return None;
    }
    let (ndigits, weight, sign, dscale) = (word(0) as usize, word(1) as i16 as i32, word(2), word(3) as u32);
    if sign == 0xC000 || b.len() < 8 + 2 * ndigits {
        return None;
    }
    let mut m: i128 = 0;
    for i in 0..ndigits {
        m = m.checked_mul(10_000)?.checked_add(word(4 + i) as i128)?;
    }
    // The digits hold `ndigits - weight - 1` groups of four decimals (negative: the integer
    // has that many zero groups after them).
    let groups = ndigits as i32 - weight - 1;
    let held = 4 * groups;
    let target = dscale as i32;
    if held > target {
        let div = 10i128.checked_pow((held - target) as u32)?;
        m /= div;
    } else if held < target {
        m = m.checked_mul(10i128.checked_pow((target - held) as u32)?)?;
    }
    if sign == 0x4000 {
        m = -m;
    }
    (m.unsigned_abs() < 10u128.pow(38)).then_some(Numeric { mantissa: m, scale: dscale })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::str::FromStr;
    use tokio_postgres::types::{ToSql, Type};

    #[test]
    fn numerics_read_back_exactly_with_their_scale() {
        // Zero with a scale, as the collector stores it (db::copy; the binding drops it).
        let zero = numeric(&[0, 0, 0, 0, 0, 0, 0, 2]).unwrap();
        assert_eq!((zero.text(), zero.mantissa, zero.scale), ("0.00".to_string(), 0, 2));
        for text in [
            "0",
            "0.5",
            "0.50",
            "0.350",
            "1",
            "10000",
            "12345.6789",
            "0.0001",
            "-3.25",
            "25814545.294374414",
            "0.709999959",
            "100000000",
            "0.00001",
            "9999999999.999999999999999999",
            "79228162514264337593543950335",
        ] {
            let d = Decimal::from_str(text).unwrap();
            let mut buf = bytes::BytesMut::new();
            d.to_sql(&Type::NUMERIC, &mut buf).unwrap();
            let n = numeric(&buf).unwrap();
            assert_eq!(n.text(), text, "{text}");
            assert_eq!((n.mantissa, n.scale), (d.mantissa(), d.scale()), "{text}");
        }
    }

    #[test]
    fn a_value_fits_a_scale_only_exactly() {
        let n = Numeric { mantissa: 350, scale: 3 };
        assert_eq!(n.at_scale(8, 18), Some(35_000_000));
        assert_eq!(n.at_scale(2, 18), Some(35));
        assert_eq!(Numeric { mantissa: 351, scale: 3 }.at_scale(2, 18), None, "0.351 has no exact 2-decimal form");
        assert_eq!(Numeric { mantissa: 10i128.pow(12), scale: 0 }.at_scale(8, 18), None, "too many digits");
    }
}
