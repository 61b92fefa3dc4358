//! V2: what the live market stream records — trades, level changes, quotes, tick sizes,
//! market lifecycle events, quarantined frames — and the capture gaps.

use barrel::backend::Pg;
use barrel::{Migration, types};

pub fn migration() -> String {
    let ts = || types::custom("TIMESTAMPTZ");
    let num = || types::custom("NUMERIC");
    let opt_num = || types::custom("NUMERIC").nullable(true);
    let opt_text = || types::text().nullable(true);

    let mut m = Migration::new();
    m.create_table("trades", move |t| {
        t.add_column("asset_id", types::text());
        t.add_column("condition_id", opt_text());
        t.add_column("price", num());
        t.add_column("size", num());
        t.add_column("side", types::text());
        t.add_column("source_ts", ts());
        t.add_column("received_at", ts());
        t.add_column("source", types::text());
        t.add_column("tx_hash", opt_text());
        t.add_column("fee_rate_bps", opt_num());
        t.add_index("trades_condition_ts", types::index(vec!["condition_id", "source_ts"]));
    });
    m.create_table("price_changes", move |t| {
        t.add_column("asset_id", types::text());
        t.add_column("condition_id", opt_text());
        t.add_column("price", num());
        t.add_column("size", num());
        t.add_column("side", types::text());
        t.add_column("hash", opt_text());
        t.add_column("best_bid", opt_num());
        t.add_column("best_ask", opt_num());
        t.add_column("source_ts", ts());
        t.add_column("received_at", ts());
    });
    m.create_table("quotes", move |t| {
        t.add_column("asset_id", types::text());
        t.add_column("condition_id", opt_text());
        t.add_column("best_bid", opt_num());
        t.add_column("best_ask", opt_num());
        t.add_column("spread", opt_num());
        t.add_column("source_ts", ts());
        t.add_column("received_at", ts());
        t.set_primary_key(&["asset_id", "source_ts"]);
    });
    m.create_table("tick_size_changes", move |t| {
        t.add_column("asset_id", types::text());
        t.add_column("condition_id", opt_text());
        t.add_column("old_tick_size", opt_num());
        t.add_column("new_tick_size", opt_num());
        t.add_column("source_ts", ts());
        t.add_column("received_at", ts());
        t.set_primary_key(&["asset_id", "source_ts"]);
    });
    m.create_table("market_events", move |t| {
        t.add_column("kind", types::text());
        t.add_column("condition_id", types::text());
        t.add_column("market_id", opt_text());
        t.add_column("source_ts", ts());
        t.add_column("received_at", ts());
        t.add_column("payload", types::custom("JSONB"));
        t.set_primary_key(&["kind", "condition_id", "source_ts"]);
    });
    m.create_table("stream_gaps", move |t| {
        t.add_column("id", types::custom("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"));
        t.add_column("connection", types::integer().nullable(true));
        t.add_column("assets", types::custom("TEXT[]"));
        t.add_column("asset_count", types::integer());
        t.add_column("started_at", ts());
        t.add_column("ended_at", types::custom("TIMESTAMPTZ").nullable(true));
        t.add_column("reason", types::text());
        t.add_column("planned", types::boolean());
        t.add_column("backfill_status", opt_text());
        t.add_column("backfilled_at", types::custom("TIMESTAMPTZ").nullable(true));
        t.add_column("backfill_trades", types::integer().nullable(true));
        t.add_index("stream_gaps_started_at", types::index(vec!["started_at"]));
    });
    m.create_table("stream_quarantine", move |t| {
        t.add_column("id", types::custom("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"));
        t.add_column("received_at", ts());
        t.add_column("connection", types::integer().nullable(true));
        t.add_column("reason", types::text());
        t.add_column("frame", types::text());
    });
    let mut sql = m.make::<Pg>();
    sql.push_str(
        "\n-- A trade is stored once however often it is seen; the hash alone is not an identity\n\
         -- (one transaction settles several fills).\n\
         CREATE UNIQUE INDEX trades_identity ON trades (asset_id, source_ts, side, price, size, COALESCE(tx_hash, ''));\n\
         CREATE INDEX trades_tx_hash ON trades (tx_hash) WHERE tx_hash IS NOT NULL;\n\
         ALTER TABLE trades ADD CONSTRAINT trades_side_check CHECK (side IN ('BUY', 'SELL'));\n\
         ALTER TABLE trades ADD CONSTRAINT trades_source_check CHECK (source IN ('ws', 'backfill'));\n\
         CREATE UNIQUE INDEX price_changes_identity ON price_changes (asset_id, source_ts, side, price, size, COALESCE(hash, ''));\n\
         CREATE INDEX stream_gaps_open ON stream_gaps (id) WHERE ended_at IS NULL;\n",
    );
    sql
}
