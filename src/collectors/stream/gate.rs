//! Which level changes this instance writes (docs/scaling.md, "Redundant instances of a
//! slice"). One instance of a slice writes its level changes (`db::writers`); the others
//! hold theirs in a memory window — the last [`Gate`] `max_age` of them, at most `max_bytes`
//! — ready to take over. Every other row (trades, quotes, tick sizes, books, events) goes on to
//! the queue on every instance: their unique identities drop the second copy.
//!
//! A takeover (`takeover::follow`) holds everything for an overlap, then writes the window
//! through the anti-join (rows the previous writer committed are skipped), then lets rows
//! through. Rows evicted from a standby's window are remembered (the newest time and their
//! assets): if the previous writer's commits did not reach that far, the interval is a gap.
//!
//! With `daemon.leader_election = false` ([`Mode::All`]) nothing is held and nothing is
//! checked: the write path is what it was for one instance.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use crate::db::stream::{Origin, Row};
use crate::db::writers::Fence;
use crate::slice::Slice;

/// What the gate does with level changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// The election has not answered yet: held.
    Starting,
    /// No election: written, unchecked.
    All,
    /// Another instance writes them: held.
    Standby,
    /// Written, each batch checking the fence — but for the markets of `foreign` writers and,
    /// during a takeover, all of them.
    Writer(Fence),
}

/// The gate's numbers (in the stream's health).
#[derive(Debug, Default)]
pub struct GateStats {
    /// Level changes held in the window now, and their bytes (about).
    pub window_rows: AtomicU64,
    pub window_bytes: AtomicU64,
    /// Level changes the window let go (too old or over its size) while held.
    pub evicted_rows: AtomicU64,
    /// Level changes left to another writer: queued while this instance wrote, written after
    /// it lost the slice (the new writer has them in its window, or a gap says so).
    pub handed_over: AtomicU64,
    /// Takeovers done (the slice, or markets of a writer of another slice count).
    pub takeovers: AtomicU64,
    /// Level changes a standby wrote from its window into its writer's gaps.
    pub filled: AtomicU64,
}

struct State {
    mode: Mode,
    /// Writers of another slice count, there first and alive: their markets are held.
    foreign: Vec<Slice>,
    /// A takeover is under way: everything held until its window is written.
    taking_over: bool,
    window: VecDeque<(Row, usize)>,
    bytes: usize,
    /// Newest and oldest receive times of rows evicted while held, and their assets.
    evicted: Option<(DateTime<Utc>, DateTime<Utc>)>,
    evicted_assets: HashSet<String>,
    /// The previous writer of this slice was another instance: a previous run's spool may hold
    /// rows it wrote.
    inherited_elsewhere: bool,
    /// This run lost the slice once: rows it spooled may have been written by another.
    lost_once: bool,
    /// The fence a batch found gone (the election may still announce it for a moment).
    deposed: Option<Fence>,
}

/// How the writer stores a batch now.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Check this fence in the batch's transaction (its level changes only with it).
    pub fence: Option<Fence>,
    /// Leave the batch's level changes out (another instance writes them).
    pub strip: bool,
    pub origin: Origin,
}

/// Sorts level changes into written and held; the writer asks it how to store a batch.
pub struct Gate {
    /// Nothing held (checked per frame without the lock).
    open: AtomicBool,
    state: Mutex<State>,
    max_bytes: usize,
    max_age: chrono::Duration,
    pub stats: GateStats,
}

impl Gate {
    /// A gate in `mode` ([`Mode::All`] or [`Mode::Starting`]) holding at most `max_bytes` and
    /// `max_age` of level changes while it holds.
    pub fn new(mode: Mode, max_bytes: usize, max_age: std::time::Duration) -> Gate {
        Gate {
            open: AtomicBool::new(mode == Mode::All),
            state: Mutex::new(State {
                mode,
                foreign: Vec::new(),
                taking_over: false,
                window: VecDeque::new(),
                bytes: 0,
                evicted: None,
                evicted_assets: HashSet::new(),
                inherited_elsewhere: false,
                lost_once: false,
                deposed: None,
            }),
            max_bytes: max_bytes.max(1),
            max_age: chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX),
            stats: GateStats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("gate lock")
    }

    /// A frame's rows: those to queue, the held level changes kept in the window.
    pub fn route(&self, rows: Vec<Row>) -> Vec<Row> {
        if self.open.load(Ordering::Acquire) || !rows.iter().any(|r| matches!(r, Row::PriceChange { .. })) {
            return rows;
        }
        let mut st = self.lock();
        let mut pass = Vec::with_capacity(rows.len());
        for row in rows {
            if matches!(row, Row::PriceChange { .. }) && st.holds(&row) {
                let bytes = row.approx_bytes();
                st.bytes += bytes;
                st.window.push_back((row, bytes));
            } else {
                pass.push(row);
            }
        }
        self.evict(&mut st);
        pass
    }

    /// Lets go of the window's oldest rows past its age or size.
    fn evict(&self, st: &mut State) {
        let newest = st.window.back().map(|(r, _)| r.received_at());
        while let Some((front, bytes)) = st.window.front() {
            let old = newest.is_some_and(|n| n - front.received_at() > self.max_age);
            if !old && st.bytes <= self.max_bytes {
                break;
            }
            let at = front.received_at();
            st.bytes -= bytes;
            if let Some(asset) = front.asset() {
                if !st.evicted_assets.contains(asset) {
                    st.evicted_assets.insert(asset.to_owned());
                }
            }
            st.evicted = Some(st.evicted.map_or((at, at), |(from, to)| (from.min(at), to.max(at))));
            st.window.pop_front();
            self.stats.evicted_rows.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.window_rows.store(st.window.len() as u64, Ordering::Relaxed);
        self.stats.window_bytes.store(st.bytes as u64, Ordering::Relaxed);
    }

    /// How to store a batch of `origin` now.
    pub fn plan(&self, origin: Origin) -> Plan {
        let st = self.lock();
        match &st.mode {
            Mode::All => Plan { fence: None, strip: false, origin },
            Mode::Starting | Mode::Standby => Plan { fence: None, strip: true, origin },
            Mode::Writer(fence) => {
                // Rows that another writer may have stored: every level change anti-joined.
                let elsewhere = match origin {
                    Origin::MaybeStored => st.inherited_elsewhere || st.lost_once,
                    Origin::Spilled => st.lost_once,
                    _ => false,
                };
                Plan { fence: Some(fence.clone()), strip: false, origin: if elsewhere { Origin::Elsewhere } else { origin } }
            }
        }
    }

    /// Whether the first answer of the election is still awaited (the spool's replay waits).
    pub fn starting(&self) -> bool {
        self.lock().mode == Mode::Starting
    }

    /// The fence this instance writes under, if it writes its slice.
    pub fn fence(&self) -> Option<Fence> {
        match &self.lock().mode {
            Mode::Writer(f) => Some(f.clone()),
            _ => None,
        }
    }

    /// `writer`, `standby` or `all` (the status's `slice_role`).
    pub fn role(&self) -> &'static str {
        match self.lock().mode {
            Mode::All => "all",
            Mode::Writer(_) => "writer",
            Mode::Starting | Mode::Standby => "standby",
        }
    }

    pub fn foreign(&self) -> Vec<Slice> {
        self.lock().foreign.clone()
    }

    /// Another instance writes the slice: level changes are held from now on (again: a no-op).
    pub fn stand_by(&self) {
        let mut st = self.lock();
        if matches!(st.mode, Mode::Writer(_)) {
            st.lost_once = true;
        }
        st.mode = Mode::Standby;
        st.taking_over = false;
        self.open.store(false, Ordering::Release);
    }

    /// A batch found its fence gone: another instance took the slice.
    pub fn fenced_out(&self, fence: &Fence) {
        let mut st = self.lock();
        if st.mode == Mode::Writer(fence.clone()) {
            tracing::warn!(message_id = crate::journal::LIFECYCLE, slice = %fence.slice, epoch = fence.epoch,
                "another instance took this slice's level changes (fence moved): holding them");
            st.mode = Mode::Standby;
            st.lost_once = true;
            st.taking_over = false;
            st.deposed = Some(fence.clone());
            self.open.store(false, Ordering::Release);
        }
    }

    /// Whether a batch found `fence` gone already (no takeover under it again).
    pub fn deposed(&self, fence: &Fence) -> bool {
        self.lock().deposed.as_ref() == Some(fence)
    }

    /// Starts a takeover: this instance writes under `fence`, but for the markets of `foreign`
    /// writers; everything is held until [`Gate::finish`].
    pub fn begin(&self, fence: Fence, foreign: Vec<Slice>, inherited_elsewhere: bool) {
        let mut st = self.lock();
        st.mode = Mode::Writer(fence);
        st.foreign = foreign;
        st.taking_over = true;
        st.inherited_elsewhere |= inherited_elsewhere;
        self.open.store(false, Ordering::Release);
    }

    /// The held rows this instance now writes (all but the markets of foreign writers), out of
    /// the window.
    pub fn drain_writable(&self) -> Vec<Row> {
        let mut st = self.lock();
        let Mode::Writer(_) = st.mode else { return Vec::new() };
        let foreign = st.foreign.clone();
        let (mut out, mut keep, mut bytes) = (Vec::new(), VecDeque::new(), 0);
        for (row, b) in std::mem::take(&mut st.window) {
            if owned_by(&foreign, &row) {
                bytes += b;
                keep.push_back((row, b));
            } else {
                out.push(row);
            }
        }
        st.window = keep;
        st.bytes = bytes;
        self.stats.window_rows.store(st.window.len() as u64, Ordering::Relaxed);
        self.stats.window_bytes.store(bytes as u64, Ordering::Relaxed);
        out
    }

    /// Ends a takeover: the last held rows this instance writes, and from now on they pass.
    pub fn finish(&self) -> Vec<Row> {
        let rows = self.drain_writable();
        let mut st = self.lock();
        if matches!(st.mode, Mode::Writer(_)) {
            st.taking_over = false;
            self.open.store(st.foreign.is_empty(), Ordering::Release);
            self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
        }
        rows
    }

    /// Copies of the held level changes of `assets` received from `from` to `to`, and the
    /// oldest receive time the window holds (how far back it reaches).
    pub fn copy_window(&self, assets: &HashSet<&str>, from: DateTime<Utc>, to: DateTime<Utc>) -> (Vec<Row>, Option<DateTime<Utc>>) {
        let st = self.lock();
        let oldest = st.window.front().map(|(r, _)| r.received_at());
        let rows = st
            .window
            .iter()
            .map(|(r, _)| r)
            .filter(|r| (from..=to).contains(&r.received_at()) && r.asset().is_some_and(|a| assets.contains(a)))
            .cloned()
            .collect();
        (rows, oldest)
    }

    /// Forgets what the window let go through `through` (the writer's commits reached that far:
    /// no gap there), so a standby of a year keeps a record of seconds, not of every asset it
    /// ever let go.
    pub fn forget_evicted_through(&self, through: DateTime<Utc>) {
        let mut st = self.lock();
        if st.evicted.is_some_and(|(_, to)| to <= through) {
            st.evicted = None;
            st.evicted_assets = HashSet::new();
        }
    }

    /// What the window let go while held since the last call — (oldest, newest) receive time
    /// and the rows' assets — cleared.
    pub fn take_evicted(&self) -> Option<(DateTime<Utc>, DateTime<Utc>, Vec<String>)> {
        let mut st = self.lock();
        let (from, to) = st.evicted.take()?;
        let mut assets: Vec<String> = std::mem::take(&mut st.evicted_assets).into_iter().collect();
        assets.sort();
        Some((from, to, assets))
    }
}

impl State {
    /// Whether a level change is held now.
    fn holds(&self, row: &Row) -> bool {
        match self.mode {
            Mode::All => false,
            Mode::Starting | Mode::Standby => true,
            Mode::Writer(_) => self.taking_over || owned_by(&self.foreign, row),
        }
    }
}

/// Whether one of `slices` owns the row's market (its condition id; its token id when none).
fn owned_by(slices: &[Slice], row: &Row) -> bool {
    if slices.is_empty() {
        return false;
    }
    let key = match row {
        Row::PriceChange { condition_id: Some(c), .. } => c.as_ref(),
        _ => row.asset().unwrap_or_default(),
    };
    slices.iter().any(|s| s.owns(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::polymarket::decode::Side;
    use crate::polymarket::ws::LevelChange;
    use std::time::Duration;

    fn change(asset: &str, market: &str, ms: i64) -> Row {
        let t = DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap();
        Row::PriceChange {
            change: LevelChange {
                asset_id: asset.into(),
                price: "0.5".parse().unwrap(),
                size: "1".parse().unwrap(),
                side: Side::Buy,
                hash: None,
                best_bid: None,
                best_ask: None,
            },
            condition_id: Some(market.into()),
            source_ts: t,
            received_at: t,
        }
    }

    fn fence() -> Fence {
        Fence { slice: "0/1".into(), epoch: 1 }
    }

    #[test]
    fn without_an_election_nothing_is_held_or_checked() {
        let g = Gate::new(Mode::All, 1 << 20, Duration::from_secs(30));
        assert_eq!(g.route(vec![change("a", "0xm", 0)]).len(), 1);
        assert_eq!(g.plan(Origin::MaybeStored), Plan { fence: None, strip: false, origin: Origin::MaybeStored });
    }

    #[test]
    fn a_standby_holds_level_changes_and_passes_the_rest() {
        let g = Gate::new(Mode::Starting, 1 << 20, Duration::from_secs(30));
        let trade_like = Row::Quarantine { connection: None, reason: "r".into(), frame: "f".into(), received_at: Utc::now() };
        let passed = g.route(vec![change("a", "0xm", 0), trade_like.clone(), change("b", "0xm", 1)]);
        assert_eq!(passed, vec![trade_like]);
        assert_eq!(g.stats.window_rows.load(Ordering::Relaxed), 2);
        assert!(g.plan(Origin::Live).strip, "a standby's batches leave level changes out");
        assert!(g.starting());
        // A takeover: held until it finishes, then the window comes out in order.
        g.begin(fence(), vec![], false);
        assert!(g.route(vec![change("a", "0xm", 2)]).is_empty());
        let out = g.drain_writable();
        assert_eq!(out.len(), 3);
        assert!(g.route(vec![change("a", "0xm", 3)]).is_empty(), "still taking over");
        assert_eq!(g.finish().len(), 1);
        assert_eq!(g.route(vec![change("a", "0xm", 4)]).len(), 1, "written from now on");
        assert_eq!(g.plan(Origin::Live).fence, Some(fence()));
        assert!(g.take_evicted().is_none());
    }

    #[test]
    fn the_window_keeps_its_age_and_says_what_it_let_go() {
        let g = Gate::new(Mode::Standby, 1 << 20, Duration::from_secs(30));
        g.route(vec![change("a", "0xm", 0)]);
        g.route(vec![change("b", "0xm", 10_000)]);
        g.route(vec![change("c", "0xm", 45_000)]);
        assert_eq!(g.stats.window_rows.load(Ordering::Relaxed), 1, "older than 30 s let go");
        assert_eq!(g.stats.evicted_rows.load(Ordering::Relaxed), 2);
        let (from, to, assets) = g.take_evicted().unwrap();
        assert_eq!(assets, ["a", "b"]);
        assert_eq!((to - from).num_milliseconds(), 10_000);
        assert!(g.take_evicted().is_none(), "cleared");
        // What the writer committed is no gap: forgotten once its commits reach past it.
        g.route(vec![change("d", "0xm", 80_000)]);
        let evicted_at = DateTime::from_timestamp_millis(1_800_000_000_000 + 45_000).unwrap();
        g.forget_evicted_through(evicted_at - chrono::Duration::milliseconds(1));
        assert!(g.take_evicted().is_some(), "the writer's commits had not reached it");
        g.route(vec![change("e", "0xm", 120_000)]);
        g.forget_evicted_through(DateTime::from_timestamp_millis(1_800_000_000_000 + 80_000).unwrap());
        assert!(g.take_evicted().is_none(), "forgotten");
        // And its size.
        let small = Gate::new(Mode::Standby, change("a", "0xm", 0).approx_bytes() * 2, Duration::from_secs(30));
        for ms in 0..5 {
            small.route(vec![change("a", "0xm", ms)]);
        }
        assert_eq!(small.stats.window_rows.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn markets_of_an_older_writer_of_another_count_stay_held() {
        let g = Gate::new(Mode::Starting, 1 << 20, Duration::from_secs(30));
        let old = Slice::parse("0/2").unwrap();
        let (mine, theirs) = (0..100).map(|m| format!("0x{m:x}")).partition::<Vec<_>, _>(|m| !old.owns(m));
        g.begin(fence(), vec![old], false);
        g.finish();
        assert_eq!(g.route(vec![change("a", &mine[0], 0)]).len(), 1);
        assert!(g.route(vec![change("b", &theirs[0], 0)]).is_empty());
        // The older writer is gone: its markets are taken over.
        g.begin(fence(), vec![], false);
        assert_eq!(g.finish().len(), 1);
        assert_eq!(g.route(vec![change("b", &theirs[0], 1)]).len(), 1);
    }

    #[test]
    fn a_fenced_out_writer_stands_by_and_anti_joins_what_it_spooled() {
        let g = Gate::new(Mode::Starting, 1 << 20, Duration::from_secs(30));
        g.begin(fence(), vec![], true);
        g.finish();
        assert_eq!(g.plan(Origin::MaybeStored).origin, Origin::Elsewhere, "a previous run's spool, another writer since");
        assert_eq!(g.plan(Origin::Spilled).origin, Origin::Spilled);
        g.fenced_out(&fence());
        assert!(g.plan(Origin::Live).strip);
        assert!(g.deposed(&fence()));
        g.begin(Fence { slice: "0/1".into(), epoch: 3 }, vec![], false);
        g.finish();
        assert_eq!(g.plan(Origin::Spilled).origin, Origin::Elsewhere, "spooled before it lost the slice");
    }
}
