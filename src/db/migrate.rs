//! Embedded, ordered, checksummed migrations (the files in `migrations/`, written with
//! barrel), applied under a PostgreSQL advisory lock, each in its own transaction, recorded in
//! `schema_migrations`. A database holding a migration this binary does not know, or one whose
//! checksum differs, is refused.

use tokio_postgres::Client;

#[path = "../../migrations/v0001_catalog_and_books.rs"]
mod v0001;
#[path = "../../migrations/v0002_stream.rs"]
mod v0002;
#[path = "../../migrations/v0003_database_identity_and_backfill.rs"]
mod v0003;
#[path = "../../migrations/v0004_price_changes_without_unique_index.rs"]
mod v0004;
#[path = "../../migrations/v0005_compact_price_changes.rs"]
mod v0005;
#[path = "../../migrations/v0006_catalog_history.rs"]
mod v0006;
#[path = "../../migrations/v0007_compact_trades_and_quotes.rs"]
mod v0007;
#[path = "../../migrations/v0008_leaner_level_changes_and_trades.rs"]
mod v0008;
#[path = "../../migrations/v0009_level_changes_in_ticks.rs"]
mod v0009;
#[path = "../../migrations/v0010_compact_dictionary_keys.rs"]
mod v0010;
#[path = "../../migrations/v0011_archive.rs"]
mod v0011;
#[path = "../../migrations/v0012_stream_instances.rs"]
mod v0012;
#[path = "../../migrations/v0013_slice_writers.rs"]
mod v0013;

/// One migration: its version (ordering), name and SQL generator.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: fn() -> String,
}

/// Every migration, in order. Append only.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "catalog_and_books", sql: v0001::migration },
    Migration { version: 2, name: "stream", sql: v0002::migration },
    Migration { version: 3, name: "database_identity_and_backfill", sql: v0003::migration },
    Migration { version: 4, name: "price_changes_without_unique_index", sql: v0004::migration },
    Migration { version: 5, name: "compact_price_changes", sql: v0005::migration },
    Migration { version: 6, name: "catalog_history", sql: v0006::migration },
    Migration { version: 7, name: "compact_trades_and_quotes", sql: v0007::migration },
    Migration { version: 8, name: "leaner_level_changes_and_trades", sql: v0008::migration },
    Migration { version: 9, name: "level_changes_in_ticks", sql: v0009::migration },
    Migration { version: 10, name: "compact_dictionary_keys", sql: v0010::migration },
    Migration { version: 11, name: "archive", sql: v0011::migration },
    Migration { version: 12, name: "stream_instances", sql: v0012::migration },
    Migration { version: 13, name: "slice_writers", sql: v0013::migration },
];

/// Advisory lock key: "collector" in ASCII, so concurrent starts serialise on migrations.
const LOCK_KEY: i64 = 0x636f6c6c6563746f;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "database holds migration {version} ({name}) that this binary does not know; refusing to run an older binary against a newer schema"
    )]
    Unknown { version: i64, name: String },
    #[error("migration {version} ({name}) was altered: database checksum {applied}, binary {expected}")]
    Altered { version: i64, name: String, applied: String, expected: String },
    #[error("migration {version} ({name}) failed: {source}")]
    Failed {
        version: i64,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("migration bookkeeping failed: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// FNV-1a 64 of the SQL text, as hex. Detects edits, not attacks.
pub fn checksum(sql: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in sql.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Applies pending migrations; returns the `(version, name)` of each one applied now.
pub async fn run(client: &mut Client) -> Result<Vec<(i64, &'static str)>, MigrateError> {
    run_to(client, i64::MAX).await
}

/// [`run`], up to and including version `last` (to build a database of an earlier release,
/// for upgrade tests).
pub async fn run_to(client: &mut Client, last: i64) -> Result<Vec<(i64, &'static str)>, MigrateError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]).await?;
    let result = apply_pending(client, last).await;
    // Unlock even on failure; the session ending would release it too.
    let unlock = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]).await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_pending(client: &mut Client, last: i64) -> Result<Vec<(i64, &'static str)>, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY,
                name TEXT NOT NULL,
                checksum TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let rows = client.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version", &[]).await?;
    for row in &rows {
        let (version, name, applied): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let Some(known) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(MigrateError::Unknown { version, name });
        };
        let expected = checksum(&(known.sql)());
        if expected != applied {
            return Err(MigrateError::Altered { version, name, applied, expected });
        }
    }
    let mut applied_now = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version <= last) {
        if rows.iter().any(|r| r.get::<_, i64>(0) == m.version) {
            continue;
        }
        let sql = (m.sql)();
        let fail = |source| MigrateError::Failed { version: m.version, name: m.name, source };
        let tx = client.transaction().await.map_err(fail)?;
        tx.batch_execute(&sql).await.map_err(fail)?;
        tx.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", &[&m.version, &m.name, &checksum(&sql)])
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        applied_now.push((m.version, m.name));
    }
    Ok(applied_now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_strictly_increasing() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
    }

    /// Pins each released migration's checksum: a barrel upgrade that changes the generated
    /// SQL, or an edit of a released file, fails here instead of refusing deployed databases.
    #[test]
    fn released_migrations_are_unchanged() {
        let pinned = [
            (1, "5eb14fa7afbe3289"),
            (2, "54ad5e46cc3c36e1"),
            (3, "2abb8eedc709d9f3"),
            (4, "5291e4c8cce6f401"),
            (5, "9ea48bce7e423c81"),
            (6, "b2070d1199fe77cd"),
            (7, "742e6540374c7c2f"),
            (8, "d94f1b5d2b925dac"),
            (9, "1c99a2fb8ee4931f"),
            (10, "3f7ab6c11c07cc59"),
            (11, "865dd0ce1f109462"),
        ];
        for (version, sum) in pinned {
            let m = MIGRATIONS.iter().find(|m| m.version == version).unwrap();
            assert_eq!(checksum(&(m.sql)()), sum, "migration {version} changed:\n{}", (m.sql)());
        }
    }
}
