//! V8: leaner level changes and trades. Measured with upstream's millisecond timestamps (one
//! per message, not shared by a burst of rows), a level change cost ~151 bytes and a trade
//! ~162 with their indexes; this takes them to ~103 and ~155. Both tables are rewritten in
//! place, partition by partition; the `price_changes` and `trades` views answer as before.
//!
//! Level changes (`price_changes_compact`):
//! - No NULL in a common row, so no null bitmap (8 bytes with the header's alignment): the two
//!   hash columns become one, `hash` — upstream's 40 lowercase hex digits as their 20 bytes,
//!   any other text as `\x00` + its UTF-8 (`\x00\x00` + it when it is 19 bytes long, so that
//!   length 20 always means a hex hash); see `level_hash_bytes` / `level_hash_text`.
//! - No `condition_key`: the market is the token's, recorded once in `stream_tokens` (as
//!   migration 7 did for trades).
//! - Columns ordered so that alignment wastes nothing: the 8-byte times first.
//! - The `(token_key, source_ts)` B-tree (~42 bytes a row: a 24-byte entry per row, since
//!   rows seldom share a token and a millisecond) becomes a B-tree on `token_key` alone,
//!   deduplicated into posting lists (~10 bytes a row), and a BRIN index on `source_ts` (a
//!   few bytes per megabyte: rows arrive in time order). A token over a time window is a
//!   bitmap AND of the two; the day partitions bound every scan.
//!
//! Trades (`trades_compact`): the same columns, the times first — 8 bytes less alignment
//! padding per row.

pub fn migration() -> String {
    r#"
CREATE FUNCTION level_hash_bytes(hash text) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN hash ~ '^[0-9a-f]{40}$' THEN decode(hash, 'hex')
                WHEN octet_length(hash) = 19 THEN '\x0000'::bytea || convert_to(hash, 'UTF8')
                ELSE '\x00'::bytea || convert_to(hash, 'UTF8') END
$$;
CREATE FUNCTION level_hash_text(hash bytea) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN length(hash) = 20 THEN encode(hash, 'hex')
                WHEN length(hash) = 21 AND get_byte(hash, 1) = 0 THEN convert_from(substr(hash, 3), 'UTF8')
                ELSE convert_from(substr(hash, 2), 'UTF8') END
$$;

-- The market of every token that level changes named, where the dictionary lacks it.
UPDATE stream_tokens s SET condition_key = (
    SELECT p.condition_key FROM price_changes_compact p
    WHERE p.token_key = s.token_key AND p.condition_key IS NOT NULL LIMIT 1)
WHERE s.condition_key IS NULL;

ALTER TABLE price_changes_compact RENAME TO price_changes_compact_v5;
CREATE TABLE price_changes_compact (
    source_ts TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    token_key INTEGER NOT NULL,
    buy BOOLEAN NOT NULL,
    price NUMERIC NOT NULL,
    size NUMERIC NOT NULL,
    best_bid NUMERIC,
    best_ask NUMERIC,
    hash BYTEA,
    -- Readable as text by the view: 20 bytes, or a NUL-free text after its prefix.
    CONSTRAINT price_changes_compact_hash_form CHECK (length(hash) = 20 OR get_byte(hash, 0) = 0
        AND position('\x00'::bytea IN substr(hash, CASE WHEN length(hash) = 21 AND get_byte(hash, 1) = 0 THEN 3 ELSE 2 END)) = 0)
) PARTITION BY RANGE (source_ts);
CREATE INDEX price_changes_compact_token ON price_changes_compact (token_key);
CREATE INDEX price_changes_compact_time ON price_changes_compact USING brin (source_ts) WITH (autosummarize = on);

ALTER TABLE trades_compact RENAME TO trades_compact_v7;
ALTER INDEX trades_compact_identity RENAME TO trades_compact_v7_identity;
CREATE TABLE trades_compact (
    source_ts TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    token_key INTEGER NOT NULL,
    buy BOOLEAN NOT NULL,
    backfill BOOLEAN NOT NULL,
    price NUMERIC NOT NULL,
    size NUMERIC NOT NULL,
    tx BYTEA,
    fee_rate_bps NUMERIC,
    CONSTRAINT trades_compact_tx_form CHECK (get_byte(tx, 0) = 1 AND length(tx) = 33
        OR get_byte(tx, 0) = 0 AND position('\x00'::bytea IN substr(tx, 2)) = 0)
) PARTITION BY RANGE (source_ts);
CREATE UNIQUE INDEX trades_compact_identity ON trades_compact (token_key, source_ts, trade_identity(buy, price, size, tx));

-- The views over the new tables (replaced in place: the same columns, so anything built on
-- them keeps working).
CREATE OR REPLACE VIEW price_changes AS
SELECT t.token_id AS asset_id, c.condition_id, p.price, p.size,
       CASE WHEN p.buy THEN 'BUY' ELSE 'SELL' END AS side,
       level_hash_text(p.hash) AS hash,
       p.best_bid, p.best_ask, p.source_ts, p.received_at
FROM price_changes_compact p
JOIN stream_tokens t ON t.token_key = p.token_key
LEFT JOIN stream_conditions c ON c.condition_key = t.condition_key;

CREATE OR REPLACE VIEW trades AS
SELECT t.token_id AS asset_id, c.condition_id, x.price, x.size,
       CASE WHEN x.buy THEN 'BUY' ELSE 'SELL' END AS side,
       x.source_ts, x.received_at,
       CASE WHEN x.backfill THEN 'backfill' ELSE 'ws' END AS source,
       trade_tx_text(x.tx) AS tx_hash, x.fee_rate_bps
FROM trades_compact x
JOIN stream_tokens t ON t.token_key = x.token_key
LEFT JOIN stream_conditions c ON c.condition_key = t.condition_key;

-- Each old partition becomes a new one of the same day and name, its rows copied in their
-- physical (arrival) order, which the BRIN index relies on.
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.relname::text AS name, p.relname::text AS parent, pg_get_expr(c.relpartbound, c.oid) AS bound
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname IN ('price_changes_compact_v5', 'trades_compact_v7') ORDER BY 1 LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', r.name, r.name || '_old');
        IF r.parent = 'price_changes_compact_v5' THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF price_changes_compact %s', r.name, r.bound);
            EXECUTE format('INSERT INTO %I (source_ts, received_at, token_key, buy, price, size, best_bid, best_ask, hash)
                            SELECT source_ts, received_at, token_key, buy, price, size, best_bid, best_ask,
                                   COALESCE(hash_hex, level_hash_bytes(hash_text)) FROM %I', r.name, r.name || '_old');
        ELSE
            EXECUTE format('CREATE TABLE %I PARTITION OF trades_compact %s', r.name, r.bound);
            EXECUTE format('INSERT INTO %I (source_ts, received_at, token_key, buy, backfill, price, size, tx, fee_rate_bps)
                            SELECT source_ts, received_at, token_key, buy, backfill, price, size, tx, fee_rate_bps FROM %I',
                           r.name, r.name || '_old');
        END IF;
        EXECUTE format('DROP TABLE %I', r.name || '_old');
    END LOOP;
END $$;
DROP TABLE price_changes_compact_v5;
DROP TABLE trades_compact_v7;

"#
    .to_string()
}
