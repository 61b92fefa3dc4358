//! V4: `price_changes` loses its wide unique index (asset, time, side, price, size, hash: two
//! 66–78 character ids and a 40-character hash per entry, most of the write cost of the
//! busiest table). Live level changes cannot repeat and are copied directly; rows that may
//! repeat (spool replays, retried batches) are inserted where absent, found through the new
//! `(asset_id, source_ts)` index, which also serves "the level changes of a token between t1
//! and t2". Raw SQL: barrel can neither drop an index nor add one to an existing table alone.

pub fn migration() -> String {
    "DROP INDEX IF EXISTS price_changes_identity;\n\
     CREATE INDEX price_changes_asset_ts ON price_changes (asset_id, source_ts);\n"
        .to_string()
}
