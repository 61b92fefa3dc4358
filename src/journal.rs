//! Stable journald `MESSAGE_ID`s, one per kind of record, so operators can ask
//! `journalctl -u collector MESSAGE_ID=<id>`. Never change a published id.

/// The periodic health record (header line; collector lines carry it too).
pub const HEALTH: &str = "6f1c9a3e2b7d4c0e9a8b5d3f1e2c4a60";
/// A collector task died and is being restarted.
pub const RESTART: &str = "6f1c9a3e2b7d4c0e9a8b5d3f1e2c4a61";
/// A stream connection is being re-established.
pub const RECONNECT: &str = "6f1c9a3e2b7d4c0e9a8b5d3f1e2c4a62";
/// A capture gap was opened (assets not being recorded).
pub const GAP_OPENED: &str = "6f1c9a3e2b7d4c0e9a8b5d3f1e2c4a63";
/// A capture gap was closed.
pub const GAP_CLOSED: &str = "6f1c9a3e2b7d4c0e9a8b5d3f1e2c4a64";
/// Trades of a gap were backfilled.
pub const BACKFILL: &str = "6f1c9a3e2b7d4c0e9a8b5d3f1e2c4a65";
/// The write queue spilled to, or replayed from, the on-disk spool.
pub const SPOOL: &str = "6f1c9a3e2b7d4c0e9a8b5d3f1e2c4a66";
/// Lifecycle: started, ready, stopping, stopped.
pub const LIFECYCLE: &str = "6f1c9a3e2b7d4c0e9a8b5d3f1e2c4a67";

/// Every id, for the catalog check.
pub const ALL: [&str; 8] = [HEALTH, RESTART, RECONNECT, GAP_OPENED, GAP_CLOSED, BACKFILL, SPOOL, LIFECYCLE];

#[cfg(test)]
mod tests {
    /// The packaged journald catalog explains every message id, and only those.
    #[test]
    fn the_catalog_has_an_entry_per_message_id() {
        let catalog = include_str!("../packaging/collector.catalog");
        let ids: Vec<&str> = catalog.lines().filter_map(|l| l.strip_prefix("-- ")).collect();
        let mut want = super::ALL.to_vec();
        want.sort_unstable();
        let mut got = ids.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        for block in catalog.split("\n-- ").skip(1) {
            assert!(block.contains("\nSubject: ") && block.contains("\nDefined-By: collector"), "{block}");
        }
    }
}
