//! V10: the dictionaries' key sequences moved back to just past their largest key. Until this
//! release every catalog page and every batch with an unknown id proposed all its ids to
//! `stream_tokens` / `stream_conditions` with `ON CONFLICT DO NOTHING`, and each proposed row
//! took a value of the 32-bit sequence whether it was inserted or not (~30 million a day at
//! the whole universe: the keys would run out in about 70 days). Only missing ids are
//! proposed now; this gives back what was spent past the largest key in use. Keys already
//! handed out stay as they are (rows refer to them).

pub fn migration() -> String {
    r#"
SELECT setval(pg_get_serial_sequence('stream_tokens', 'token_key'), COALESCE((SELECT max(token_key) FROM stream_tokens), 0) + 1, false);
SELECT setval(pg_get_serial_sequence('stream_conditions', 'condition_key'), COALESCE((SELECT max(condition_key) FROM stream_conditions), 0) + 1, false);
"#
    .to_string()
}
