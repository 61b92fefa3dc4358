//! The on-disk spool: when the write queue is full (the database is down or slow), rows go to
//! append-only segment files of JSON lines in `<spool_dir>/spool/`, bounded in bytes, and are
//! replayed in order once the database keeps up again. It survives restarts.
//!
//! - **Bound to its database.** `spool.meta` names the database the rows were written for
//!   (`collector_database.id`, made once per database by migration 3). A spool found for
//!   another database — or from a release before the binding — is moved aside to
//!   `orphaned-<time>/` with an ERROR and never replayed into the wrong database.
//! - **Segments.** A segment is closed (and fsynced) at [`SEGMENT_BYTES`]; a replayed segment
//!   is deleted. The cap counts bytes not yet replayed.
//! - **Crash safety.** A torn last line (a crash mid-append) is cut off on open. Appends are
//!   buffered ([`WRITE_BUFFER`]) and written out when the buffer fills, a second after the
//!   last write-out, before each replay read, when a segment closes and at the stop: a
//!   process that dies loses at most that much (as it loses the rows in the write queue).
//!   Segments are fsynced when closed and at the stop ([`Spool::sync`]); rows appended since
//!   the last fsync may be lost if the machine (not only the process) dies.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Serialize, de::DeserializeOwned};

/// A segment is closed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Appends are buffered up to this many bytes: one write per row (under the sink's lock, on
/// the readers' threads) made spilling slower than the database it stood in for.
pub const WRITE_BUFFER: usize = 256 << 10;

/// Buffered appends are written out at least this often.
const WRITE_OUT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full ({bytes} of {max} bytes not yet replayed): row dropped")]
    Full { bytes: u64, max: u64 },
    #[error("spool {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Where the replay stands: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

pub struct Spool {
    dir: PathBuf,
    /// Segment numbers on disk, oldest first; the last is the one appended to.
    segments: Vec<u64>,
    /// Bytes in each segment (same order).
    sizes: Vec<u64>,
    /// The open segment being appended to, and when its buffer was last written out.
    file: Option<(BufWriter<File>, std::time::Instant)>,
    read_at: Position,
    /// The end of the rows found at open (a previous run's): rows before it may be stored
    /// already (a crash or a stop came between their write and the spool's truncation), rows
    /// after it were appended by this process and reach the database only through the replay.
    /// Fixed at open: the replay position only grows (segment numbers too), so once past it,
    /// it stays past.
    inherited_end: Position,
    max_bytes: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
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
            set_aside(dir, std::slice::from_ref(&legacy), "a spool of a release without a database binding");
        } else {
            let _ = std::fs::remove_file(&legacy);
        }
        let mut segments = list_segments(&root)?;
        if owner.as_deref() != Some(database) {
            if !segments.is_empty() {
                let files: Vec<PathBuf> = segments.iter().map(|n| segment_path(&root, *n)).collect();
                let whose = owner.unwrap_or_else(|| "an unknown database".into());
                set_aside(dir, &files, &format!("written for database {whose}, not this one ({database})"));
                segments.clear();
            }
            std::fs::write(&meta, format!("{database}\n")).map_err(io(&meta))?;
        }
        let mut sizes = Vec::new();
        for n in &segments {
            let path = segment_path(&root, *n);
            sizes.push(std::fs::metadata(&path).map_err(io(&path))?.len());
        }
        // A crash mid-append leaves a torn last line: cut it.
        if let (Some(n), Some(size)) = (segments.last(), sizes.last_mut()) {
            let path = segment_path(&root, *n);
            let keep = complete_prefix(&path)?;
            if keep < *size {
                tracing::warn!(file = %path.display(), cut_bytes = *size - keep, "torn spool tail cut (a crash during an append)");
                OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(keep)).map_err(io(&path))?;
                *size = keep;
            }
        }
        let read_at = Position { segment: segments.first().copied().unwrap_or(1), offset: 0 };
        let inherited_end = Position { segment: segments.last().copied().unwrap_or(0), offset: sizes.last().copied().unwrap_or(0) };
        Ok(Spool { dir: root, segments, sizes, file: None, read_at, inherited_end, max_bytes })
    }

    /// Bytes not yet replayed.
    pub fn pending_bytes(&self) -> u64 {
        let total: u64 = self.sizes.iter().sum();
        total.saturating_sub(if self.segments.first() == Some(&self.read_at.segment) { self.read_at.offset } else { 0 })
    }

    pub fn is_empty(&self) -> bool {
        self.pending_bytes() == 0
    }

    /// Appends one row (one write of one line), opening a new segment when the current one
    /// is full.
    pub fn append<T: Serialize>(&mut self, row: &T) -> Result<(), SpoolError> {
        let mut line = serde_json::to_vec(row).expect("rows serialise");
        line.push(b'\n');
        let pending = self.pending_bytes();
        if pending + line.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full { bytes: pending, max: self.max_bytes });
        }
        let full = self.sizes.last().is_none_or(|s| *s + line.len() as u64 > SEGMENT_BYTES && *s > 0);
        if full {
            self.close_segment()?;
            let n = self.segments.last().map_or(self.read_at.segment, |n| n + 1);
            self.segments.push(n);
            self.sizes.push(0);
        }
        let path = segment_path(&self.dir, *self.segments.last().expect("a segment"));
        if self.file.is_none() {
            let f = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
            self.file = Some((BufWriter::with_capacity(WRITE_BUFFER, f), std::time::Instant::now()));
        }
        let (f, written_out) = self.file.as_mut().expect("open");
        f.write_all(&line).map_err(io(&path))?;
        *self.sizes.last_mut().expect("a segment") += line.len() as u64;
        if written_out.elapsed() >= WRITE_OUT_EVERY {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes the buffered appends to the open segment (the operating system has them then).
    fn write_out(&mut self) -> Result<(), SpoolError> {
        if let (Some((f, at)), Some(n)) = (self.file.as_mut(), self.segments.last()) {
            f.flush().map_err(io(&segment_path(&self.dir, *n)))?;
            *at = std::time::Instant::now();
        }
        Ok(())
    }

    /// Writes out and fsyncs the open segment (at the stop).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.write_out()?;
        if let (Some((f, _)), Some(n)) = (&self.file, self.segments.last()) {
            f.get_ref().sync_data().map_err(io(&segment_path(&self.dir, *n)))?;
        }
        Ok(())
    }

    fn close_segment(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        self.file = None;
        Ok(())
    }

    /// Reads up to `max` rows from the replay position without consuming them; returns the
    /// rows and the position to [`commit`](Self::commit) once they are stored. A line that
    /// does not decode is skipped and reported.
    pub fn peek<T: DeserializeOwned>(&mut self, max: usize) -> Result<(Vec<T>, Position, Vec<String>), SpoolError> {
        self.write_out()?;
        let (mut rows, mut bad, mut at) = (Vec::new(), Vec::new(), self.read_at);
        while rows.len() < max {
            let Some(idx) = self.segments.iter().position(|n| *n == at.segment) else { break };
            if at.offset >= self.sizes[idx] {
                match self.segments.get(idx + 1) {
                    Some(next) => {
                        at = Position { segment: *next, offset: 0 };
                        continue;
                    }
                    None => break,
                }
            }
            let path = segment_path(&self.dir, at.segment);
            let mut reader = BufReader::new(File::open(&path).map_err(io(&path))?);
            reader.seek(SeekFrom::Start(at.offset)).map_err(io(&path))?;
            let mut line = String::new();
            while rows.len() < max && at.offset < self.sizes[idx] {
                line.clear();
                let n = reader.read_line(&mut line).map_err(io(&path))?;
                if n == 0 {
                    break;
                }
                at.offset += n as u64;
                match serde_json::from_str(line.trim_end()) {
                    Ok(r) => rows.push(r),
                    Err(e) => bad.push(format!("{e}: {}", line.chars().take(200).collect::<String>())),
                }
            }
        }
        Ok((rows, at, bad))
    }

    /// Whether the rows [`peek`](Self::peek) returns next may be stored already: they (or
    /// some of them) were found at open. Rows this process appended were never handed to the
    /// database before their replay, so their replay is a plain write.
    pub fn reading_inherited(&self) -> bool {
        self.read_at < self.inherited_end
    }

    /// Marks everything before `at` as stored; deletes fully replayed segments.
    pub fn commit(&mut self, at: Position) -> Result<(), SpoolError> {
        self.read_at = at;
        while let Some(first) = self.segments.first().copied() {
            let done = first < at.segment || (first == at.segment && at.offset >= self.sizes[0]);
            if !done {
                break;
            }
            let path = segment_path(&self.dir, first);
            if self.segments.len() == 1 {
                // The segment being appended to: start it over.
                self.file = None;
            }
            std::fs::remove_file(&path).map_err(io(&path))?;
            self.segments.remove(0);
            self.sizes.remove(0);
            let next = self.segments.first().copied().unwrap_or(first + 1);
            self.read_at = Position { segment: next, offset: if next == at.segment { at.offset } else { 0 } };
        }
        Ok(())
    }

    /// Segment files on disk (for tests and health).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

fn segment_path(root: &Path, n: u64) -> PathBuf {
    root.join(format!("segment-{n:012}.jsonl"))
}

fn list_segments(root: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).map_err(io(root))? {
        let name = e.map_err(io(root))?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix("segment-").and_then(|r| r.strip_suffix(".jsonl")).and_then(|n| n.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The length of `path` up to and including its last newline.
fn complete_prefix(path: &Path) -> Result<u64, SpoolError> {
    let mut f = File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
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

/// Moves `files` to `<dir>/orphaned-<time>/`, loudly.
fn set_aside(dir: &Path, files: &[PathBuf], why: &str) {
    let aside = dir.join(format!("orphaned-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")));
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
mod tests {
    use super::*;

    #[test]
    fn rows_replay_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, "db-a").unwrap();
        for i in 0..10u32 {
            s.append(&i).unwrap();
        }
        let (rows, at, bad): (Vec<u32>, _, _) = s.peek(4).unwrap();
        assert_eq!(rows, [0, 1, 2, 3]);
        assert!(bad.is_empty());
        s.commit(at).unwrap();
        s.sync().unwrap();
        drop(s);
        // A new run starts from the segment's beginning: rows not deleted before are replayed
        // again (at-least-once; the writes are idempotent).
        let mut s = Spool::open(dir.path(), 1 << 20, "db-a").unwrap();
        s.append(&10u32).unwrap();
        assert!(s.reading_inherited(), "rows from before the open may be stored");
        let (rows, at, _): (Vec<u32>, _, _) = s.peek(5).unwrap();
        assert_eq!(rows, (0..5).collect::<Vec<_>>());
        s.commit(at).unwrap();
        assert!(s.reading_inherited(), "rows 5..10 are from before the open");
        let (rows, at, _): (Vec<u32>, _, _) = s.peek(5).unwrap();
        assert_eq!(rows, (5..10).collect::<Vec<_>>());
        s.commit(at).unwrap();
        assert!(!s.reading_inherited(), "row 10 was appended by this process");
        let (rows, at, _): (Vec<u32>, _, _) = s.peek(100).unwrap();
        assert_eq!(rows, [10]);
        s.commit(at).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.segment_count(), 0, "replayed segments are deleted");
        s.append(&42u32).unwrap();
        assert!(!s.reading_inherited());
        let (rows, _, _): (Vec<u32>, _, _) = s.peek(10).unwrap();
        assert_eq!(rows, [42]);
    }

    #[test]
    fn the_cap_counts_only_bytes_not_yet_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 100, "db").unwrap();
        let row = "x".repeat(20); // 23 bytes a line
        for _ in 0..4 {
            s.append(&row).unwrap();
        }
        assert!(matches!(s.append(&row), Err(SpoolError::Full { .. })));
        let (_, at, _): (Vec<String>, _, _) = s.peek(4).unwrap();
        s.commit(at).unwrap();
        for _ in 0..4 {
            s.append(&row).expect("room again after the replay");
        }
    }

    #[test]
    fn segments_roll_over_and_replayed_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX, "db").unwrap();
        let row = "y".repeat(1 << 20);
        for _ in 0..40 {
            s.append(&row).unwrap();
        }
        assert!(s.segment_count() >= 3, "{} segments", s.segment_count());
        let mut seen = 0;
        loop {
            let (rows, at, _): (Vec<String>, _, _) = s.peek(7).unwrap();
            if rows.is_empty() {
                break;
            }
            seen += rows.len();
            s.commit(at).unwrap();
            let on_disk = std::fs::read_dir(dir.path().join("spool")).unwrap().count() - 1; // minus spool.meta
            assert_eq!(on_disk, s.segment_count());
        }
        assert_eq!(seen, 40);
        assert!(s.is_empty());
    }

    #[test]
    fn a_torn_tail_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
        s.append(&1u32).unwrap();
        s.append(&2u32).unwrap();
        drop(s);
        let seg = segment_path(&dir.path().join("spool"), 1);
        OpenOptions::new().append(true).open(&seg).unwrap().write_all(b"{\"torn\":").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
        s.append(&3u32).unwrap();
        let (rows, _, bad): (Vec<u32>, _, _) = s.peek(10).unwrap();
        assert_eq!(rows, [1, 2, 3], "the torn line does not corrupt the next row");
        assert!(bad.is_empty(), "{bad:?}");
    }

    #[test]
    fn a_spool_for_another_database_is_set_aside_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, "db-a").unwrap();
        s.append(&7u32).unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20, "db-b").unwrap();
        assert!(s.is_empty(), "rows of db-a are not offered to db-b");
        let (rows, _, _): (Vec<u32>, _, _) = s.peek(10).unwrap();
        assert!(rows.is_empty());
        let aside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.starts_with("orphaned-").then_some(n)
        }).collect();
        assert_eq!(aside.len(), 1, "kept aside, not deleted");
        // A legacy single-file spool (no binding) is kept aside too.
        std::fs::write(dir.path().join("spool.jsonl"), "1\n").unwrap();
        let s = Spool::open(dir.path(), 1 << 20, "db-b").unwrap();
        assert!(s.is_empty());
        assert!(!dir.path().join("spool.jsonl").exists());
    }
}
