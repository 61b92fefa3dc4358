//! V3: the database's identity (a random id made once, so an on-disk spool written for one
//! database is never replayed into another), and backfill bookkeeping on `stream_gaps`
//! (attempts, and the interval a backfill cut short did cover).

use barrel::backend::Pg;
use barrel::{Migration, types};

pub fn migration() -> String {
    let mut m = Migration::new();
    m.create_table("collector_database", |t| {
        t.add_column("id", types::custom("UUID PRIMARY KEY DEFAULT gen_random_uuid()"));
        t.add_column("created_at", types::custom("TIMESTAMPTZ NOT NULL DEFAULT now()"));
    });
    let mut sql = m.make::<Pg>();
    sql.push_str(
        "\nINSERT INTO collector_database DEFAULT VALUES;\n\
         ALTER TABLE stream_gaps ADD COLUMN backfill_attempts INTEGER NOT NULL DEFAULT 0;\n\
         ALTER TABLE stream_gaps ADD COLUMN backfill_covered_from TIMESTAMPTZ;\n\
         -- Gaps whose backfill is still owed, found at every start.\n\
         CREATE INDEX stream_gaps_backfill_owed ON stream_gaps (started_at) WHERE backfill_status IS NULL OR backfill_status LIKE 'retrying%';\n",
    );
    sql
}
