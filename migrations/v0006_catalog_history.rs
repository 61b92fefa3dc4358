//! V6: progress of the catalog history sweep (every closed event and market, once), so it
//! resumes where it stopped after a restart.

use barrel::backend::Pg;
use barrel::{Migration, types};

pub fn migration() -> String {
    let mut m = Migration::new();
    m.create_table("catalog_history", |t| {
        t.add_column("id", types::custom("INTEGER PRIMARY KEY CHECK (id = 1)"));
        t.add_column("next_cursor", types::text().nullable(true));
        t.add_column("pages", types::custom("BIGINT NOT NULL DEFAULT 0"));
        t.add_column("markets", types::custom("BIGINT NOT NULL DEFAULT 0"));
        t.add_column("started_at", types::custom("TIMESTAMPTZ NOT NULL DEFAULT now()"));
        t.add_column("updated_at", types::custom("TIMESTAMPTZ NOT NULL DEFAULT now()"));
        t.add_column("finished_at", types::custom("TIMESTAMPTZ").nullable(true));
    });
    m.make::<Pg>()
}
