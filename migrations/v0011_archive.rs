//! V11: the hourly Parquet archive's bookkeeping (docs/archive.md).
//!
//! - `archive_files`: one row per file written (and per hour found empty): the table, the
//!   hour, the part (0: the hour's file; 1, 2, …: supplements with rows that came later),
//!   where it is, its rows, bytes and key checksum, the interval of source times it covers,
//!   and the database snapshot it was read in — rows not visible in that snapshot are the
//!   ones a later part must take.
//! - `archive_dirty`: hours that received rows after they were archived (a spool replay, a
//!   backfill), marked by the writer in the rows' own transaction.
//! - `collector_xid8(xid)`: a row's inserting transaction as the 64-bit id that
//!   `pg_visible_in_snapshot` compares (xmin is 32 bits; rows are hours to days old, well
//!   within one epoch of the current one).
//! - `stream_gaps.archived_at`: gaps are archived once settled (closed, backfill done).

pub fn migration() -> String {
    r#"
CREATE TABLE archive_files (
    table_name TEXT NOT NULL,
    hour TIMESTAMPTZ NOT NULL,
    part INTEGER NOT NULL,
    path TEXT,
    rows BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    checksum TEXT NOT NULL,
    covered_from TIMESTAMPTZ NOT NULL,
    covered_to TIMESTAMPTZ NOT NULL,
    snapshot pg_snapshot NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, hour, part)
);

CREATE TABLE archive_dirty (
    table_name TEXT NOT NULL,
    hour TIMESTAMPTZ NOT NULL,
    marked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, hour)
);

CREATE FUNCTION collector_xid8(x xid) RETURNS xid8 LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT ((CASE WHEN x::text::bigint <= (n & 4294967295) THEN n >> 32 ELSE (n >> 32) - 1 END) << 32
            | x::text::bigint)::text::xid8
    FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS n) s
$$;

ALTER TABLE stream_gaps ADD COLUMN archived_at TIMESTAMPTZ;
"#
    .to_string()
}
