use collector::db::migrate::{self, MigrateError};

use crate::pg;

#[tokio::test]
async fn migrations_apply_once_and_record_checksums() {
    let db = pg::fresh_db().await;
    let mut client = db.client().await;
    let first = migrate::run(&mut client).await.unwrap();
    assert_eq!(first.len(), migrate::MIGRATIONS.len());
    let second = migrate::run(&mut client).await.unwrap();
    assert!(second.is_empty(), "second run applied {second:?}");
    let recorded = db.count("SELECT count(*) FROM schema_migrations").await;
    assert_eq!(recorded as usize, migrate::MIGRATIONS.len());
    for table in ["events", "markets", "tokens", "book_snapshots"] {
        let n = db.count(&format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(n, 0, "{table}");
    }
}

#[tokio::test]
async fn concurrent_starts_serialise_on_the_advisory_lock() {
    let db = pg::fresh_db().await;
    let (mut a, mut b) = (db.client().await, db.client().await);
    let (ra, rb) = tokio::join!(migrate::run(&mut a), migrate::run(&mut b));
    let applied = ra.unwrap().len() + rb.unwrap().len();
    assert_eq!(applied, migrate::MIGRATIONS.len(), "each migration applied exactly once");
}

#[tokio::test]
async fn altered_or_unknown_migrations_are_refused() {
    let db = pg::fresh_db().await;
    let mut client = db.client().await;
    migrate::run(&mut client).await.unwrap();

    client.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1", &[]).await.unwrap();
    let err = migrate::run(&mut client).await.unwrap_err();
    assert!(matches!(err, MigrateError::Altered { version: 1, .. }), "{err}");

    let real = migrate::checksum(&(migrate::MIGRATIONS[0].sql)());
    client.execute("UPDATE schema_migrations SET checksum = $1 WHERE version = 1", &[&real]).await.unwrap();
    client.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'future', 'x')", &[]).await.unwrap();
    let err = migrate::run(&mut client).await.unwrap_err();
    assert!(matches!(err, MigrateError::Unknown { version: 999, .. }), "{err}");
}

/// Like libpq: `prefer` (the default) and `require` encrypt without verifying a self-signed
/// certificate; `verify-full` refuses it.
#[tokio::test]
async fn tls_to_a_server_with_a_self_signed_certificate() {
    let (_cluster, port) = pg::PrivateCluster::start_tls();
    for mode in ["", "?sslmode=require"] {
        let url = format!("postgresql://postgres@127.0.0.1:{port}/postgres{mode}");
        let db = pg::TestDb { name: "postgres".into(), url };
        let cfg = crate::config_for(&db, "http://127.0.0.1:9");
        let pool = collector::db::connect(&cfg.database).await.unwrap_or_else(|e| panic!("{mode}: {e}"));
        let conn = pool.get().await.unwrap();
        let ssl: bool = conn.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
        assert!(ssl, "{mode}: the connection is encrypted");
    }
    let url = format!("postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full");
    let mut cfg = crate::config_for(&pg::TestDb { name: "postgres".into(), url }, "http://127.0.0.1:9");
    cfg.database.startup_deadline = std::time::Duration::ZERO;
    let Err(err) = collector::db::connect(&cfg.database).await else { panic!("an untrusted certificate is refused") };
    assert!(err.to_string().contains("certificate"), "{err}");
}

/// A database of the previous release (migrations 1–4) holding level changes is converted
/// in place: the `price_changes` view answers exactly what the table held.
#[tokio::test]
async fn the_previous_release_is_converted_in_place_to_compact_partitioned_level_changes() {
    let db = pg::fresh_db().await;
    let mut client = db.client().await;
    migrate::run_to(&mut client, 4).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO price_changes (asset_id, condition_id, price, size, side, hash, best_bid, best_ask, source_ts, received_at) VALUES
             ('84417201957632105529310086432218840511209736675081273397001256649120375528161', '0xaa', 0.34, 2710.17, 'BUY',
              'e0a71c3b9d2f4e6a8b0c1d2e3f4a5b6c7d8e9f01', 0.34, 0.35, '2026-11-27 10:00:00.123+00', '2026-11-27 10:00:00.2+00'),
             ('84417201957632105529310086432218840511209736675081273397001256649120375528161', '0xaa', 0.5, 0, 'SELL',
              'not-a-hex-hash', NULL, NULL, '2026-11-28 23:59:59.999+00', '2026-11-29 00:00:00.01+00'),
             ('29041767350298712648890443219501120378874553109275648113086250047715329904432', NULL, 0.660, 12.500, 'SELL',
              NULL, 0.65, 0.66, '2026-11-29 00:00:00+00', '2026-11-29 00:00:00.5+00')",
        )
        .await
        .unwrap();
    let snapshot = "SELECT asset_id, condition_id, price::text, size::text, side, hash, best_bid::text, best_ask::text,
                    source_ts::text, received_at::text FROM price_changes ORDER BY source_ts";
    let rows_text = |rows: Vec<tokio_postgres::Row>| -> Vec<Vec<Option<String>>> {
        rows.iter().map(|r| (0..10).map(|i| r.get::<_, Option<String>>(i)).collect()).collect()
    };
    let before = rows_text(client.query(snapshot, &[]).await.unwrap());
    let applied = migrate::run(&mut client).await.unwrap();
    assert!(applied.iter().any(|(v, _)| *v == 5), "{applied:?}");
    let after = rows_text(client.query(snapshot, &[]).await.unwrap());
    assert_eq!(after, before, "the view answers exactly what the table held");
    assert_eq!(db.count("SELECT count(*) FROM price_changes_compact").await, 3);
    assert_eq!(db.count("SELECT count(*) FROM stream_tokens").await, 2);
    let parts: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'price_changes_compact' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for day in ["price_changes_p20261127", "price_changes_p20261128", "price_changes_p20261129"] {
        assert!(parts.iter().any(|p| p == day), "{day} in {parts:?}");
    }
    assert_eq!(db.count("SELECT count(*) FROM price_changes_p20261128").await, 1, "rows land in their day");
}

/// A database of the previous release (migrations 1–6) holding trades, quotes and tick size
/// changes is converted in place: the views answer exactly what the tables held (the market of
/// each row now comes from its token's dictionary entry, which the rows filled), and the rows
/// sit in their days' partitions.
#[tokio::test]
async fn the_previous_release_is_converted_in_place_to_compact_trades_and_quotes() {
    let db = pg::fresh_db().await;
    let mut client = db.client().await;
    migrate::run_to(&mut client, 6).await.unwrap();
    let (a, b) = (
        "84417201957632105529310086432218840511209736675081273397001256649120375528161",
        "29041767350298712648890443219501120378874553109275648113086250047715329904432",
    );
    let tx = format!("0x{}", "5c2b9f0e".repeat(8));
    client
        .execute(
            "INSERT INTO trades (asset_id, condition_id, price, size, side, source_ts, received_at, source, tx_hash, fee_rate_bps) VALUES
             ($1, '0xaa', 0.340, 2710.17, 'BUY', '2026-11-27 10:00:00.123+00', '2026-11-27 10:00:00.2+00', 'ws', $3, 0),
             ($1, '0xaa', 0.34, 2710.17, 'BUY', '2026-11-27 10:00:00+00', '2026-11-28 09:00:00+00', 'backfill', 'not-a-hash', NULL),
             ($2, '0xaa', 0.66, 5, 'SELL', '2026-11-29 23:59:59.999+00', '2026-11-30 00:00:00.01+00', 'ws', NULL, 10)",
            &[&a, &b, &tx],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO quotes (asset_id, condition_id, best_bid, best_ask, spread, source_ts, received_at) VALUES
             ($1, '0xaa', 0.34, 0.35, 0.01, '2026-11-27 10:00:00.5+00', '2026-11-27 10:00:00.6+00'),
             ($2, '0xaa', NULL, 0.66, NULL, '2026-11-28 00:00:00+00', '2026-11-28 00:00:01+00')",
            &[&a, &b],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO tick_size_changes (asset_id, condition_id, old_tick_size, new_tick_size, source_ts, received_at) VALUES
             ($1, '0xaa', 0.01, 0.001, '2026-11-27 11:00:00+00', '2026-11-27 11:00:00.1+00')",
            &[&a],
        )
        .await
        .unwrap();
    let snapshots = [
        "SELECT asset_id, condition_id, price::text, size::text, side, source_ts::text, received_at::text, source, tx_hash,
                fee_rate_bps::text FROM trades ORDER BY source_ts, source",
        "SELECT asset_id, condition_id, best_bid::text, best_ask::text, spread::text, source_ts::text, received_at::text,
                NULL, NULL, NULL FROM quotes ORDER BY source_ts",
        "SELECT asset_id, condition_id, old_tick_size::text, new_tick_size::text, source_ts::text, received_at::text,
                NULL, NULL, NULL, NULL FROM tick_size_changes ORDER BY source_ts",
    ];
    let mut before = Vec::new();
    for q in snapshots {
        before.push(
            client
                .query(q, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (0..10).map(|i| r.get::<_, Option<String>>(i)).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(before.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2, 1]);
    // Through every later migration too (7, then 8's rewrite of the trades).
    let applied = migrate::run(&mut client).await.unwrap();
    assert_eq!(applied.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [7, 8, 9, 10, 11, 12, 13], "{applied:?}");
    for (q, was) in snapshots.iter().zip(&before) {
        let now: Vec<Vec<Option<String>>> =
            client.query(*q, &[]).await.unwrap().iter().map(|r| (0..10).map(|i| r.get::<_, Option<String>>(i)).collect()).collect();
        assert_eq!(&now, was, "{q}");
    }
    assert_eq!(db.count("SELECT count(*) FROM trades_p20261127").await, 2, "rows land in their day");
    assert_eq!(db.count("SELECT count(*) FROM trades_p20261129").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM quotes_p20261128").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM stream_tokens WHERE condition_key IS NOT NULL").await, 2);
    // The identity holds on the converted rows: the same fill again is refused.
    let dup = client
        .execute(
            "INSERT INTO trades_compact (token_key, buy, backfill, source_ts, received_at, price, size, tx)
                  SELECT token_key, true, false, '2026-11-27 10:00:00.123+00', now(), 0.34, 2710.170, trade_tx_bytes($1)
                  FROM stream_tokens WHERE token_id = $2",
            &[&tx, &a],
        )
        .await;
    assert!(dup.is_err_and(|e| e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)));
}

/// A database of the previous release (migrations 1–7) is converted in place to the leaner
/// level changes and trades: the views answer exactly what they did (every hash form, rows
/// with and without a market, prices with their own digits), rows stay in their days'
/// partitions, the level changes' market moves to the token dictionary, and the level change
/// indexes are the token B-tree and the time BRIN.
#[tokio::test]
async fn the_previous_release_is_converted_in_place_to_leaner_level_changes_and_trades() {
    let db = pg::fresh_db().await;
    let mut client = db.client().await;
    migrate::run_to(&mut client, 7).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS price_changes_p20261127 PARTITION OF price_changes_compact FOR VALUES FROM ('2026-11-27 00:00+00') TO ('2026-11-28 00:00+00');
             CREATE TABLE IF NOT EXISTS price_changes_p20261128 PARTITION OF price_changes_compact FOR VALUES FROM ('2026-11-28 00:00+00') TO ('2026-11-29 00:00+00');
             CREATE TABLE IF NOT EXISTS trades_p20261127 PARTITION OF trades_compact FOR VALUES FROM ('2026-11-27 00:00+00') TO ('2026-11-28 00:00+00');
             INSERT INTO stream_tokens (token_key, token_id) VALUES (1, '8441'), (2, '2904');
             INSERT INTO stream_conditions (condition_key, condition_id) VALUES (7, '0xaa');
             INSERT INTO price_changes_compact (token_key, source_ts, received_at, condition_key, buy, price, size, best_bid, best_ask, hash_hex, hash_text) VALUES
             (1, '2026-11-27 10:00:00.123+00', '2026-11-27 10:00:00.2+00', 7, true, 0.340, 2710.17, 0.34, 0.35, decode('e0a71c3b9d2f4e6a8b0c1d2e3f4a5b6c7d8e9f01', 'hex'), NULL),
             (1, '2026-11-27 10:00:00.124+00', '2026-11-27 10:00:00.2+00', 7, false, 0.5, 0, NULL, NULL, NULL, 'not-a-hex-hash'),
             (1, '2026-11-27 10:00:00.125+00', '2026-11-27 10:00:00.2+00', 7, false, 0.5, 1, NULL, 0.6, NULL, 'nineteen-bytes-long'),
             (2, '2026-11-28 23:59:59.999+00', '2026-11-29 00:00:00.01+00', NULL, false, 0.660, 12.500, 0.65, 0.66, NULL, NULL);
             INSERT INTO trades_compact (token_key, buy, backfill, source_ts, received_at, price, size, tx, fee_rate_bps) VALUES
             (1, true, false, '2026-11-27 10:00:00.123+00', '2026-11-27 10:00:00.2+00', 0.340, 2710.17, trade_tx_bytes('0x' || repeat('5c2b9f0e', 8)), 0),
             (2, false, true, '2026-11-27 10:00:00+00', '2026-11-28 09:00:00+00', 0.34, 5, trade_tx_bytes('not-a-hash'), NULL),
             (2, false, false, '2026-11-27 11:00:00+00', '2026-11-28 11:00:00+00', 0.35, 5, NULL, 10);",
        )
        .await
        .unwrap();
    assert_eq!(db.count("SELECT count(*) FROM stream_tokens WHERE condition_key IS NULL").await, 2, "markets only in the rows");
    let snapshots = [
        "SELECT asset_id, condition_id, price::text, size::text, side, hash, best_bid::text, best_ask::text, source_ts::text,
                received_at::text FROM price_changes ORDER BY source_ts",
        "SELECT asset_id, condition_id, price::text, size::text, side, source_ts::text, received_at::text, source, tx_hash,
                fee_rate_bps::text FROM trades ORDER BY source_ts, source",
    ];
    let read = |rows: Vec<tokio_postgres::Row>| -> Vec<Vec<Option<String>>> {
        rows.iter().map(|r| (0..10).map(|i| r.get::<_, Option<String>>(i)).collect()).collect()
    };
    let mut before = Vec::new();
    for q in snapshots {
        before.push(read(client.query(q, &[]).await.unwrap()));
    }
    assert_eq!(before[0][0][1].as_deref(), Some("0xaa"));
    let applied = migrate::run(&mut client).await.unwrap();
    assert_eq!(applied.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [8, 9, 10, 11, 12, 13], "{applied:?}");
    // The one difference: the trades of a token whose market only its level changes named
    // now show that market too.
    for row in before[1].iter_mut().filter(|r| r[0].as_deref() == Some("8441")) {
        row[1] = Some("0xaa".to_string());
    }
    for (q, was) in snapshots.iter().zip(&before) {
        assert_eq!(&read(client.query(*q, &[]).await.unwrap()), was, "{q}");
    }
    assert_eq!(db.count("SELECT count(*) FROM price_changes_p20261127").await, 3, "rows stay in their day");
    assert_eq!(db.count("SELECT count(*) FROM price_changes_p20261128").await, 1);
    // Migration 9 moves no row; the table in ticks gets a partition for each of those days.
    assert_eq!(db.count("SELECT count(*) FROM price_changes_ticks_p20261127").await, 0);
    assert_eq!(db.count("SELECT count(*) FROM price_changes_ticks_p20261128").await, 0);
    assert_eq!(db.count("SELECT count(*) FROM trades_p20261127").await, 3);
    assert_eq!(
        db.count("SELECT count(*) FROM stream_tokens WHERE token_id = '8441' AND condition_key = 7").await,
        1,
        "the level changes' market is now the token's"
    );
    let indexes: Vec<String> = client
        .query(
            "SELECT am.amname || ' ' || pg_get_indexdef(i.indexrelid, 1, true) FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
                JOIN pg_am am ON am.oid = x.relam WHERE i.indrelid = 'price_changes_compact'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(indexes, ["brin source_ts", "btree token_key"]);
    // The converted trades keep their identity.
    let dup = client
        .execute("INSERT INTO trades_compact (token_key, buy, backfill, source_ts, received_at, price, size, tx)
                  VALUES (1, true, false, '2026-11-27 10:00:00.123+00', now(), 0.34, 2710.170, trade_tx_bytes('0x' || repeat('5c2b9f0e', 8)))", &[])
        .await;
    assert!(dup.is_err_and(|e| e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)));
}

/// The shapes a distributed PostgreSQL (Citus) needs later, read from the catalog: the hot
/// table partitioned by the time in its identity, the token key first in every B-tree, no
/// foreign keys on it, single-level partitions.
#[tokio::test]
async fn the_compact_tables_have_the_shapes_a_distributed_database_needs() {
    let db = pg::fresh_db().await;
    let pool = db.pool().await;
    collector::db::partitions::maintain(&pool, collector::clock::today(), Default::default()).await.unwrap();
    let client = db.client().await;
    for table in collector::db::partitions::TABLES {
        let key: String = client
            .query_one(
                "SELECT a.attname::text FROM pg_partitioned_table pt JOIN pg_class c ON c.oid = pt.partrelid
                        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]
                        WHERE c.relname = $1 AND pt.partstrat = 'r'",
                &[table],
            )
            .await
            .unwrap_or_else(|e| panic!("{table} is range partitioned: {e}"))
            .get(0);
        assert_eq!(key, "source_ts", "{table}");
    }
    for table in ["price_changes_ticks", "price_changes_compact", "trades_compact", "quotes_compact", "tick_size_changes_compact"] {
        // Every B-tree leads with the token key (a shard's lookups); every unique index also
        // holds the partition column. A BRIN index on the time needs neither.
        let indexes = client
            .query(
                "SELECT a.attname::text, i.indisunique, 'source_ts' = ANY(ARRAY(SELECT b.attname::text FROM pg_attribute b
                        WHERE b.attrelid = c.oid AND b.attnum = ANY(i.indkey))), am.amname::text
                    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
                    JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_am am ON am.oid = x.relam
                    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
                    WHERE c.relname = $1",
                &[&table],
            )
            .await
            .unwrap();
        assert!(!indexes.is_empty(), "{table} has indexes");
        for r in &indexes {
            let (first, unique, has_ts, method): (String, bool, bool, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
            match method.as_str() {
                "btree" => assert_eq!(first, "token_key", "{table}"),
                "brin" => assert_eq!(first, "source_ts", "{table}"),
                other => panic!("{table}: unexpected index method {other}"),
            }
            assert!(!unique || has_ts, "{table}: a unique index holds source_ts");
        }
        assert_eq!(
            db.count(&format!("SELECT count(*) FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype = 'f'")).await,
            0,
            "{table}"
        );
    }
    assert_eq!(
        db.count(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
                         WHERE c.relname = 'trades_compact' AND i.indisunique"
        )
        .await,
        1,
        "trades have a unique identity"
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM pg_partitioned_table pt JOIN pg_inherits i ON i.inhparent = pt.partrelid
                         JOIN pg_partitioned_table sub ON sub.partrelid = i.inhrelid"
        )
        .await,
        0,
        "single level"
    );
}

/// The daemon's partition maintenance: days ahead exist; with a retention, older days go.
#[tokio::test]
async fn partitions_are_made_ahead_and_dropped_past_the_retention() {
    use chrono::{Duration, Utc};
    use collector::db::partitions;
    let db = pg::fresh_db().await;
    let pool = db.pool().await;
    let today = Utc::now().date_naive();
    partitions::ensure(&pool, today - Duration::days(40), today - Duration::days(38)).await.unwrap();
    let (made, dropped) = partitions::maintain(&pool, collector::clock::today(), Default::default()).await.unwrap();
    assert!(dropped.is_empty(), "retention 0 keeps everything");
    for table in partitions::TABLES {
        let days = partitions::days(&pool, table).await.unwrap();
        for d in -1..=2 {
            assert!(days.contains(&(today + Duration::days(d))), "{table} day {d} ahead: {days:?} (made {made})");
        }
    }
    // Each table keeps its own number of days: level changes 30, trades everything, quotes 39.
    let retention = partitions::Retention { level_changes: 30, trades: 0, quotes: 39 };
    let (_, dropped) = partitions::maintain(&pool, collector::clock::today(), retention).await.unwrap();
    let mut dropped_sorted = dropped.clone();
    dropped_sorted.sort();
    let day = |d: i64| (today - Duration::days(d)).format("%Y%m%d").to_string();
    let mut expected: Vec<String> = (38..=40)
        .flat_map(|d| [format!("price_changes_p{}", day(d)), format!("price_changes_ticks_p{}", day(d))])
        .chain([format!("quotes_p{}", day(40))])
        .collect();
    expected.sort();
    assert_eq!(dropped_sorted, expected);
    for table in ["price_changes_compact", "price_changes_ticks"] {
        let days = partitions::days(&pool, table).await.unwrap();
        assert!(days.iter().all(|d| *d >= today - Duration::days(30)), "{table}: {days:?}");
        assert!(days.contains(&today), "{table}");
    }
    assert!(partitions::days(&pool, "trades_compact").await.unwrap().contains(&(today - Duration::days(40))), "trades kept");
}

/// Closed days are compacted: their B-tree indexes rebuilt packed full, once, keeping every row
/// and the trades' uniqueness; an open day is left alone; an interrupted rebuild's leftover
/// goes.
#[tokio::test]
async fn closed_days_are_compacted_once_and_stay_unique() {
    use chrono::{Duration, Utc};
    use collector::db::partitions::{self, partition_name};
    let db = pg::fresh_db().await;
    let pool = db.pool().await;
    let today = Utc::now().date_naive();
    partitions::ensure(&pool, today - Duration::days(3), today).await.unwrap();
    let c = db.client().await;
    c.batch_execute("INSERT INTO stream_tokens (token_key, token_id) SELECT g, 'token ' || g FROM generate_series(1, 300) g")
        .await
        .unwrap();
    // Trades as the stream stores them: time order, the tokens interleaved, so each token's
    // new rows land at the end of its key range in the middle of the index.
    for day in [3, 1] {
        c.batch_execute(&format!(
            "INSERT INTO trades_compact (source_ts, received_at, token_key, buy, backfill, price, size, tx, fee_rate_bps)
             SELECT date_trunc('day', now()) - interval '{day} days' + i * interval '1 ms', now(), 1 + (i * 7919) % 300, i % 2 = 0,
                    false, 0.35, 10 + i / 1000000.0, '\\x01'::bytea || sha256(i::text::bytea), 0
             FROM generate_series(1, 30000) i"
        ))
        .await
        .unwrap();
    }
    // A rebuild of three days ago was interrupted: its invalid leftover is there.
    let old = partition_name("trades_compact", today - Duration::days(3));
    let failed = c.batch_execute(&format!("CREATE UNIQUE INDEX CONCURRENTLY {old}_identity_ccnew ON {old} ((1))")).await;
    assert!(failed.is_err(), "the leftover's build fails on duplicates");
    assert_eq!(db.count(&format!("SELECT count(*) FROM pg_index WHERE indrelid = '{old}'::regclass AND NOT indisvalid")).await, 1);

    let done = partitions::compact_closed(&pool, today).await.unwrap();
    let names: Vec<&str> = done.iter().map(|c| c.partition.as_str()).collect();
    for table in partitions::TABLES {
        for d in [3, 2] {
            assert!(names.contains(&partition_name(table, today - Duration::days(d)).as_str()), "{table} day -{d} compacted: {names:?}");
        }
        for d in [1, 0] {
            assert!(
                !names.contains(&partition_name(table, today - Duration::days(d)).as_str()),
                "{table} day -{d} is not closed: {names:?}"
            );
        }
    }
    let trades = done.iter().find(|c| c.partition == old).unwrap();
    assert_eq!(trades.indexes, 1);
    // Packed full: a 36-byte entry per row and the inner pages (at the default fillfactor of
    // 90 a rebuild gives ~40.5 bytes a row; left as written, ~44 here).
    assert!(
        trades.bytes_after < trades.bytes_before && (trades.bytes_after as f64) < 38.5 * 30_000.0,
        "the identity index packed: {trades:?}"
    );
    assert_eq!(
        db.count(&format!("SELECT count(*) FROM pg_index WHERE indrelid = '{old}'::regclass AND NOT indisvalid")).await,
        0,
        "leftover dropped"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                           WHERE x.indrelid = '{old}'::regclass AND obj_description(c.oid, 'pg_class') = '{}'",
            partitions::COMPACTED
        ))
        .await,
        1
    );
    // Once only: a second pass finds nothing to do.
    assert!(partitions::compact_closed(&pool, today).await.unwrap().is_empty());
    // Every row is there, and a trade stored again is still refused.
    assert_eq!(db.count(&format!("SELECT count(*) FROM {old}")).await, 30_000);
    assert_eq!(db.count("SELECT count(*) FROM trades WHERE asset_id = 'token 7'").await, 200);
    let again = c
        .execute(&format!("INSERT INTO trades_compact SELECT * FROM {old} ORDER BY source_ts LIMIT 10 ON CONFLICT DO NOTHING"), &[])
        .await
        .unwrap();
    assert_eq!(again, 0, "the compacted identity index still refuses a stored trade");
}

/// Migration 10 gives back the dictionary keys an earlier release spent past the largest key
/// in use: the next new token gets the key after it, and existing keys stay.
#[tokio::test]
async fn the_previous_releases_spent_dictionary_keys_are_given_back() {
    let db = pg::fresh_db().await;
    let mut client = db.client().await;
    migrate::run_to(&mut client, 9).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO stream_conditions (condition_id) VALUES ('0xaa'), ('0xbb');
             INSERT INTO stream_tokens (token_id) VALUES ('1'), ('2'), ('3');
             SELECT setval(pg_get_serial_sequence('stream_tokens', 'token_key'), 1900000000);
             SELECT setval(pg_get_serial_sequence('stream_conditions', 'condition_key'), 1900000000);",
        )
        .await
        .unwrap();
    migrate::run(&mut client).await.unwrap();
    let t: i32 = client.query_one("INSERT INTO stream_tokens (token_id) VALUES ('4') RETURNING token_key", &[]).await.unwrap().get(0);
    let c: i32 =
        client.query_one("INSERT INTO stream_conditions (condition_id) VALUES ('0xcc') RETURNING condition_key", &[]).await.unwrap().get(0);
    assert_eq!((t, c), (4, 3));
    assert_eq!(db.count("SELECT count(*) FROM stream_tokens WHERE token_key <= 3").await, 3, "existing keys kept");
    // On an empty dictionary too.
    let empty = pg::fresh_db().await;
    let mut client = empty.client().await;
    migrate::run(&mut client).await.unwrap();
    let t: i32 = client.query_one("INSERT INTO stream_tokens (token_id) VALUES ('1') RETURNING token_key", &[]).await.unwrap().get(0);
    assert_eq!(t, 1);
}
