//! `[database] distributed = true`: the stream tables as Citus distributed tables on the token
//! key (colocated), the catalog and the dictionaries as reference tables (docs/scaling.md,
//! docs/schema.md "Scaling past one database"). Run after the migrations, on the coordinator,
//! each step once (a table Citus already knows is left alone), so every start may run it. The
//! write path does not change: binary `COPY` through the coordinator; the daemon's day
//! partitions (`CREATE TABLE … PARTITION OF`) are propagated by Citus.
//!
//! Citus is not packaged for Debian and not installed on the project's machines: the steps are
//! tested against a Citus URL when `COLLECTOR_TEST_CITUS_URL` names one (skipped otherwise);
//! on plain PostgreSQL the setting is refused with a clear error, and the shapes Citus needs
//! are checked by a test of the catalog.

use tokio_postgres::GenericClient;

use super::DbError;

/// How one table is placed.
pub enum Placement {
    /// Copied to every node (small, joined with everything).
    Reference,
    /// Split by `column`, colocated with `with` (or the first such table).
    Distributed { column: &'static str, with: Option<&'static str> },
}

/// Every table Citus places, in the order the steps run (reference tables first).
pub const PLACEMENT: &[(&str, Placement)] = &[
    ("events", Placement::Reference),
    ("markets", Placement::Reference),
    ("tokens", Placement::Reference),
    ("stream_tokens", Placement::Reference),
    ("stream_conditions", Placement::Reference),
    ("price_changes_ticks", Placement::Distributed { column: "token_key", with: None }),
    ("price_changes_compact", Placement::Distributed { column: "token_key", with: Some("price_changes_ticks") }),
    ("trades_compact", Placement::Distributed { column: "token_key", with: Some("price_changes_ticks") }),
    ("quotes_compact", Placement::Distributed { column: "token_key", with: Some("price_changes_ticks") }),
    ("tick_size_changes_compact", Placement::Distributed { column: "token_key", with: Some("price_changes_ticks") }),
    // Keyed by its text token id: distributed on it, not colocated with the keyed tables.
    ("book_snapshots", Placement::Distributed { column: "token_id", with: Some("none") }),
];

/// The SQL placing `table`.
pub fn statement(table: &str, placement: &Placement) -> String {
    match placement {
        Placement::Reference => format!("SELECT create_reference_table('{table}')"),
        Placement::Distributed { column, with: None } => format!("SELECT create_distributed_table('{table}', '{column}')"),
        Placement::Distributed { column, with: Some(w) } => {
            format!("SELECT create_distributed_table('{table}', '{column}', colocate_with => '{w}')")
        }
    }
}

/// Places every table Citus does not know yet; returns the statements run. Refuses (a
/// configuration error, exit 78) on a database without the `citus` extension.
pub async fn run<C: GenericClient>(db: &C) -> Result<Vec<String>, DbError> {
    let citus: bool = db.query_one("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')", &[]).await?.get(0);
    if !citus {
        return Err(DbError::Settings(
            "database.distributed = true, but this database has no citus extension (on the Citus coordinator: \
             CREATE EXTENSION citus; see docs/scaling.md), or set distributed = false"
                .into(),
        ));
    }
    let mut ran = Vec::new();
    for (table, placement) in PLACEMENT {
        let known: bool =
            db.query_one("SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::text::regclass)", &[table]).await?.get(0);
        if !known {
            let sql = statement(table, placement);
            db.batch_execute(&sql).await?;
            tracing::info!(table, "distributed: {sql}");
            ran.push(sql);
        }
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_tables_come_first_and_the_keyed_tables_are_colocated() {
        let first_distributed = PLACEMENT.iter().position(|(_, p)| matches!(p, Placement::Distributed { .. })).unwrap();
        assert!(PLACEMENT[first_distributed..].iter().all(|(_, p)| matches!(p, Placement::Distributed { .. })));
        assert_eq!(
            statement("trades_compact", &PLACEMENT.iter().find(|(t, _)| *t == "trades_compact").unwrap().1),
            "SELECT create_distributed_table('trades_compact', 'token_key', colocate_with => 'price_changes_ticks')"
        );
        assert_eq!(statement("events", &Placement::Reference), "SELECT create_reference_table('events')");
    }
}
