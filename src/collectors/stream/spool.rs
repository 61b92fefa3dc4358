//! The on-disk spool: when the write queue is full (the database is down or slow), rows go to
//! append-only segment files in `<spool_dir>/spool/`, bounded in bytes, and are replayed in
//! order once the database keeps up again. It survives restarts.
//!
//! - **Format.** `segment-N.bin`, binary (see [`super::spool_format`]: ~50 bytes a level
//!   change); `segment-N.jsonl` segments, JSON lines, are an older release's and are still
//!   replayed. Appends always go to a binary segment; a run starts a new one (`create_new`: a
//!   file already there is never appended to).
//! - **Bound to its database.** `spool.meta` names the database the rows were written for
//!   (`collector_database.id`, made once per database by migration 3). A spool found for
//!   another database — or from a release before the binding — is moved aside to
//!   `orphaned-<time>/` with an ERROR and never replayed into the wrong database.
//! - **Segments.** A segment is closed (and fsynced) at [`SEGMENT_BYTES`]; a replayed segment
//!   is deleted. The cap counts bytes not yet replayed.
//! - **Two sides.** [`Spool`] is the appending side and the bookkeeping (which segments, how
//!   far replayed), held under the sink's lock: no read from disk there. The replay reads
//!   segments with a [`SpoolReader`](super::spool_read::SpoolReader) from a [`ReadPlan`],
//!   outside that lock.
//! - **Failures.** Appends are buffered ([`WRITE_BUFFER`]) and written out when the buffer
//!   fills, a second after the last write-out, before each replay read, when a segment closes
//!   and at the stop. A write that fails (a full disk, an I/O error) loses the rows buffered
//!   since the last write-out: they are reported as lost ([`SpoolError::Lost`], counted and
//!   logged as DATA LOST by the sink), the segment is cut back to what was written, and the
//!   spool refuses rows without touching the disk for a growing pause ([`PAUSE`]) before it
//!   tries again in a new segment: no spin under the sink's lock. A segment the replay cannot
//!   read is moved aside to `unreadable-<time>/` and the replay goes on.
//! - **Crash safety.** A torn last record (a crash mid-append) is cut off on open. A process
//!   that dies loses at most the buffered rows (as it loses the rows in the write queue).
//!   Segments are fsynced when closed and at the stop ([`Spool::sync`]); rows appended since
//!   the last fsync may be lost if the machine (not only the process) dies.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::spool_format::{self, HEADER, LossWindow, Record, WriteDict};
use crate::backoff::Backoff;

/// A segment is closed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Appends are buffered up to this many bytes: one write per row (under the sink's lock, on
/// the readers' threads) made spilling slower than the database it stood in for.
pub const WRITE_BUFFER: usize = 256 << 10;

/// Buffered appends are written out at least this often.
const WRITE_OUT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// After a failed write, the spool refuses rows (without I/O) for a pause growing from 1 s to
/// 30 s with the failures in a row.
pub const PAUSE: Backoff = Backoff::new(std::time::Duration::from_secs(1), std::time::Duration::from_secs(30));

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full ({bytes} of {max} bytes not yet replayed): row dropped")]
    Full { bytes: u64, max: u64 },
    #[error("spool {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A write failed: `rows` rows (the ones buffered since the last write-out, this one
    /// included) are lost; `window` covers them (and may cover some kept ones too).
    #[error("spool {path}: {source}: {rows} rows lost")]
    Lost { rows: u64, window: Box<LossWindow>, path: String, source: std::io::Error },
    #[error("spool paused for {ms} ms more after a failed write: row dropped")]
    Paused { ms: u64 },
}

impl SpoolError {
    /// The error as it concerns an append that did not take its row either: one more lost.
    fn and_this_row(self) -> SpoolError {
        match self {
            SpoolError::Lost { rows, window, path, source } => SpoolError::Lost { rows: rows + 1, window, path, source },
            other => other,
        }
    }

    /// The rows this error loses: those buffered (for [`SpoolError::Lost`]), else the one
    /// being appended.
    pub fn rows_lost(&self) -> u64 {
        match self {
            SpoolError::Lost { rows, .. } => *rows,
            _ => 1,
        }
    }
}

/// Where the replay stands: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// One segment file: its number, its bytes (appended, buffered ones included), the bytes the
/// replay may read (written out), and whether it is an older release's JSON lines.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub n: u64,
    pub size: u64,
    pub readable: u64,
    pub json: bool,
}

/// What the replay reads next: the segments from `from` on, as far as each is readable.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    pub dir: PathBuf,
    pub segments: Vec<Segment>,
    pub from: Position,
}

/// The segment being appended to.
struct Open {
    file: File,
    /// Appended records not yet written out, where each row's records end in it, and what
    /// they cover (for a gap, should the write fail).
    buf: Vec<u8>,
    ends: Vec<usize>,
    window: LossWindow,
    /// Bytes of the file written out.
    written: u64,
    last_out: Instant,
}

pub struct Spool {
    dir: PathBuf,
    /// Segments on disk, oldest first; the last is the one appended to.
    segments: Vec<Segment>,
    file: Option<Open>,
    /// The ids defined in the segment appended to, and its number (`None`: the next append
    /// starts a new segment).
    dict: WriteDict,
    dict_for: Option<u64>,
    read_at: Position,
    /// The end of the rows found at open (a previous run's): rows before it may be stored
    /// already (a crash or a stop came between their write and the spool's truncation), rows
    /// after it were appended by this process and reach the database only through the replay.
    /// Fixed at open: the replay position only grows (segment numbers too), so once past it,
    /// it stays past.
    inherited_end: Position,
    max_bytes: u64,
    /// After a failed write: no append until then, and the failures in a row.
    paused_until: Option<Instant>,
    failures: u32,
}

pub(super) fn io(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.display().to_string(), source }
}

impl Spool {
    /// Opens (or creates) the spool under `dir` for the database `database` (its identity).
    pub fn open(dir: &Path, max_bytes: u64, database: &str) -> Result<Spool, SpoolError> {
        let root = dir.join("spool");
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let meta = root.join("spool.meta");
        let owner = std::fs::read_to_string(&meta).ok().map(|s| s.trim().to_string());
        let legacy = dir.join("spool.jsonl");
        if legacy.metadata().is_ok_and(|m| m.len() > 0) {
            set_aside(dir, "orphaned", std::slice::from_ref(&legacy), "a spool of a release without a database binding");
        } else {
            let _ = std::fs::remove_file(&legacy);
        }
        let mut segments = list_segments(&root)?;
        if owner.as_deref() != Some(database) {
            if !segments.is_empty() {
                let files: Vec<PathBuf> = segments.iter().map(|s| segment_path(&root, s)).collect();
                let whose = owner.unwrap_or_else(|| "an unknown database".into());
                set_aside(dir, "orphaned", &files, &format!("written for database {whose}, not this one ({database})"));
                segments.clear();
            }
            std::fs::write(&meta, format!("{database}\n")).map_err(io(&meta))?;
        }
        // A crash mid-append leaves a torn last record: cut it.
        if let Some(last) = segments.last_mut() {
            let path = segment_path(&root, last);
            let keep = complete_prefix(&path, last.json)?;
            if keep < last.size {
                tracing::warn!(file = %path.display(), cut_bytes = last.size - keep, "torn spool tail cut (a crash during an append)");
                OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(keep)).map_err(io(&path))?;
                last.size = keep;
                last.readable = keep;
            }
        }
        let read_at = Position { segment: segments.first().map_or(1, |s| s.n), offset: 0 };
        let inherited_end = Position { segment: segments.last().map_or(0, |s| s.n), offset: segments.last().map_or(0, |s| s.size) };
        Ok(Spool {
            dir: root,
            segments,
            file: None,
            dict: WriteDict::default(),
            dict_for: None,
            read_at,
            inherited_end,
            max_bytes,
            paused_until: None,
            failures: 0,
        })
    }

    /// Bytes not yet replayed.
    pub fn pending_bytes(&self) -> u64 {
        let total: u64 = self.segments.iter().map(|s| s.size).sum();
        let read = self.segments.first().filter(|s| s.n == self.read_at.segment).map_or(0, |_| self.read_at.offset);
        total.saturating_sub(read)
    }

    pub fn is_empty(&self) -> bool {
        self.pending_bytes() == 0
    }

    /// Appends one row (buffered), opening a new segment when the current one is full or
    /// was not started by this run; returns the bytes it took.
    pub fn append<T: Record>(&mut self, row: &T) -> Result<u64, SpoolError> {
        if let Some(until) = self.paused_until {
            let now = Instant::now();
            if now < until {
                return Err(SpoolError::Paused { ms: (until - now).as_millis() as u64 });
            }
            self.paused_until = None;
        }
        let continuing = self.file.is_some() && self.segments.last().is_some_and(|s| Some(s.n) == self.dict_for);
        if !continuing {
            self.dict = WriteDict::default();
            self.dict_for = None;
        }
        let before = self.dict.len();
        let mut record = Vec::new();
        spool_format::encode(row, &mut self.dict, &mut record);
        let mut roll = !continuing;
        if continuing && self.segments.last().is_some_and(|s| s.size + record.len() as u64 > SEGMENT_BYTES) {
            // The next segment defines its own ids.
            roll = true;
            self.dict = WriteDict::default();
            self.dict_for = None;
            record.clear();
            spool_format::encode(row, &mut self.dict, &mut record);
        }
        let adds = record.len() as u64 + if roll { HEADER.len() as u64 } else { 0 };
        let pending = self.pending_bytes();
        if pending + adds > self.max_bytes {
            self.dict.truncate(if roll { 0 } else { before });
            return Err(SpoolError::Full { bytes: pending, max: self.max_bytes });
        }
        if roll {
            if let Err(e) = self.close_segment().and_then(|()| self.start_segment()) {
                self.dict.truncate(0);
                return Err(e.and_this_row());
            }
        }
        let open = self.file.as_mut().expect("open");
        open.buf.extend_from_slice(&record);
        open.ends.push(open.buf.len());
        row.note_loss(&mut open.window);
        self.segments.last_mut().expect("a segment").size += record.len() as u64;
        if open.buf.len() >= WRITE_BUFFER || open.last_out.elapsed() >= WRITE_OUT_EVERY {
            self.write_out()?;
        }
        Ok(record.len() as u64)
    }

    /// A new segment after the last (or the replay position), created new, its header
    /// buffered; the next append writes into it.
    fn start_segment(&mut self) -> Result<(), SpoolError> {
        let mut n = self.segments.last().map_or(self.read_at.segment, |s| s.n + 1);
        let file = loop {
            let path = segment_path(&self.dir, &Segment { n, size: 0, readable: 0, json: false });
            match OpenOptions::new().create_new(true).append(true).open(&path) {
                Ok(f) => break f,
                // A file of that number we do not know of (left by a failure or by hand):
                // never appended to; the next number is taken.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < self.read_at.segment.max(1) + 1_000_000 => n += 1,
                Err(e) => return Err(self.failed(0, LossWindow::default(), &path, e)),
            }
        };
        self.segments.push(Segment { n, size: HEADER.len() as u64, readable: 0, json: false });
        self.dict_for = Some(n);
        self.file = Some(Open {
            file,
            buf: HEADER.to_vec(),
            ends: Vec::new(),
            window: LossWindow::default(),
            written: 0,
            last_out: Instant::now(),
        });
        Ok(())
    }

    /// Writes the buffered appends to the open segment (the operating system has them then,
    /// and the replay may read them).
    fn write_out(&mut self) -> Result<(), SpoolError> {
        let Some(open) = self.file.as_mut().filter(|o| !o.buf.is_empty()) else { return Ok(()) };
        let seg = self.segments.last_mut().expect("the open segment");
        match open.file.write_all(&open.buf) {
            Ok(()) => {
                open.written += open.buf.len() as u64;
                seg.readable = open.written;
                open.buf.clear();
                open.ends.clear();
                open.window = LossWindow::default();
                open.last_out = Instant::now();
                self.failures = 0;
                Ok(())
            }
            Err(e) => {
                // Part of the buffer may be in the file (a disk filling up takes what fits):
                // its whole rows are kept, the file cut after the last of them.
                let reached = open.file.metadata().map_or(0, |m| m.len().saturating_sub(open.written)) as usize;
                let kept = open.ends.iter().take_while(|end| **end <= reached).count();
                let keep = if kept > 0 { open.ends[kept - 1] } else { 0 } as u64;
                let cut = open.file.set_len(open.written + keep).is_ok();
                let keep = if cut { keep } else { 0 };
                let lost = (open.ends.len() - if cut { kept } else { 0 }) as u64;
                let path = segment_path(&self.dir, seg);
                seg.size = open.written + keep;
                seg.readable = seg.size;
                if seg.size == 0 {
                    // Not even its header: nothing to replay in it.
                    self.segments.pop();
                    let _ = std::fs::remove_file(&path);
                }
                // The window covers the whole buffer (the kept rows too: their backfill finds
                // them stored); its count is the rows lost.
                let mut window = std::mem::take(&mut self.file.as_mut().expect("open").window);
                window.rows = lost;
                Err(self.failed(lost, window, &path, e))
            }
        }
    }

    /// After a failed write: the next append starts a new segment, after a pause.
    fn failed(&mut self, lost: u64, window: LossWindow, path: &Path, source: std::io::Error) -> SpoolError {
        self.file = None;
        self.dict_for = None;
        self.paused_until = Some(Instant::now() + PAUSE.ceiling(self.failures));
        self.failures += 1;
        SpoolError::Lost { rows: lost, window: Box::new(window), path: path.display().to_string(), source }
    }

    /// Writes out and fsyncs the open segment (at the stop).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.write_out()?;
        if let (Some(open), Some(s)) = (&self.file, self.segments.last()) {
            open.file.sync_data().map_err(io(&segment_path(&self.dir, s)))?;
        }
        Ok(())
    }

    fn close_segment(&mut self) -> Result<(), SpoolError> {
        let synced = self.sync();
        self.file = None;
        self.dict_for = None;
        synced
    }

    /// What the replay reads next (buffered appends written out first, so it sees them).
    /// A failed write-out is returned beside the plan: its rows are lost, the rest is read.
    pub fn plan(&mut self) -> (ReadPlan, Option<SpoolError>) {
        let failed = self.write_out().err();
        let plan = ReadPlan { dir: self.dir.clone(), segments: self.segments.clone(), from: self.read_at };
        (plan, failed)
    }

    /// Whether the rows read next may be stored already: they (or some of them) were found at
    /// open. Rows this process appended were never handed to the database before their
    /// replay, so their replay is a plain write.
    pub fn reading_inherited(&self) -> bool {
        self.read_at < self.inherited_end
    }

    /// Marks everything before `at` as stored; deletes fully replayed segments.
    pub fn commit(&mut self, at: Position) -> Result<(), SpoolError> {
        self.read_at = at;
        while let Some(first) = self.segments.first().copied() {
            let done = first.n < at.segment || (first.n == at.segment && at.offset >= first.size);
            if !done {
                break;
            }
            let path = segment_path(&self.dir, &first);
            if self.segments.len() == 1 {
                // The segment being appended to: the next append starts a new one.
                self.file = None;
                self.dict_for = None;
            }
            std::fs::remove_file(&path).map_err(io(&path))?;
            self.segments.remove(0);
            let next = self.segments.first().map_or(first.n + 1, |s| s.n);
            self.read_at = Position { segment: next, offset: if next == at.segment { at.offset } else { 0 } };
        }
        Ok(())
    }

    /// A segment the replay cannot read: moved aside to `unreadable-<time>/` (kept for an
    /// operator, never replayed); the replay goes on with the next. Returns its bytes.
    pub fn set_aside_unreadable(&mut self, n: u64, why: &str) -> u64 {
        let Some(i) = self.segments.iter().position(|s| s.n == n) else { return 0 };
        let seg = self.segments.remove(i);
        if i == self.segments.len() {
            // It was the one appended to.
            self.file = None;
            self.dict_for = None;
        }
        let root = self.dir.parent().unwrap_or(&self.dir).to_path_buf();
        set_aside(&root, "unreadable", &[segment_path(&self.dir, &seg)], why);
        if self.read_at.segment == n {
            self.read_at = Position { segment: self.segments.get(i).map_or(n + 1, |s| s.n), offset: 0 };
        }
        seg.size
    }

    /// Segment files on disk (for tests and health).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

impl Drop for Spool {
    /// The buffered appends go to the file (as a `BufWriter` would): a spool dropped without
    /// [`Spool::sync`] (a panic unwinding) keeps what it took.
    fn drop(&mut self) {
        let _ = self.write_out();
    }
}

pub(super) fn segment_path(root: &Path, s: &Segment) -> PathBuf {
    root.join(format!("segment-{:012}.{}", s.n, if s.json { "jsonl" } else { "bin" }))
}

fn list_segments(root: &Path) -> Result<Vec<Segment>, SpoolError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).map_err(io(root))? {
        let e = e.map_err(io(root))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("segment-") else { continue };
        let (n, json) = match (rest.strip_suffix(".bin"), rest.strip_suffix(".jsonl")) {
            (Some(n), _) => (n, false),
            (_, Some(n)) => (n, true),
            _ => continue,
        };
        if let Ok(n) = n.parse() {
            let size = e.metadata().map_err(io(&e.path()))?.len();
            out.push(Segment { n, size, readable: size, json });
        }
    }
    out.sort_unstable_by_key(|s| s.n);
    Ok(out)
}

/// The length of `path` up to the end of its last complete record (line, for JSON lines).
fn complete_prefix(path: &Path, json: bool) -> Result<u64, SpoolError> {
    let mut f = File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    if !json {
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(io(path))?;
        if bytes.len() < HEADER.len() {
            return Ok(0);
        }
        let mut at = HEADER.len();
        while let Some((n, _)) = spool_format::next_frame(&bytes[at..]) {
            at += n;
        }
        return Ok(at as u64);
    }
    let mut pos = len;
    let mut buf = vec![0u8; 64 * 1024];
    while pos > 0 {
        let n = (buf.len() as u64).min(pos);
        f.seek(SeekFrom::Start(pos - n)).map_err(io(path))?;
        f.read_exact(&mut buf[..n as usize]).map_err(io(path))?;
        if let Some(i) = buf[..n as usize].iter().rposition(|b| *b == b'\n') {
            return Ok(pos - n + i as u64 + 1);
        }
        pos -= n;
    }
    Ok(0)
}

/// Moves `files` to `<dir>/<kind>-<time>/`, loudly.
fn set_aside(dir: &Path, kind: &str, files: &[PathBuf], why: &str) {
    let aside = dir.join(format!("{kind}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")));
    let moved = std::fs::create_dir_all(&aside).and_then(|()| {
        for f in files {
            std::fs::rename(f, aside.join(f.file_name().expect("a file")))?;
        }
        Ok(())
    });
    match moved {
        Ok(()) => tracing::error!(message_id = crate::journal::SPOOL, kept_in = %aside.display(), files = files.len(),
            "spool {why}: kept aside in {}, not replayed", aside.display()),
        Err(e) => tracing::error!(message_id = crate::journal::SPOOL, error = %e, "spool {why}: cannot set it aside: {e}"),
    }
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
