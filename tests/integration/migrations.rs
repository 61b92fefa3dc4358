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
    client
        .execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'future', 'x')", &[])
        .await
        .unwrap();
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
    let err = collector::db::connect(&cfg.database).await.err().expect("an untrusted certificate is refused");
    assert!(err.to_string().contains("certificate"), "{err}");
}
