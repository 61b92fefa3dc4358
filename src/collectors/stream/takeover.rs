//! Follows the slice role the election publishes (`db::leader::SliceRole`) and moves the
//! [`gate`](super::gate) with it (docs/scaling.md, "Redundant instances of a slice"):
//!
//! - standby: level changes are held in the window;
//! - the slice taken (the previous writer died or stopped, its epoch raised so its batches in
//!   flight are done), or a writer of another slice count gone: everything is held for
//!   [`OVERLAP`] — a level change the previous writer committed reached this instance by then
//!   — then the window is written through the anti-join (what the previous writer stored is
//!   skipped by content), then rows pass. Takeover bound: the election's (`db::leader`: ~2 s
//!   after a kill, ~14 s after a network cut) plus [`OVERLAP`].
//! - if the window let rows go that the previous writer's commits did not reach, that interval
//!   is recorded as a gap over their assets: no instance stored them.
//!
//! A standby also fills its writer's gaps: a closed gap of the writer (a reconnect, a stall)
//! is claimed by one standby of the slice ([`FILL_SETTLED`] after it closed, while its window
//! still reaches it), which writes its own copies of the gap's level changes through the
//! anti-join and records on the gap how many and from when (`stream_gaps.filled_*`). So a
//! slice's level changes are missing only where no instance received them.
//!
//! It also hands the writer's "committed through" to the election, which reports it in
//! `stream_writers` for the next takeover's comparison.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::StreamCtx;
use super::gaps::GapEvent;
use super::writer::{REPEATS, Writer};
use crate::backoff::{Backoff, rest};
use crate::db::gaps as db_gaps;
use crate::db::leader::{Leadership, SliceRole};
use crate::db::stream::{Origin, Row, write_batch};
use crate::db::writers::Foreign;

/// How long a takeover holds everything before writing its window: the most one instance's
/// feed is assumed to lag another's.
pub const OVERLAP: Duration = Duration::from_secs(2);

/// A writer's gap is filled this long after it closed: the writer's rows around its end are
/// committed by then (the anti-join then skips them).
pub const FILL_SETTLED: Duration = Duration::from_secs(3);

/// Delays between attempts to write a takeover's window.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// What the follower works with.
#[derive(Clone)]
pub(super) struct Takeover {
    pub leadership: Leadership,
    pub writer: Writer,
    pub ctx: Arc<StreamCtx>,
    /// This instance's name (a previous writer of another name may have stored rows this
    /// instance spooled in a previous run).
    pub instance: String,
}

impl Takeover {
    /// Runs until `cancel`.
    pub(super) async fn follow(self, cancel: CancellationToken) {
        let gate = &self.writer.sink.gate;
        let mut roles = self.leadership.slice_roles();
        let mut seen: Vec<Foreign> = Vec::new();
        let mut publishing = true;
        loop {
            let role = roles.borrow_and_update().clone();
            match role {
                SliceRole::Starting | SliceRole::All => {}
                SliceRole::Standby => {
                    gate.stand_by();
                    let writer_through = self.leadership.writer_committed_us.load(Ordering::Relaxed);
                    if let Some(t) = DateTime::from_timestamp_micros(writer_through).filter(|_| writer_through > 0) {
                        gate.forget_evicted_through(t);
                    }
                    self.fill_writer_gaps().await;
                }
                SliceRole::Writer { taken, foreign } => {
                    let slices: Vec<_> = foreign.iter().map(|f| f.slice).collect();
                    if gate.deposed(&taken.fence) {
                        // A batch found this fence gone: the election steps down shortly.
                    } else if gate.fence().as_ref() != Some(&taken.fence) {
                        let elsewhere = taken.previous.as_deref().is_some_and(|p| p != self.instance);
                        gate.begin(taken.fence.clone(), slices, elsewhere);
                        let previous = taken.previous.as_ref().and(taken.previous_committed);
                        if !self.take_over(&cancel, previous).await {
                            return;
                        }
                    } else if slices != gate.foreign() {
                        // Writers of another count gone: their markets are this instance's now.
                        let gone: Vec<&Foreign> = seen.iter().filter(|f| !slices.contains(&f.slice)).collect();
                        let previous = gone.iter().map(|f| f.committed_through).min().flatten();
                        gate.begin(taken.fence.clone(), slices, false);
                        if !self.take_over(&cancel, previous).await {
                            return;
                        }
                    }
                    seen = foreign;
                }
            }
            let through = self.writer.sink.stats.committed_through_us.load(Ordering::Relaxed);
            self.leadership.committed_us.store(through, Ordering::Relaxed);
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = roles.changed(), if publishing => publishing = changed.is_ok(),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The takeover begun on the gate: the overlap, the window written, then rows pass; a gap
    /// where the window does not reach back to `previous` (the previous writer's commits).
    /// `false` at the stop.
    async fn take_over(&self, cancel: &CancellationToken, previous: Option<DateTime<Utc>>) -> bool {
        let gate = &self.writer.sink.gate;
        if !rest(cancel, OVERLAP).await {
            return false;
        }
        let held = gate.drain_writable();
        if !self.write(cancel, held).await {
            return false;
        }
        let last = gate.finish();
        if !self.write(cancel, last).await {
            return false;
        }
        if let Some((from, to, assets)) = gate.take_evicted() {
            if previous.is_none_or(|c| c < to) {
                let from = previous.map_or(from, |c| c.max(from));
                tracing::warn!(message_id = crate::journal::GAP_OPENED, assets = assets.len(), since = %from, until = %to,
                    "level changes of {} assets between {from} and {to} were held by no writer (the standby window did not reach back \
                     to the previous writer's last commit): recorded as a gap", assets.len());
                self.ctx.send_gap(GapEvent::Takeover { assets, from, to });
            }
        }
        tracing::info!(message_id = crate::journal::LIFECYCLE, fence = ?gate.fence(), "takeover done: this instance writes its level changes");
        true
    }

    /// A standby: writes the level changes of its writer's recent gaps from its window.
    async fn fill_writer_gaps(&self) {
        let (writer, cfg) = (&self.writer, &self.ctx.cfg);
        let claimed =
            db_gaps::claim_writer_gaps(&writer.pool, &self.instance, &cfg.shard.to_string(), FILL_SETTLED, cfg.standby_window).await;
        let gaps = match claimed {
            Ok(gaps) => gaps,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look for the writer's gaps: {e}");
                return;
            }
        };
        for gap in gaps {
            let assets: HashSet<&str> = gap.assets.iter().map(String::as_str).collect();
            let margin = chrono::Duration::from_std(OVERLAP).expect("small");
            let (rows, oldest) = writer.sink.gate.copy_window(&assets, gap.started_at - margin, gap.ended_at + margin);
            let reached = oldest.map_or(gap.ended_at, |o| o.max(gap.started_at));
            let mut written = Ok(());
            for chunk in rows.chunks(writer.batch_size.max(1)) {
                written = write_batch(&writer.pool, &writer.keys, chunk, Origin::Elsewhere).await.map(|_| ());
                if written.is_err() {
                    break;
                }
            }
            let outcome = written.is_ok().then_some((rows.len() as i32, reached));
            if let Err(e) = &written {
                tracing::warn!(gap_id = gap.id, error = %e, "cannot fill the writer's gap from this standby's window (given back): {e}");
            } else {
                writer.sink.gate.stats.filled.fetch_add(rows.len() as u64, Ordering::Relaxed);
                tracing::info!(message_id = crate::journal::GAP_CLOSED, gap_id = gap.id, rows = rows.len(), from = %reached,
                    "the writer's gap {}: {} level changes written from this standby's window", gap.id, rows.len());
            }
            if let Err(e) = db_gaps::set_filled(&writer.pool, gap.id, outcome).await {
                tracing::warn!(gap_id = gap.id, error = %e, "cannot record the fill of a gap: {e}");
            }
        }
    }

    /// Writes held level changes through the anti-join, retrying; `false` at the stop (what is
    /// left is spooled for the next run).
    async fn write(&self, cancel: &CancellationToken, rows: Vec<Row>) -> bool {
        let sink = &self.writer.sink;
        let mut done = 0;
        while done < rows.len() {
            let chunk = &rows[done..rows.len().min(done + self.writer.batch_size.max(1))];
            let mut retries = RETRY.start();
            loop {
                match self.writer.store(chunk, Origin::Elsewhere, retries.attempts() >= REPEATS).await {
                    Ok(trades) => {
                        sink.stored(chunk.len(), trades, None);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, rows = chunk.len(), "writing the level changes of a takeover failed, retrying: {e}");
                        if !rest(cancel, retries.next_delay()).await {
                            if let Err(e) = sink.spool_all(rows[done..].to_vec()) {
                                tracing::error!(error = %e, "DATA LOST at stop: cannot spool a takeover's level changes: {e}");
                            }
                            return false;
                        }
                    }
                }
            }
            done += chunk.len();
        }
        true
    }
}
