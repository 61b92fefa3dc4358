//! The stream's counters ([`StreamStats`], beside the write path's `sink::WriteStats`) and its
//! health at one instant ([`TradeListenerHealth`], `trade_listener` in `collector status
//! --json`), read by the health loop, the status socket and the metrics endpoint through
//! [`StreamMonitor`].
//!
//! Each number of the health is declared once, in [`stream_health!`]: its name (the JSON key
//! and the metric's name, `collector_stream_<name>`), its help text, whether it is a counter
//! or a gauge, and where it is read from. The health log's journal fields are a chosen few of
//! them (`daemon::health`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::shard::ShardShared;
use super::sink::Sink;

/// Counters of the stream's readers, manager and helpers.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub events_received: AtomicU64,
    pub trades_received: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_total: AtomicU64,
    pub assets_subscribed: AtomicU64,
    pub reconnects: AtomicU64,
    pub stalls: AtomicU64,
    pub quarantined: AtomicU64,
    pub gaps: AtomicU64,
    /// Level changes not applied because the asset had no fresh book since a reconnect.
    pub withheld: AtomicU64,
    /// Level changes after which the local book disagreed with upstream's top of book.
    pub book_divergences: AtomicU64,
    /// Stream tasks (shards, writer, gap recorder, backfill) restarted after a panic.
    pub task_restarts: AtomicU64,
    /// Gaps whose backfill completed (done or partial).
    pub gaps_backfilled: AtomicU64,
    /// Trades the backfill stored (also counted in the write path's `trades_inserted`).
    pub trades_backfilled: AtomicU64,
    /// Partition maintenance passes that could not finish (a lock not granted in time).
    pub maintenance_postponed: AtomicU64,
    /// Every connection's state, by connection number (for the worst few in the status).
    pub shards: std::sync::Mutex<Vec<Arc<ShardShared>>>,
}

/// One connection in `collector status`: the worst few are named ([`WORST_SHOWN`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectionHealth {
    /// The connection's number (`conn` in the journal).
    pub conn: usize,
    pub assets: u64,
    pub connected: bool,
    /// Seconds since its last data frame (since the start when none yet).
    pub silent_secs: u64,
    pub reconnects: u64,
}

/// Connections named in the status: those down or silent longest, at most this many.
pub const WORST_SHOWN: usize = 3;

/// A connection silent for less than this is not named among the worst.
const QUIET_SECS: u64 = 10;

impl StreamStats {
    /// The connections down or silent for [`QUIET_SECS`] or more, worst first (down before
    /// up, then the longest silence, then the most reconnects), at most [`WORST_SHOWN`]; an
    /// aggregate, not a list of every connection (the whole universe is ~1,600).
    pub fn worst_connections(&self, now_us: i64, started_us: i64) -> Vec<ConnectionHealth> {
        let shards = self.shards.lock().expect("not poisoned");
        let mut all: Vec<ConnectionHealth> = shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.assets.load(Ordering::Relaxed) > 0)
            .map(|(conn, s)| {
                let last = match s.last_data_us.load(Ordering::Relaxed) {
                    0 => started_us,
                    us => us,
                };
                ConnectionHealth {
                    conn,
                    assets: s.assets.load(Ordering::Relaxed),
                    connected: s.connected.load(Ordering::Relaxed),
                    silent_secs: (now_us.saturating_sub(last) / 1_000_000).max(0) as u64,
                    reconnects: s.reconnects.load(Ordering::Relaxed),
                }
            })
            .filter(|c| !c.connected || c.silent_secs >= QUIET_SECS)
            .collect();
        all.sort_by_key(|c| (c.connected, std::cmp::Reverse(c.silent_secs), std::cmp::Reverse(c.reconnects), c.conn));
        all.truncate(WORST_SHOWN);
        all
    }
}

/// How a number is exported as a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    /// Shown in the status only (a metric family covers it).
    StatusOnly,
}

/// The stream's health and liveness, for the health loop and `collector status`.
pub struct StreamMonitor {
    pub stats: Arc<StreamStats>,
    pub sink: Arc<Sink>,
    /// The writer counts as stuck when rows wait longer than this.
    pub stall_timeout: Duration,
    /// When the stream started (µs since the epoch): a connection without data yet is silent
    /// since then.
    pub started_us: i64,
    /// The slice of the universe this instance records (`[stream] shard`).
    pub slice: crate::slice::Slice,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Declares [`TradeListenerHealth`], [`StreamMonitor::snapshot`] and
/// [`TradeListenerHealth::metrics`] from one line per number: `/// help`, kind, name, and the
/// expression reading it from the monitor `m`.
macro_rules! stream_health {
    ($( #[doc = $help:literal] $kind:ident $name:ident = |$m:ident| $read:expr; )*) => {
        /// The stream's health at one instant (`trade_listener` in `collector status --json`).
        #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
        pub struct TradeListenerHealth {
            $( #[doc = $help] #[serde(default)] pub $name: u64, )*
            /// Frame received → row committed, median and 99th percentile since start (ms).
            #[serde(default)]
            pub commit_latency_p50_ms: Option<u64>,
            #[serde(default)]
            pub commit_latency_p99_ms: Option<u64>,
            /// The connections down or silent longest (at most [`WORST_SHOWN`]; none: every
            /// connection received data in the last 10 s).
            #[serde(default)]
            pub worst_connections: Vec<ConnectionHealth>,
            /// The slice of the universe recorded here (`"i/n"`; `"0/1"`: everything).
            #[serde(default)]
            pub slice: String,
            /// Who writes this slice's level changes: `writer` (this instance), `standby`
            /// (another; held in memory here), `all` (no election).
            #[serde(default)]
            pub slice_role: String,
        }

        impl StreamMonitor {
            pub fn snapshot(&self) -> TradeListenerHealth {
                TradeListenerHealth {
                    $( $name: { let $m = self; $read }, )*
                    commit_latency_p50_ms: self.sink.stats.commit_latency.quantile(0.5),
                    commit_latency_p99_ms: self.sink.stats.commit_latency.quantile(0.99),
                    worst_connections: self.stats.worst_connections(crate::clock::now().timestamp_micros(), self.started_us),
                    slice: self.slice.to_string(),
                    slice_role: self.sink.gate.role().into(),
                }
            }
        }

        impl TradeListenerHealth {
            /// Every number with its name, help and kind, for the metrics endpoint.
            pub fn metrics(&self) -> Vec<(&'static str, &'static str, MetricKind, u64)> {
                vec![ $( (stringify!($name), $help.trim(), MetricKind::$kind, self.$name), )* ]
            }
        }
    };
}

stream_health! {
    /// Trades received on the stream
    Counter trades_received = |m| get(&m.stats.trades_received);
    /// New trades stored (stream and backfill)
    Counter trades_inserted = |m| get(&m.sink.stats.trades_inserted);
    /// Trades the backfill stored (part of trades_inserted)
    Counter trades_backfilled = |m| get(&m.stats.trades_backfilled);
    /// Stream connections open
    StatusOnly connections_active = |m| get(&m.stats.connections_active);
    /// Stream connections made since start
    StatusOnly connections_total = |m| get(&m.stats.connections_total);
    /// Rows waiting in the write queue
    Gauge queue_depth = |m| m.sink.queue_depth();
    /// Bytes the rows waiting in the write queue hold (about)
    Gauge queue_bytes = |m| m.sink.queue_bytes();
    /// Bytes in the on-disk spool not yet replayed
    Gauge spool_bytes = |m| get(&m.sink.stats.spool_bytes);
    /// Capture gaps opened
    Counter gaps = |m| get(&m.stats.gaps);
    /// Connection rebuilds
    Counter reconnects = |m| get(&m.stats.reconnects);
    /// Connections rebuilt for silence
    Counter stalls = |m| get(&m.stats.stalls);
    /// Frames quarantined
    Counter quarantined = |m| get(&m.stats.quarantined);
    /// Assets subscribed
    Gauge assets_subscribed = |m| get(&m.stats.assets_subscribed);
    /// Stream events received
    Counter events_received = |m| get(&m.stats.events_received);
    /// Level changes not stored: no fresh book since a reconnect
    Counter withheld_changes = |m| get(&m.stats.withheld);
    /// Level changes after which the local book disagreed with upstream's top of book
    Counter book_divergences = |m| get(&m.stats.book_divergences);
    /// Rows committed by the writer
    Counter rows_written = |m| get(&m.sink.stats.rows_written);
    /// Failed writes
    Counter write_errors = |m| get(&m.sink.stats.write_errors);
    /// Rows lost: the spool was full or could not be written (each loss logged at ERROR, DATA LOST)
    Counter dropped_rows = |m| get(&m.sink.stats.dropped_rows);
    /// Stream tasks restarted after a panic
    Counter task_restarts = |m| get(&m.stats.task_restarts);
    /// Rows that went to the spool (the queue was full)
    Counter spooled_rows = |m| get(&m.sink.stats.spooled_rows);
    /// Rows replayed from the spool
    Counter replayed_rows = |m| get(&m.sink.stats.replayed_rows);
    /// Spool records that could not be read back (undecodable, or in a segment set aside)
    Counter spool_unreadable = |m| get(&m.sink.stats.spool_unreadable);
    /// Spool writes or reads that failed (a full disk, an I/O error)
    Counter spool_errors = |m| get(&m.sink.stats.spool_errors);
    /// Failed writes since the last success
    Gauge write_failures_in_a_row = |m| get(&m.sink.stats.write_failures_in_a_row);
    /// Rows the database refused, quarantined
    Counter poisoned_rows = |m| get(&m.sink.stats.poisoned_rows);
    /// Gaps whose backfill completed (done or partial)
    Counter gaps_backfilled = |m| get(&m.stats.gaps_backfilled);
    /// Partition maintenance passes that could not finish (a lock not granted in time)
    Counter maintenance_postponed = |m| get(&m.stats.maintenance_postponed);
    /// Level changes held in memory while another instance of the slice writes them
    Gauge standby_window_rows = |m| get(&m.sink.gate.stats.window_rows);
    /// Level changes the standby window let go (older than standby_window_secs or over its size)
    Counter standby_window_evicted = |m| get(&m.sink.gate.stats.evicted_rows);
    /// Level changes left to the slice's new writer after this instance lost the slice
    Counter level_changes_handed_over = |m| get(&m.sink.gate.stats.handed_over);
    /// Takeovers of level changes (the slice, or markets of a writer of another slice count)
    Counter takeovers = |m| get(&m.sink.gate.stats.takeovers);
    /// Level changes this standby wrote from its window into its writer's gaps
    Counter level_changes_filled = |m| get(&m.sink.gate.stats.filled);
}

impl StreamMonitor {
    /// `Some(reason)` when the stream neither stores nor keeps what it receives: the writer
    /// has stored nothing for `stall_timeout` while rows wait, and the spool refuses rows. A
    /// database outage the queue and the spool absorb is not a stall: the daemon captures.
    pub fn stalled(&self) -> Option<String> {
        let stuck = self.sink.stalled_for().filter(|d| *d > self.stall_timeout)?;
        (!self.sink.capturing())
            .then(|| format!("stream writer has stored nothing for {}s and the spool refuses rows (data is being lost)", stuck.as_secs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(assets: u64, connected: bool, last_data_us: i64, reconnects: u64) -> Arc<ShardShared> {
        let s = ShardShared::default();
        s.assets.store(assets, Ordering::Relaxed);
        s.connected.store(connected, Ordering::Relaxed);
        s.last_data_us.store(last_data_us, Ordering::Relaxed);
        s.reconnects.store(reconnects, Ordering::Relaxed);
        Arc::new(s)
    }

    /// 1,600 connections make no list of 1,600: down ones first, then the longest silence,
    /// at most three, none that received data in the last 10 s, none that carries nothing.
    #[test]
    fn the_worst_few_connections_are_named() {
        let (start, now) = (1_000_000_000, 1_100_000_000);
        let stats = StreamStats::default();
        {
            let mut shards = stats.shards.lock().unwrap();
            for _ in 0..1600 {
                shards.push(shard(200, true, now - 1_000_000, 0));
            }
            shards[7] = shard(200, true, now - 30_000_000, 1); // silent 30 s
            shards[9] = shard(150, false, now - 20_000_000, 4); // down, 20 s
            shards[11] = shard(200, true, 0, 0); // no data since the start: 100 s
            shards[12] = shard(0, false, 0, 9); // carries nothing
            shards[13] = shard(200, true, now - 12_000_000, 2); // silent 12 s: fourth
        }
        let worst = stats.worst_connections(now, start);
        let named: Vec<(usize, bool, u64)> = worst.iter().map(|c| (c.conn, c.connected, c.silent_secs)).collect();
        assert_eq!(named, vec![(9, false, 20), (11, true, 100), (7, true, 30)]);
        assert_eq!((worst[0].assets, worst[0].reconnects), (150, 4));
        // All well: nobody named.
        let stats = StreamStats::default();
        stats.shards.lock().unwrap().extend((0..1600).map(|_| shard(200, true, now - 2_000_000, 0)));
        assert!(stats.worst_connections(now, start).is_empty());
    }
}
