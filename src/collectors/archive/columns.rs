//! The archive's columns: what kinds there are ([`Kind`]), their Arrow and Parquet types, the
//! builders a file's rows go into ([`Columns`]), and the checksum of a file's key columns,
//! computed the same way from the rows as the database sent them and from the file read back.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Decimal128Builder, Int32Builder, Int64Builder, StringBuilder, StringDictionaryBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::types::Int32Type;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

use crate::db::copy_out::Numeric;

/// A column's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text with few distinct values (token and market ids, sides, sources): dictionary-encoded.
    Dict,
    Text,
    /// Text of random content, nearly every value distinct (hashes): no dictionary, lengths
    /// delta-encoded apart from the bytes.
    Random,
    Bool,
    /// A UTC time in microseconds (`TIMESTAMP(MICROS, UTC)`).
    Time,
    /// An exact decimal of this precision and scale (`DECIMAL(p, s)`).
    Decimal(u8, i8),
    /// A decimal with many distinct values (sizes): the same, without a dictionary.
    Amount(u8, i8),
    Int32,
    Int64,
}

impl Kind {
    fn data_type(self) -> DataType {
        match self {
            Kind::Dict => DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            Kind::Text | Kind::Random => DataType::Utf8,
            Kind::Bool => DataType::Boolean,
            Kind::Time => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Decimal(p, s) | Kind::Amount(p, s) => DataType::Decimal128(p, s),
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
        }
    }
}

/// A column: its documented name, its kind, and whether it is a key column (in the checksum).
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub name: &'static str,
    pub kind: Kind,
    pub key: bool,
}

pub const fn col(name: &'static str, kind: Kind) -> Col {
    Col { name, kind, key: false }
}

pub const fn key(name: &'static str, kind: Kind) -> Col {
    Col { name, kind, key: true }
}

/// The name of the last column of every file: the exact text of any decimal its column could
/// not hold (a scale or a size past the column's), as a JSON object `{"column": "text"}`;
/// NULL on every row in practice.
pub const EXACT: &str = "exact";

/// The Arrow schema of `cols` and the `exact` column.
pub fn schema(cols: &[Col]) -> Arc<Schema> {
    let mut fields: Vec<Field> = cols.iter().map(|c| Field::new(c.name, c.kind.data_type(), true)).collect();
    fields.push(Field::new(EXACT, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

enum Builder {
    Dict(StringDictionaryBuilder<Int32Type>),
    Text(StringBuilder),
    Bool(BooleanBuilder),
    Time(TimestampMicrosecondBuilder),
    Decimal(Decimal128Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
}

/// The rows of one batch, column by column, and the running checksum of their key columns.
pub struct Columns {
    cols: &'static [Col],
    builders: Vec<Builder>,
    exact: StringBuilder,
    /// The current row's out-of-range decimals, and its key hash so far.
    row_exact: Vec<(&'static str, String)>,
    row_hash: Fnv,
    next: usize,
    pub rows: usize,
    pub checksum: Checksum,
}

impl Columns {
    pub fn new(cols: &'static [Col], capacity: usize) -> Self {
        let builders = cols
            .iter()
            .map(|c| match c.kind {
                Kind::Dict => Builder::Dict(StringDictionaryBuilder::new()),
                Kind::Text | Kind::Random => Builder::Text(StringBuilder::with_capacity(capacity, capacity * 16)),
                Kind::Bool => Builder::Bool(BooleanBuilder::with_capacity(capacity)),
                Kind::Time => Builder::Time(TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC")),
                Kind::Decimal(p, s) | Kind::Amount(p, s) => Builder::Decimal(
                    Decimal128Builder::with_capacity(capacity).with_precision_and_scale(p, s).expect("a valid decimal type"),
                ),
                Kind::Int32 => Builder::Int32(Int32Builder::with_capacity(capacity)),
                Kind::Int64 => Builder::Int64(Int64Builder::with_capacity(capacity)),
            })
            .collect();
        Columns {
            cols,
            builders,
            exact: StringBuilder::new(),
            row_exact: Vec::new(),
            row_hash: Fnv::new(),
            next: 0,
            rows: 0,
            checksum: Checksum::default(),
        }
    }

    fn take(&mut self) -> (usize, Col) {
        let i = self.next;
        self.next += 1;
        (i, self.cols[i])
    }

    pub fn text(&mut self, v: Option<&str>) {
        let (i, c) = self.take();
        if c.key {
            self.row_hash.text(v);
        }
        match &mut self.builders[i] {
            Builder::Dict(b) => match v {
                Some(v) => {
                    b.append_value(v);
                }
                None => b.append_null(),
            },
            Builder::Text(b) => b.append_option(v),
            _ => panic!("column {} is not text", c.name),
        }
    }

    pub fn bool(&mut self, v: Option<bool>) {
        let (i, c) = self.take();
        if c.key {
            self.row_hash.int(v.map(i128::from));
        }
        let Builder::Bool(b) = &mut self.builders[i] else { panic!("column {} is not bool", c.name) };
        b.append_option(v);
    }

    /// A time in µs since the Unix epoch.
    pub fn time(&mut self, v: Option<i64>) {
        let (i, c) = self.take();
        if c.key {
            self.row_hash.int(v.map(i128::from));
        }
        let Builder::Time(b) = &mut self.builders[i] else { panic!("column {} is not a time", c.name) };
        b.append_option(v);
    }

    pub fn int32(&mut self, v: Option<i32>) {
        let (i, c) = self.take();
        if c.key {
            self.row_hash.int(v.map(i128::from));
        }
        let Builder::Int32(b) = &mut self.builders[i] else { panic!("column {} is not int32", c.name) };
        b.append_option(v);
    }

    pub fn int64(&mut self, v: Option<i64>) {
        let (i, c) = self.take();
        if c.key {
            self.row_hash.int(v.map(i128::from));
        }
        let Builder::Int64(b) = &mut self.builders[i] else { panic!("column {} is not int64", c.name) };
        b.append_option(v);
    }

    /// An exact decimal: at the column's scale when it is exactly representable there, else
    /// NULL with its text in the row's `exact` object.
    pub fn decimal(&mut self, v: Option<Numeric>) {
        let (i, c) = self.take();
        let (Kind::Decimal(p, s) | Kind::Amount(p, s)) = c.kind else { panic!("column {} is not a decimal", c.name) };
        let at = v.and_then(|n| n.at_scale(s as u32, p as u32));
        if let (Some(n), None) = (v, at) {
            self.row_exact.push((c.name, n.text()));
        }
        if c.key {
            match (v, at) {
                (Some(n), None) => self.row_hash.text(Some(&n.text())),
                _ => self.row_hash.int(at),
            }
        }
        let Builder::Decimal(b) = &mut self.builders[i] else { unreachable!("a decimal column's builder") };
        b.append_option(at);
    }

    /// Ends the row.
    pub fn end_row(&mut self) {
        debug_assert_eq!(self.next, self.cols.len(), "every column written");
        if self.row_exact.is_empty() {
            self.exact.append_null();
        } else {
            let obj: serde_json::Map<String, serde_json::Value> =
                self.row_exact.drain(..).map(|(k, v)| (k.to_string(), serde_json::Value::String(v))).collect();
            self.exact.append_value(serde_json::Value::Object(obj).to_string());
        }
        self.checksum.add(self.row_hash.finish());
        self.row_hash = Fnv::new();
        self.next = 0;
        self.rows += 1;
    }

    /// The rows so far as a batch (the builders start over).
    pub fn batch(&mut self, schema: &Arc<Schema>) -> RecordBatch {
        let mut arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Dict(b) => Arc::new(b.finish()),
                    Builder::Text(b) => Arc::new(b.finish()),
                    Builder::Bool(b) => Arc::new(b.finish()),
                    Builder::Time(b) => Arc::new(b.finish()),
                    Builder::Decimal(b) => Arc::new(b.finish()),
                    Builder::Int32(b) => Arc::new(b.finish()),
                    Builder::Int64(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        arrays.push(Arc::new(self.exact.finish()));
        self.rows = 0;
        RecordBatch::try_new(schema.clone(), arrays).expect("columns built to the schema")
    }
}

/// An order-independent checksum of rows: the count and the wrapping sum of each row's hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    pub rows: u64,
    pub sum: u64,
}

impl Checksum {
    pub fn add(&mut self, row: u64) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(row);
    }

    pub fn merge(&mut self, other: Checksum) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// As recorded in the manifest: `fnv64sum:<hex>`.
    pub fn text(&self) -> String {
        format!("fnv64sum:{:016x}", self.sum)
    }
}

/// FNV-1a 64 over a row's key values (each with a type and null marker).
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= *x as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }

    fn text(&mut self, v: Option<&str>) {
        match v {
            Some(s) => {
                self.bytes(&[1]);
                self.bytes(&(s.len() as u64).to_le_bytes());
                self.bytes(s.as_bytes());
            }
            None => self.bytes(&[0]),
        }
    }

    fn int(&mut self, v: Option<i128>) {
        match v {
            Some(n) => {
                self.bytes(&[2]);
                self.bytes(&n.to_le_bytes());
            }
            None => self.bytes(&[0]),
        }
    }

    fn finish(self) -> u64 {
        self.0
    }
}

/// The checksum of the key columns of `batch` (a file read back), computed as [`Columns`]
/// computed it from the database's rows.
pub fn checksum_of(cols: &[Col], batch: &RecordBatch) -> Result<Checksum, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Int32Type as I32, Int64Type, TimestampMicrosecondType};
    let exact_col = batch.column(cols.len()).as_string::<i32>();
    let mut sum = Checksum::default();
    // Dictionary columns: their values once, looked up by key.
    for row in 0..batch.num_rows() {
        let exact: Option<serde_json::Value> =
            exact_col.is_valid(row).then(|| serde_json::from_str(exact_col.value(row))).transpose().map_err(|e| e.to_string())?;
        let mut h = Fnv::new();
        for (i, c) in cols.iter().enumerate().filter(|(_, c)| c.key) {
            let a = batch.column(i);
            match c.kind {
                Kind::Dict => {
                    let d = a.as_dictionary::<I32>();
                    let values = d.values().as_string::<i32>();
                    h.text(d.is_valid(row).then(|| values.value(d.keys().value(row) as usize)));
                }
                Kind::Text | Kind::Random => {
                    let s = a.as_string::<i32>();
                    h.text(s.is_valid(row).then(|| s.value(row)));
                }
                Kind::Bool => {
                    let b = a.as_boolean();
                    h.int(b.is_valid(row).then(|| i128::from(b.value(row))));
                }
                Kind::Time => {
                    let t = a.as_primitive::<TimestampMicrosecondType>();
                    h.int(t.is_valid(row).then(|| i128::from(t.value(row))));
                }
                Kind::Int32 => {
                    let t = a.as_primitive::<I32>();
                    h.int(t.is_valid(row).then(|| i128::from(t.value(row))));
                }
                Kind::Int64 => {
                    let t = a.as_primitive::<Int64Type>();
                    h.int(t.is_valid(row).then(|| i128::from(t.value(row))));
                }
                Kind::Decimal(..) | Kind::Amount(..) => {
                    let d = a.as_primitive::<Decimal128Type>();
                    match exact.as_ref().and_then(|e| e.get(c.name)).and_then(|v| v.as_str()) {
                        Some(text) if !d.is_valid(row) => h.text(Some(text)),
                        _ => h.int(d.is_valid(row).then(|| d.value(row))),
                    }
                }
            }
        }
        sum.add(h.finish());
    }
    Ok(sum)
}
