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
        }

        impl StreamMonitor {
            pub fn snapshot(&self) -> TradeListenerHealth {
                TradeListenerHealth {
                    $( $name: { let $m = self; $read }, )*
                    commit_latency_p50_ms: self.sink.stats.commit_latency.quantile(0.5),
                    commit_latency_p99_ms: self.sink.stats.commit_latency.quantile(0.99),
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
