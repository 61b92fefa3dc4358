//! V9: level changes in ticks. A level change's price and the best bid and ask beside it are
//! prices of one token, between 0 and 1 in ticks of at least 0.0001; as three NUMERICs they
//! took 15 bytes of the row, as SMALLINT counts of 0.0001 they take 6, and the row drops
//! from 88 to 80 bytes (the header's 8-byte alignment decides: 8 bytes less or nothing).
//!
//! - `price_changes_ticks` takes every level change whose three prices each read back as the
//!   same text from a count of 0.0001 (`price_from_ticks`: 0 to 3.2767, at most four
//!   decimals, no trailing zero — `0.5`, `0.47`, `0.0025`, `1`; a missing best bid or ask
//!   stays NULL). Its size stays NUMERIC (sizes have no bound or tick).
//! - Any other level change (`0.50`, `0.00001`, `5`) goes to `price_changes_compact`, as
//!   before, and keeps its exact text. So does everything stored before this migration: the
//!   migration moves no row, and an upgrade takes no time whatever the database's size.
//! - The `price_changes` view reads both (`UNION ALL`), with the same columns as before.
//!   A row's table is a function of its values, so a replayed row meets its first copy.
//! - Same indexes, partitions (`price_changes_ticks_pYYYYMMDD`, one for each day the other
//!   table has) and retention (`stream.retention_days`) as `price_changes_compact`.

pub fn migration() -> String {
    r#"
-- A count of 0.0001 as the price it stands for, with no trailing zero: 5000 → 0.5.
CREATE FUNCTION price_from_ticks(ticks smallint) RETURNS numeric LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT trim_scale(ticks * 0.0001)
$$;

CREATE TABLE price_changes_ticks (
    source_ts TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    token_key INTEGER NOT NULL,
    price SMALLINT NOT NULL,
    best_bid SMALLINT,
    best_ask SMALLINT,
    buy BOOLEAN NOT NULL,
    size NUMERIC NOT NULL,
    hash BYTEA,
    -- As in price_changes_compact: 20 bytes, or a NUL-free text after its prefix.
    CONSTRAINT price_changes_ticks_hash_form CHECK (length(hash) = 20 OR get_byte(hash, 0) = 0
        AND position('\x00'::bytea IN substr(hash, CASE WHEN length(hash) = 21 AND get_byte(hash, 1) = 0 THEN 3 ELSE 2 END)) = 0)
) PARTITION BY RANGE (source_ts);
CREATE INDEX price_changes_ticks_token ON price_changes_ticks (token_key);
CREATE INDEX price_changes_ticks_time ON price_changes_ticks USING brin (source_ts) WITH (autosummarize = on);

DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'price_changes_compact'::regclass
    LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF price_changes_ticks %s',
                       replace(r.name, 'price_changes_p', 'price_changes_ticks_p'), r.bound);
    END LOOP;
END $$;

CREATE OR REPLACE VIEW price_changes AS
SELECT t.token_id AS asset_id, c.condition_id, p.price, p.size,
       CASE WHEN p.buy THEN 'BUY' ELSE 'SELL' END AS side,
       level_hash_text(p.hash) AS hash,
       p.best_bid, p.best_ask, p.source_ts, p.received_at
FROM (SELECT token_key, price_from_ticks(price) AS price, size, buy, hash,
             price_from_ticks(best_bid) AS best_bid, price_from_ticks(best_ask) AS best_ask, source_ts, received_at
      FROM price_changes_ticks
      UNION ALL
      SELECT token_key, price, size, buy, hash, best_bid, best_ask, source_ts, received_at
      FROM price_changes_compact) p
JOIN stream_tokens t ON t.token_key = p.token_key
LEFT JOIN stream_conditions c ON c.condition_key = t.condition_key;
"#
    .to_string()
}
