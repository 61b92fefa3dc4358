//! V13: redundant instances of one slice (docs/scaling.md).
//!
//! - `stream_writers`: one row per slice (`"i/n"`) whose level changes an instance writes: the
//!   fencing epoch (raised by each takeover; every batch of level changes checks it in its own
//!   transaction, holding the row `FOR SHARE`), the instance that writes and since when.
//! - `stream_instances.slice_role`: `writer` (this instance writes its slice's level changes),
//!   `standby` (holds them in memory, ready to take over) or `all` (no election: writes all);
//!   `committed_through`: how far its commits reached (its receive clock, reported every few
//!   seconds; a takeover compares it with what its standby window still holds). Kept off the
//!   fenced row, which the batches hold.
//! - `stream_gaps.instance`: the instance that recorded a gap (NULL: before this release, one
//!   instance per database). Each instance opens, closes and backfills its own gaps.
//! - `stream_gaps.filled_by`, `filled_rows`, `filled_from`: a gap of a slice's writer whose level
//!   changes a standby of the slice wrote from its memory window — which instance, how many
//!   rows, and how far back its window reached (`filled_from <= started_at`: the whole gap).

pub fn migration() -> String {
    r#"
CREATE TABLE stream_writers (
    slice TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    instance TEXT NOT NULL,
    since TIMESTAMPTZ NOT NULL
);
ALTER TABLE stream_instances ADD COLUMN slice_role TEXT NOT NULL DEFAULT 'standby'
    CHECK (slice_role IN ('writer', 'standby', 'all'));
ALTER TABLE stream_instances ADD COLUMN committed_through TIMESTAMPTZ;
ALTER TABLE stream_gaps ADD COLUMN instance TEXT;
ALTER TABLE stream_gaps ADD COLUMN filled_by TEXT;
ALTER TABLE stream_gaps ADD COLUMN filled_rows INTEGER;
ALTER TABLE stream_gaps ADD COLUMN filled_from TIMESTAMPTZ;
CREATE INDEX stream_gaps_instance_open ON stream_gaps (instance) WHERE ended_at IS NULL;
"#
    .to_string()
}
