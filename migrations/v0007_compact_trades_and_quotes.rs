//! V7: trades, quotes and tick size changes in compact rows, the way migration 5 stored level
//! changes. Each row keys its token by the `stream_tokens` integer; the token's market is
//! recorded once, in the dictionary (`stream_tokens.condition_key`), not in every row. Trades
//! and quotes are partitioned by `source_ts` (UTC days, made ahead by the daemon, dropped past
//! their own retention); tick size changes are rare and kept whole. The documented `trades`,
//! `quotes` and `tick_size_changes` stay queryable, unchanged, as views. Existing rows are
//! converted in place.
//!
//! A trade's identity was a unique index on six columns, two of them 66–78 character texts
//! (~80 bytes per row). It is now `(token_key, source_ts, trade_identity(…))`: a 64-bit hash of
//! side, normalised price and size, and transaction hash, computed by PostgreSQL into the
//! index only (not stored in the row). Two distinct fills collide only with the same token,
//! the same millisecond and the same 64-bit hash.
//!
//! The transaction hash (`tx`) is one byte saying its form, then the value: `\x01` and the 32
//! bytes of an upstream `0x` + 64-lowercase-hex hash, or `\x00` and the UTF-8 text of any other
//! value (exactly as received; a NUL in it is refused, as the text column refused it). One
//! column, so a stream trade's row has no NULL and needs no null bitmap.

pub fn migration() -> String {
    r#"
CREATE FUNCTION trade_tx_bytes(tx text) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN tx ~ '^0x[0-9a-f]{64}$' THEN '\x01'::bytea || decode(substr(tx, 3), 'hex')
                ELSE '\x00'::bytea || convert_to(tx, 'UTF8') END
$$;
CREATE FUNCTION trade_tx_text(tx bytea) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE get_byte(tx, 0) WHEN 1 THEN '0x' || encode(substr(tx, 2), 'hex')
                ELSE convert_from(substr(tx, 2), 'UTF8') END
$$;
CREATE FUNCTION trade_identity(buy boolean, price numeric, size numeric, tx bytea) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended(buy::text || ' ' || trim_scale(price)::text || ' ' || trim_scale(size)::text
                            || ' ' || COALESCE(encode(tx, 'hex'), ''), 0)
$$;

ALTER TABLE stream_tokens ADD COLUMN condition_key INTEGER;
CREATE INDEX stream_tokens_condition ON stream_tokens (condition_key);

CREATE TABLE trades_compact (
    token_key INTEGER NOT NULL,
    buy BOOLEAN NOT NULL,
    backfill BOOLEAN NOT NULL,
    source_ts TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    price NUMERIC NOT NULL,
    size NUMERIC NOT NULL,
    tx BYTEA,
    fee_rate_bps NUMERIC,
    -- Readable as text by the view: a 32-byte hash, or text without NUL.
    CONSTRAINT trades_compact_tx_form CHECK (get_byte(tx, 0) = 1 AND length(tx) = 33
        OR get_byte(tx, 0) = 0 AND position('\x00'::bytea IN substr(tx, 2)) = 0)
) PARTITION BY RANGE (source_ts);
CREATE UNIQUE INDEX trades_compact_identity ON trades_compact (token_key, source_ts, trade_identity(buy, price, size, tx));

CREATE TABLE quotes_compact (
    token_key INTEGER NOT NULL,
    source_ts TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    best_bid NUMERIC,
    best_ask NUMERIC,
    spread NUMERIC,
    PRIMARY KEY (token_key, source_ts)
) PARTITION BY RANGE (source_ts);

CREATE TABLE tick_size_changes_compact (
    token_key INTEGER NOT NULL,
    source_ts TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    old_tick_size NUMERIC,
    new_tick_size NUMERIC,
    PRIMARY KEY (token_key, source_ts)
);

-- The dictionaries: every token and market of the old rows, and each token's market (the
-- catalog's first, then what the rows said).
INSERT INTO stream_tokens (token_id)
SELECT asset_id FROM trades UNION SELECT asset_id FROM quotes UNION SELECT asset_id FROM tick_size_changes
ON CONFLICT DO NOTHING;
INSERT INTO stream_conditions (condition_id)
SELECT condition_id FROM trades WHERE condition_id IS NOT NULL
UNION SELECT condition_id FROM quotes WHERE condition_id IS NOT NULL
UNION SELECT condition_id FROM tick_size_changes WHERE condition_id IS NOT NULL
UNION SELECT k.condition_id FROM tokens k JOIN stream_tokens s ON s.token_id = k.token_id WHERE k.condition_id IS NOT NULL
ON CONFLICT DO NOTHING;
UPDATE stream_tokens s SET condition_key = c.condition_key
FROM (SELECT DISTINCT ON (token_id) token_id, condition_id FROM (
          SELECT token_id, condition_id, 0 AS pref FROM tokens WHERE condition_id IS NOT NULL
          UNION ALL SELECT asset_id, condition_id, 1 FROM trades WHERE condition_id IS NOT NULL
          UNION ALL SELECT asset_id, condition_id, 1 FROM quotes WHERE condition_id IS NOT NULL
          UNION ALL SELECT asset_id, condition_id, 1 FROM tick_size_changes WHERE condition_id IS NOT NULL
          UNION ALL SELECT t.token_id, c.condition_id, 2 FROM price_changes_compact p
              JOIN stream_tokens t ON t.token_key = p.token_key JOIN stream_conditions c ON c.condition_key = p.condition_key
      ) m ORDER BY token_id, pref) k
JOIN stream_conditions c ON c.condition_id = k.condition_id
WHERE s.token_id = k.token_id;

DO $$
DECLARE d date; t text;
BEGIN
    -- The days of the rows converted, and yesterday to two days ahead (the daemon keeps
    -- making them ahead).
    FOREACH t IN ARRAY ARRAY['trades', 'quotes'] LOOP
        FOR d IN EXECUTE format('SELECT DISTINCT (source_ts AT TIME ZONE ''UTC'')::date FROM %I
                 UNION SELECT (now() AT TIME ZONE ''UTC'')::date + k FROM generate_series(-1, 2) AS k', t) LOOP
            EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                t || '_p' || to_char(d, 'YYYYMMDD'), t || '_compact',
                d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
        END LOOP;
    END LOOP;
END $$;

INSERT INTO trades_compact (token_key, buy, backfill, source_ts, received_at, price, size, tx, fee_rate_bps)
SELECT s.token_key, t.side = 'BUY', t.source = 'backfill', t.source_ts, t.received_at, t.price, t.size,
       trade_tx_bytes(t.tx_hash), t.fee_rate_bps
FROM trades t JOIN stream_tokens s ON s.token_id = t.asset_id;
INSERT INTO quotes_compact (token_key, source_ts, received_at, best_bid, best_ask, spread)
SELECT s.token_key, q.source_ts, q.received_at, q.best_bid, q.best_ask, q.spread
FROM quotes q JOIN stream_tokens s ON s.token_id = q.asset_id;
INSERT INTO tick_size_changes_compact (token_key, source_ts, received_at, old_tick_size, new_tick_size)
SELECT s.token_key, x.source_ts, x.received_at, x.old_tick_size, x.new_tick_size
FROM tick_size_changes x JOIN stream_tokens s ON s.token_id = x.asset_id;
DROP TABLE trades, quotes, tick_size_changes;

CREATE VIEW trades AS
SELECT t.token_id AS asset_id, c.condition_id, x.price, x.size,
       CASE WHEN x.buy THEN 'BUY' ELSE 'SELL' END AS side,
       x.source_ts, x.received_at,
       CASE WHEN x.backfill THEN 'backfill' ELSE 'ws' END AS source,
       trade_tx_text(x.tx) AS tx_hash, x.fee_rate_bps
FROM trades_compact x
JOIN stream_tokens t ON t.token_key = x.token_key
LEFT JOIN stream_conditions c ON c.condition_key = t.condition_key;

CREATE VIEW quotes AS
SELECT t.token_id AS asset_id, c.condition_id, x.best_bid, x.best_ask, x.spread, x.source_ts, x.received_at
FROM quotes_compact x
JOIN stream_tokens t ON t.token_key = x.token_key
LEFT JOIN stream_conditions c ON c.condition_key = t.condition_key;

CREATE VIEW tick_size_changes AS
SELECT t.token_id AS asset_id, c.condition_id, x.old_tick_size, x.new_tick_size, x.source_ts, x.received_at
FROM tick_size_changes_compact x
JOIN stream_tokens t ON t.token_key = x.token_key
LEFT JOIN stream_conditions c ON c.condition_key = t.condition_key;
"#
    .to_string()
}
