//! The hourly Parquet archive against a real PostgreSQL, read back with the readers
//! researchers use (DuckDB and pyarrow, `tests/readers/archive_check.py`).

use std::path::Path;

use chrono::{DateTime, Duration, DurationRound, Utc};
use collector::collectors::archive::{self, PassReport};
use collector::config::{ArchiveConfig, Config, Env};
use collector::db::stream::{Keys, Origin, Row, TradeSource, write_batch};
use collector::polymarket::decode::Side;
use collector::polymarket::ws::{LevelChange, Lifecycle, LifecycleKind, Quote, TickSizeChange, Trade};
use serde_json::{Value, json};

use crate::{fake, pg};

/// The archive settings of a test: its own directory, hashes kept, small row groups.
pub fn archive_cfg(dir: &Path) -> ArchiveConfig {
    let text = format!("[archive]\ndir = \"{}\"\nlevel_hashes = true\nrow_group_rows = 1000\nkeep_days = 0\n", dir.display());
    Config::parse(&text, &Env::default()).unwrap().archive
}

fn hour_ago(h: i64) -> DateTime<Utc> {
    (Utc::now() - Duration::hours(h)).duration_trunc(Duration::hours(1)).unwrap()
}

const A: &str = "84417201957632105529310086432218840511209736675081273397001256649120375528161";
const B: &str = "29041767350298712648890443219501120378874553109275648113086250047715329904432";
const M: &str = "0x5f65177b394277fd294cd75650044e32ba009a95022d88a0c1d565897d72f8f1";

#[allow(clippy::too_many_arguments)] // a level change spelt out, field by field
fn change(asset: &str, price: &str, size: &str, buy: bool, hash: Option<&str>, bid: Option<&str>, at: DateTime<Utc>, us: i64) -> Row {
    Row::PriceChange {
        change: LevelChange {
            asset_id: asset.into(),
            price: price.parse().unwrap(),
            size: size.parse().unwrap(),
            side: if buy { Side::Buy } else { Side::Sell },
            hash: hash.map(Into::into),
            best_bid: bid.map(|b| b.parse().unwrap()),
            best_ask: Some("0.6".parse().unwrap()),
        },
        condition_id: Some(M.into()),
        source_ts: at,
        received_at: at + Duration::microseconds(us),
    }
}

fn trade(asset: &str, price: &str, size: &str, at: DateTime<Utc>, tx: Option<&str>, source: TradeSource, fee: Option<&str>) -> Row {
    Row::Trade {
        trade: Trade {
            asset_id: asset.into(),
            condition_id: Some(M.into()),
            price: price.parse().unwrap(),
            size: size.parse().unwrap(),
            side: Side::Sell,
            fee_rate_bps: fee.map(|f| f.parse().unwrap()),
            source_ts: at,
            tx_hash: tx.map(Into::into),
        },
        received_at: at + Duration::microseconds(1234),
        source,
    }
}

/// Rows of every kind in hour `h`, with the values the archive must keep exactly: decimals of
/// every scale seen (and one past the columns' scale), zero with a scale, the largest sizes,
/// empty and odd strings, NULLs. `n` varies them (a second batch).
pub fn seed_rows(h: DateTime<Utc>, n: i64) -> Vec<Row> {
    let t = |s: i64| h + Duration::seconds(s + 60 * n);
    let hex = format!("{:040x}", 0xabcdef + n);
    let mut rows = vec![
        change(A, "0.5", "2710.17", true, Some(&hex), Some("0.47"), t(1), 123_456),
        change(A, "0.0025", "0", false, Some("not-a-hex-hash"), None, t(2), 1),
        change(A, "0.50", "0.000001", true, Some("nineteen-bytes-long"), Some("0.50"), t(3), 7),
        change(B, "0.00001", "99999999.999999", false, None, Some("0.00001"), t(4), 999_999),
        change(B, "5", "219.217767", true, Some(&hex), Some("5"), t(5), 0),
        trade(A, "0.709999959", "1.464786", t(6), Some(&format!("0x{:064x}", 77 + n)), TradeSource::Backfill, None),
        trade(A, "0.30000000000000004", "244.00000000000003", t(7), Some("not-a-tx-hash"), TradeSource::Ws, Some("0")),
        trade(B, "0.35", "0.1234567890123456789012", t(8), Some(""), TradeSource::Ws, Some("10.5")),
        trade(B, "1", "1000000000000", t(9), None, TradeSource::Ws, Some("0.00")),
        Row::Quote {
            quote: Quote {
                asset_id: A.into(),
                condition_id: Some(M.into()),
                best_bid: Some("0.47".parse().unwrap()),
                best_ask: None,
                spread: Some("0.010".parse().unwrap()),
                source_ts: t(10),
            },
            received_at: t(10) + Duration::microseconds(5),
        },
        Row::TickSize {
            change: TickSizeChange {
                asset_id: B.into(),
                condition_id: None,
                old_tick_size: Some("0.01".parse().unwrap()),
                new_tick_size: Some("0.001".parse().unwrap()),
                source_ts: t(11),
            },
            received_at: t(11),
        },
        Row::Lifecycle {
            event: Lifecycle {
                kind: LifecycleKind::NewMarket,
                condition_id: Some(format!("0x{:064x}", 900 + n)),
                market_id: Some(format!("ünï-{n}")),
                assets: vec![],
                winning_asset_id: None,
                source_ts: t(12),
                payload: json!({"question": "Will \"it\" happen? ✓", "n": n}),
            },
            received_at: t(12),
        },
    ];
    let book = collector::polymarket::clob::decode_book(&fake::book(A, t(13).timestamp_millis() as u64, &format!("book-{n}"))).unwrap();
    rows.push(Row::Book { book, received_at: t(13) });
    rows
}

/// Stores `rows` as the stream's writer does.
pub async fn store(db: &pg::TestDb, rows: &[Row]) {
    let pool = db.pool().await;
    write_batch(&pool, &Keys::default(), rows, Origin::Live).await.unwrap();
}

/// Every archived table's rows in the database before `until`, canonical (as
/// `archive_check.py` reads the files): decimals normalized, times in µs.
pub async fn expected_tables(db: &pg::TestDb, until: DateTime<Utc>) -> Value {
    let u = |c: &str| format!("(extract(epoch from {c}) * 1000000)::bigint AS {c}");
    let d = |c: &str| format!("trim_scale({c})::text AS {c}");
    let queries = [
        (
            "price_changes",
            format!(
                "SELECT asset_id, condition_id, {}, {}, side, hash, {}, {}, {}, {} FROM price_changes WHERE source_ts < $1",
                d("price"),
                d("size"),
                d("best_bid"),
                d("best_ask"),
                u("source_ts"),
                u("received_at")
            ),
        ),
        (
            "trades",
            format!(
                "SELECT asset_id, condition_id, {}, {}, side, {}, {}, source, tx_hash, {} FROM trades WHERE source_ts < $1",
                d("price"),
                d("size"),
                u("source_ts"),
                u("received_at"),
                d("fee_rate_bps")
            ),
        ),
        (
            "quotes",
            format!(
                "SELECT asset_id, condition_id, {}, {}, {}, {}, {} FROM quotes WHERE source_ts < $1",
                d("best_bid"),
                d("best_ask"),
                d("spread"),
                u("source_ts"),
                u("received_at")
            ),
        ),
        (
            "tick_size_changes",
            format!(
                "SELECT asset_id, condition_id, {}, {}, {}, {} FROM tick_size_changes WHERE source_ts < $1",
                d("old_tick_size"),
                d("new_tick_size"),
                u("source_ts"),
                u("received_at")
            ),
        ),
        (
            "book_snapshots",
            format!(
                "SELECT token_id, {}, hash, {}, source, condition_id, {}, {}, bids::text AS bids, asks::text AS asks, {}, {}, {}, neg_risk
            FROM book_snapshots WHERE received_at < $1",
                u("source_ts"),
                u("received_at"),
                d("best_bid"),
                d("best_ask"),
                d("tick_size"),
                d("min_order_size"),
                d("last_trade_price")
            ),
        ),
        (
            "market_events",
            format!(
                "SELECT kind, condition_id, market_id, {}, {}, payload::text AS payload FROM market_events WHERE source_ts < $1",
                u("source_ts"),
                u("received_at")
            ),
        ),
        (
            "stream_gaps",
            format!(
                "SELECT id, connection, array_to_json(assets)::text AS assets, asset_count, {}, {}, reason, planned, backfill_status, {},
            backfill_trades, backfill_attempts, {} FROM stream_gaps WHERE started_at < $1 AND ended_at < $1",
                u("started_at"),
                u("ended_at"),
                u("backfilled_at"),
                u("backfill_covered_from")
            ),
        ),
    ];
    let c = db.client().await;
    let mut tables = serde_json::Map::new();
    for (name, sql) in queries {
        let rows: Option<Value> = c.query_one(&format!("SELECT json_agg(row_to_json(t)) FROM ({sql}) t"), &[&until]).await.unwrap().get(0);
        tables.insert(name.to_string(), rows.unwrap_or(json!([])));
    }
    Value::Object(tables)
}

/// Runs the readers' check: every table of `expected` read from `dir` by DuckDB and pyarrow,
/// and the `queries`. Panics with their report on a mismatch.
pub fn readers_check(dir: &Path, expected: &Value) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), expected.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/readers/archive_check.py");
    let out = std::process::Command::new("python3").arg(script).arg(dir).arg(file.path()).output().expect("python3");
    assert!(
        out.status.success(),
        "the readers disagree with the database:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn pass(db: &pg::TestDb, cfg: &ArchiveConfig, until: DateTime<Utc>) -> PassReport {
    archive::pass(&db.pool().await, cfg, until).await.unwrap()
}

/// Every value kind round-trips exactly: the files read by DuckDB and pyarrow hold what the
/// views hold, row for row; the files are sorted, ZSTD, with page statistics; the manifest
/// lists them with their sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_kind_round_trips_exactly_through_duckdb_and_pyarrow() {
    let db = pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = archive_cfg(dir.path());
    let (h1, h2) = (hour_ago(5), hour_ago(4));
    store(&db, &seed_rows(h1, 0)).await;
    store(&db, &seed_rows(h2, 1)).await;
    let pool = db.pool().await;
    let gap = collector::db::gaps::insert_closed(
        &pool,
        "test",
        &[A.to_string(), "ödd\"id".to_string()],
        h1 + Duration::seconds(30),
        h1 + Duration::seconds(90),
        "stall",
    )
    .await
    .unwrap();
    collector::db::gaps::set_backfill(&pool, gap.id, "done", Some(3), None).await.unwrap();
    let until = hour_ago(2);
    let report = pass(&db, &cfg, until).await;
    assert_eq!(report.tables["price_changes"].rows, 10);
    assert_eq!(report.tables["trades"].rows, 8);
    assert_eq!(report.tables["stream_gaps"].rows, 1);
    assert!(dir.path().join(archive::relative_path("trades", h1, 0)).exists());
    readers_check(dir.path(), &json!({"tables": expected_tables(&db, until).await}));
    // One value past the columns' scale kept exactly in `exact`; the sort order, codec and
    // statistics as documented.
    let meta = parquet_meta(&dir.path().join(archive::relative_path("trades", h1, 0)));
    assert!(meta.contains("ZSTD") && meta.contains("sorting_columns"), "{meta}");
    let manifest = db.count("SELECT count(*) FROM archive_files WHERE path IS NOT NULL").await;
    assert_eq!(manifest, 2 * 6 + 1, "two hours of six tables, one gaps file");
}

/// The metadata of a Parquet file as pyarrow describes it (codec, sorting, statistics).
fn parquet_meta(path: &Path) -> String {
    let code = "import sys, pyarrow.parquet as pq; m = pq.ParquetFile(sys.argv[1]).metadata; rg = m.row_group(0); \
                print(rg.column(0).compression, 'sorting_columns' if rg.sorting_columns else '', rg.column(0).statistics.has_min_max, m.num_rows)";
    let out = std::process::Command::new("python3").args(["-c", code]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Files under `dir` (relative), sorted, temporary ones included.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// A second pass writes nothing; a late row (a backfill of an archived hour) lands in a
/// supplement of its hour, alone; every row is read once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pass_writes_nothing_and_a_late_row_lands_in_a_supplement() {
    let db = pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = archive_cfg(dir.path());
    let h = hour_ago(5);
    store(&db, &seed_rows(h, 0)).await;
    let until = hour_ago(2);
    let first = pass(&db, &cfg, until).await;
    assert!(first.files() > 0);
    let (files_before, manifest_before) = (files(dir.path()), db.count("SELECT count(*) FROM archive_files").await);
    let again = pass(&db, &cfg, until).await;
    assert_eq!(again.files(), 0, "{again:?}");
    assert_eq!((files(dir.path()), db.count("SELECT count(*) FROM archive_files").await), (files_before.clone(), manifest_before));
    // A late trade of the archived hour (received now: a gap's backfill).
    let late = trade(B, "0.42", "7", h + Duration::seconds(100), Some("0xlate"), TradeSource::Backfill, None);
    store(&db, &[late]).await;
    let report = pass(&db, &cfg, until).await;
    assert_eq!((report.tables["trades"].files, report.tables["trades"].rows), (1, 1), "{report:?}");
    assert_eq!(report.files(), 1);
    assert!(dir.path().join(archive::relative_path("trades", h, 1)).exists(), "{:?}", files(dir.path()));
    assert_eq!(archive::relative_path("trades", h, 1), format!("trades/date={}/hour={}.1.parquet", h.format("%Y-%m-%d"), h.format("%H")));
    readers_check(dir.path(), &json!({"tables": expected_tables(&db, until).await}));
    assert_eq!(pass(&db, &cfg, until).await.files(), 0, "the supplement is not written twice");
}

/// A crash between writing and renaming (a temporary file left) and between renaming and
/// recording (a file without its manifest row) is recovered at the next pass: the part is
/// written again, verified, and listed; no temporary file stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_rename_or_before_the_manifest_is_recovered_at_the_next_pass() {
    let db = pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = archive_cfg(dir.path());
    let h = hour_ago(5);
    store(&db, &seed_rows(h, 0)).await;
    let until = hour_ago(2);
    pass(&db, &cfg, until).await;
    let trades = archive::relative_path("trades", h, 0);
    // Between rename and manifest: the file is there, its manifest row is not (the commit
    // never happened), and it is not even the right file.
    db.client().await.execute("DELETE FROM archive_files WHERE table_name = 'trades' AND hour >= $1", &[&h]).await.unwrap();
    std::fs::write(dir.path().join(&trades), b"half a file").unwrap();
    // Between write and rename: a temporary file of the next hour's part.
    let tmp = dir.path().join(&trades).with_file_name(format!(".tmp-hour={}.parquet", (h + Duration::hours(1)).format("%H")));
    std::fs::write(&tmp, b"torn").unwrap();
    let report = pass(&db, &cfg, until).await;
    assert_eq!(report.tables["trades"].files, 1, "the hour is written again: {report:?}");
    assert!(!tmp.exists(), "temporary files do not stay");
    assert!(files(dir.path()).iter().all(|f| !f.contains(".tmp-")), "{:?}", files(dir.path()));
    let (rows, bytes): (i64, i64) = {
        let r = db
            .client()
            .await
            .query_one("SELECT rows, bytes FROM archive_files WHERE table_name = 'trades' AND hour = $1", &[&h])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((rows, bytes as u64), (4, std::fs::metadata(dir.path().join(&trades)).unwrap().len()));
    readers_check(dir.path(), &json!({"tables": expected_tables(&db, until).await}));
}

/// `--until` inside an hour archives the hour so far; rows of it that come later (before the
/// bound, and after it) are in the next pass's supplement: every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_inside_an_hour_then_a_later_pass_archives_every_row_once() {
    let db = pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = archive_cfg(dir.path());
    let h = hour_ago(5);
    store(&db, &seed_rows(h, 0)).await;
    let inside = h + Duration::seconds(7) + Duration::milliseconds(500);
    let first = pass(&db, &cfg, inside).await;
    let covered: chrono::DateTime<Utc> =
        db.client().await.query_one("SELECT max(covered_to) FROM archive_files WHERE table_name = 'trades'", &[]).await.unwrap().get(0);
    assert_eq!(covered, inside, "the manifest says what the file covers");
    assert_eq!(first.tables["trades"].rows, 2, "the trades before the bound: {first:?}");
    // Later: a trade before the bound (a late arrival) and the rest of the hour.
    store(&db, &[trade(A, "0.4", "3", h + Duration::seconds(2), Some("0xbefore"), TradeSource::Backfill, None)]).await;
    store(&db, &seed_rows(h, 1)).await;
    let until = hour_ago(2);
    let second = pass(&db, &cfg, until).await;
    assert_eq!(second.tables["trades"].rows, 2 + 1 + 4, "the rest of the first batch, the late one and the second batch: {second:?}");
    readers_check(dir.path(), &json!({"tables": expected_tables(&db, until).await}));
}

/// A day leaves the database only when every hour of it is archived and every file is there
/// with its recorded size: a missing file keeps the day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_is_released_only_when_archived_and_not_when_a_file_is_missing() {
    let db = pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = archive_cfg(dir.path());
    cfg.keep_days = 1;
    let day = |n: i64| (Utc::now() - Duration::days(n)).date_naive();
    let at = |n: i64| day(n).and_hms_opt(10, 0, 0).unwrap().and_utc();
    store(&db, &seed_rows(at(3), 0)).await;
    store(&db, &seed_rows(at(4), 0)).await;
    let exists = |name: String| {
        let db = &db;
        async move { db.count(&format!("SELECT count(*) FROM pg_class WHERE relname = '{name}'")).await == 1 }
    };
    use collector::db::partitions::partition_name;
    // Archived up to a bound inside day −3: day −4 is whole, day −3 is not.
    let report = pass(&db, &cfg, at(3) + Duration::hours(5)).await;
    assert!(report.released.contains(&partition_name("trades_compact", day(4))), "{report:?}");
    assert!(report.released.contains(&partition_name("price_changes_ticks", day(4))));
    assert!(exists(partition_name("trades_compact", day(3))).await, "day −3 is not archived to its end");
    // Day −3 archived, but one of its files goes missing before the release.
    let report = pass(&db, &cfg, day(2).and_hms_opt(0, 0, 0).unwrap().and_utc()).await;
    assert!(report.released.contains(&partition_name("trades_compact", day(3))), "{report:?}");
    // Another day, whose file is lost before its release.
    store(&db, &seed_rows(at(5), 0)).await;
    let mut hold = cfg.clone();
    hold.keep_days = 30;
    pass(&db, &hold, day(2).and_hms_opt(0, 0, 0).unwrap().and_utc()).await;
    let lost = dir.path().join(archive::relative_path("trades", at(5), 0));
    std::fs::remove_file(&lost).unwrap();
    let report = pass(&db, &cfg, day(2).and_hms_opt(0, 0, 0).unwrap().and_utc()).await;
    assert!(!report.released.iter().any(|p| p == &partition_name("trades_compact", day(5))), "{report:?}");
    assert!(exists(partition_name("trades_compact", day(5))).await, "a missing file keeps its day in the database");
    assert!(report.released.contains(&partition_name("price_changes_ticks", day(5))), "the other tables' days go");
}

/// The worked queries of docs/archive.md, by name: the SQL for the database, and the DuckDB
/// and Python ones for the files.
fn documented_queries() -> Vec<(String, String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/archive.md")).unwrap();
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(lang) = line.strip_prefix("```").filter(|l| ["sql", "duckdb", "python"].contains(l)) else { continue };
        let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        let name = body.first().and_then(|l| l.strip_prefix("-- query: ").or_else(|| l.strip_prefix("# query: ")));
        if let Some(name) = name {
            out.push((lang.to_string(), name.to_string(), body[1..].join("\n")));
        }
    }
    out
}

/// A database value as the readers' check compares it: decimals normalized, times in µs.
fn canonical(row: &tokio_postgres::Row, i: usize) -> Value {
    use tokio_postgres::types::Type;
    let t = row.columns()[i].type_().clone();
    match t {
        Type::NUMERIC => row.get::<_, Option<rust_decimal::Decimal>>(i).map_or(Value::Null, |d| {
            let n = d.normalize();
            json!(if n.is_zero() { "0".to_string() } else { n.to_string() })
        }),
        Type::TIMESTAMPTZ => row.get::<_, Option<DateTime<Utc>>>(i).map_or(Value::Null, |t| json!(t.timestamp_micros())),
        Type::INT8 => json!(row.get::<_, Option<i64>>(i)),
        Type::INT4 => json!(row.get::<_, Option<i32>>(i)),
        Type::BOOL => json!(row.get::<_, Option<bool>>(i)),
        _ => json!(row.get::<_, Option<String>>(i)),
    }
}

/// The worked queries of docs/archive.md give the same answer from the files (DuckDB and
/// Python) as from the views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_queries_answer_the_same_from_the_files_and_the_database() {
    let db = pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = archive_cfg(dir.path());
    // The docs' example day, moved to two days ago (hours the archive has closed).
    let day = (Utc::now() - Duration::days(2)).date_naive();
    let at = |h: u32| day.and_hms_opt(h, 0, 0).unwrap().and_utc();
    for (n, h) in [(0, 9), (1, 11), (2, 13), (3, 15)] {
        store(&db, &seed_rows(at(h), n)).await;
    }
    let pool = db.pool().await;
    for (from, to) in [(at(9), at(10)), (at(12), at(13) + Duration::minutes(20)), (at(15), at(16))] {
        let gap = collector::db::gaps::insert_closed(&pool, "test", &[A.to_string()], from, to, "stall").await.unwrap();
        collector::db::gaps::set_backfill(&pool, gap.id, "done", Some(2), None).await.unwrap();
    }
    // The one value no column holds (22 decimals: in `exact`, NULL for a plain query) is not
    // what the worked queries are about.
    db.client().await.execute("DELETE FROM trades_compact WHERE size = 0.1234567890123456789012", &[]).await.unwrap();
    pass(&db, &cfg, hour_ago(2)).await;
    let local = |text: &str| {
        text.replace("/var/lib/collector/archive", &dir.path().display().to_string())
            .replace("2026-12-01", &day.to_string())
            .replace("2026-12-02", &(day + Duration::days(1)).to_string())
            .replace(
                "datetime.datetime(2026, 12, 1,",
                &format!("datetime.datetime({}, {}, {},", day.format("%Y"), day.format("%-m"), day.format("%-d")),
            )
    };
    let queries = documented_queries();
    let c = db.client().await;
    let mut checks = Vec::new();
    for (lang, name, body) in queries.iter().filter(|(lang, ..)| lang != "sql") {
        let (_, _, sql) = queries.iter().find(|(l, n, _)| l == "sql" && n == name).unwrap_or_else(|| panic!("no SQL for {name}"));
        let rows = c.query(&local(sql), &[]).await.unwrap();
        let want: Vec<Vec<Value>> = rows.iter().map(|r| (0..r.len()).map(|i| canonical(r, i)).collect()).collect();
        let key = if lang == "duckdb" { "duckdb" } else { "python" };
        checks.push(json!({"name": name, key: local(body), "rows": want}));
    }
    assert!(checks.len() >= 4, "{checks:?}");
    readers_check(dir.path(), &json!({"queries": checks}));
}

/// `collector archive --until … --json` from the command line: one JSON object with what it
/// wrote, exit 0; a second run writes nothing. An archive directory the collector cannot
/// write is a configuration error at start (exit 78, saying so), for `collect` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_command_reports_as_json_and_an_unwritable_dir_is_refused() {
    let db = pg::fresh_db().await;
    let h = hour_ago(5);
    store(&db, &seed_rows(h, 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("collector.toml");
    let archive_dir = dir.path().join("archive");
    std::fs::write(&config, crate::config_text(&db, "http://127.0.0.1:9", &format!("[archive]\ndir = \"{}\"\n", archive_dir.display())))
        .unwrap();
    let until = (h + Duration::hours(1)).to_rfc3339();
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_collector"))
            .args(&args)
            .env_remove("COLLECTOR_DATABASE_URL")
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let args = vec!["archive".into(), "--config".into(), config.display().to_string(), "--until".into(), until.clone(), "--json".into()];
    let (code, out, err) = run(args.clone()).await;
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["tables"]["trades"]["rows"], 4, "{report}");
    assert_eq!(report["tables"]["price_changes"]["files"], 1);
    assert!(report["tables"]["trades"]["bytes"].as_u64().unwrap() > 0);
    let (code, out, _) = run(args).await;
    assert_eq!(code, 0);
    let again: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(again["tables"].as_object().unwrap().values().all(|t| t["files"] == 0), "{again}");
    // Not writable: a path under a regular file.
    let blocked = dir.path().join("a-file");
    std::fs::write(&blocked, "").unwrap();
    std::fs::write(
        &config,
        crate::config_text(&db, "http://127.0.0.1:9", &format!("[archive]\ndir = \"{}/archive\"\n", blocked.display())),
    )
    .unwrap();
    for command in ["archive", "collect"] {
        let (code, _, err) = run(vec![command.into(), "--config".into(), config.display().to_string()]).await;
        assert_eq!(code, 78, "{command}: {err}");
        assert!(err.contains("archive.dir") && err.contains("not writable"), "{command}: {err}");
    }
}

/// The daemon archives on its own (a supervised collector), and its health says so: the
/// archive's passes in `collector status`, the archive's bytes beside the database's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_archives_closed_hours_and_its_status_shows_the_archive() {
    use crate::daemon::{Daemon, FAST, small_fake};
    let db = pg::fresh_db().await;
    let h = hour_ago(5);
    store(&db, &seed_rows(h, 0)).await;
    let fake = small_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{FAST}[archive]\ndir = \"{}\"\ninterval_secs = 1\nafter_hours = 1\n", dir.path().display());
    let d = Daemon::start(&db, &fake, &extra, &[]).await;
    let file = dir.path().join(archive::relative_path("trades", h, 0));
    crate::eventually(60, "the hour archived by the daemon", || async { file.exists() }).await;
    crate::eventually(30, "the archive in the status", || async {
        let (code, json) = d.status(true).await;
        let v: Value = serde_json::from_str(&json).unwrap_or_default();
        code == 0
            && v["collectors"]["archive"]["total_items"].as_u64().is_some_and(|n| n > 0)
            && v["disk"]["archive_bytes"].as_u64().is_some_and(|b| b > 0)
    })
    .await;
    let (_, text) = d.status(false).await;
    assert!(text.contains("archive: items=") && text.contains("archive="), "{text}");
}

/// A long archive pass (catching up on days of hours) does not stop the watchdog: the stream
/// does not wait for it and a restart would not help it. Its pass time shows in the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_archive_pass_leaves_the_watchdog_alone() {
    use crate::daemon::{Daemon, FAST, small_fake};
    let db = pg::fresh_db().await;
    let fake = small_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("stall_timeout_secs = 1\n{FAST}[archive]\ndir = \"{}\"\ninterval_secs = 1\n", dir.path().display());
    let d = Daemon::start(&db, &fake, &extra, &[("WATCHDOG_USEC", "400000"), ("COLLECTOR_FAULT_INJECT", "wedge:archive")]).await;
    crate::eventually(30, "the archive's second pass running past the stall timeout", || async {
        let (code, json) = d.status(true).await;
        let v: Value = serde_json::from_str(&json).unwrap_or_default();
        code == 0 && v["collectors"]["archive"]["pass_running_secs"].as_f64().is_some_and(|s| s > 2.0)
    })
    .await;
    let since = tokio::time::Instant::now();
    crate::eventually(10, "watchdog pings go on", || async {
        d.notes.times_of("WATCHDOG=1").into_iter().filter(|t| *t > since).count() >= 3
    })
    .await;
    assert_eq!(d.log.count("withholding watchdog pings"), 0, "{}", d.log.text());
}

/// Two passes at once (the daemon's and `collector archive`, or two daemons on one
/// database): one waits for the other; every hour is written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_passes_at_once_write_every_hour_once() {
    let db = pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = archive_cfg(dir.path());
    for n in 0..4 {
        store(&db, &seed_rows(hour_ago(8 - n), n)).await;
    }
    let until = hour_ago(2);
    let (a, b) = tokio::join!(pass(&db, &cfg, until), pass(&db, &cfg, until));
    assert_eq!(a.files() + b.files(), 4 * 6, "{a:?} {b:?}");
    assert_eq!(db.count("SELECT count(*) FROM archive_files WHERE part > 0").await, 0, "no hour written twice");
    readers_check(dir.path(), &json!({"tables": expected_tables(&db, until).await}));
}
