// Tests of `spool_format.rs` and of the rows' binary forms (`spool_rows.rs`).

use super::*;
use crate::collectors::stream::spool_rows::{BOOK, PRICE_CHANGE, QUOTE, TRADE};
use crate::db::stream::{Row, TradeSource};
use crate::polymarket::decode::Side;
use crate::polymarket::ws::{LevelChange, Quote, TickSizeChange, Trade};
use chrono::DateTime;

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
