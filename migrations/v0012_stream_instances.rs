//! V12: `stream_instances`, one row per collector instance sharing this database
//! (docs/scaling.md): its name, the slice of the universe it records (`[stream] shard`), its
//! role (`leader`: the shared work runs there; `standby`), its version, when it started and
//! its last heartbeat (every 10 s; rows silent for a week are removed).

pub fn migration() -> String {
    r#"
CREATE TABLE stream_instances (
    instance TEXT PRIMARY KEY,
    slice TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('leader', 'standby')),
    version TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);
"#
    .to_string()
}
