//! The on-disk spool: when the write queue is full (the database is down or slow), rows go to
//! append-only segment files in `<spool_dir>/spool/`, bounded in bytes, and are replayed in
//! order once the database keeps up again. It survives restarts.
//!
//! - **Format.** `segment-N.bin`, binary (see [`super::spool_format`]: ~50 bytes a level
//!   change); `segment-N.jsonl` segments, JSON lines, are an older release's and are still
//!   replayed. Appends always go to a binary segment; a run starts a new one.
//! - **Bound to its database.** `spool.meta` names the database the rows were written for
//!   (`collector_database.id`, made once per database by migration 3). A spool found for
//!   another database — or from a release before the binding — is moved aside to
//!   `orphaned-<time>/` with an ERROR and never replayed into the wrong database.
//! - **Segments.** A segment is closed (and fsynced) at [`SEGMENT_BYTES`]; a replayed segment
//!   is deleted. The cap counts bytes not yet replayed.
//! - **Crash safety.** A torn last record (a crash mid-append) is cut off on open. Appends are
//!   buffered ([`WRITE_BUFFER`]) and written out when the buffer fills, a second after the
//!   last write-out, before each replay read, when a segment closes and at the stop: a
//!   process that dies loses at most that much (as it loses the rows in the write queue).
//!   Segments are fsynced when closed and at the stop ([`Spool::sync`]); rows appended since
//!   the last fsync may be lost if the machine (not only the process) dies.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::spool_format::{self, HEADER, ReadDict, Record, WriteDict};

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

/// One segment file: its number, its bytes, and whether it is an older release's JSON lines.
#[derive(Debug, Clone, Copy)]
struct Segment {
    n: u64,
    size: u64,
    json: bool,
}

pub struct Spool {
    dir: PathBuf,
    /// Segments on disk, oldest first; the last is the one appended to.
    segments: Vec<Segment>,
    /// The open segment being appended to, and when its buffer was last written out.
    file: Option<(BufWriter<File>, std::time::Instant)>,
    /// The ids defined in the segment appended to, and its number (`None`: the next append
    /// starts a new segment).
    dict: WriteDict,
    dict_for: Option<u64>,
    /// The ids defined in the segment being read, as far as it was read, and its number.
    read_dict: (u64, ReadDict),
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
                let files: Vec<PathBuf> = segments.iter().map(|s| segment_path(&root, s)).collect();
                let whose = owner.unwrap_or_else(|| "an unknown database".into());
                set_aside(dir, &files, &format!("written for database {whose}, not this one ({database})"));
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
            read_dict: (0, ReadDict::default()),
            read_at,
            inherited_end,
            max_bytes,
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
        let continuing = self.segments.last().is_some_and(|s| Some(s.n) == self.dict_for);
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
            self.close_segment()?;
            let n = self.segments.last().map_or(self.read_at.segment, |s| s.n + 1);
            self.segments.push(Segment { n, size: 0, json: false });
            self.dict_for = Some(n);
            record.splice(0..0, HEADER.iter().copied());
        }
        let last = self.segments.last_mut().expect("a segment");
        let path = segment_path(&self.dir, last);
        if self.file.is_none() {
            let f = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
            self.file = Some((BufWriter::with_capacity(WRITE_BUFFER, f), std::time::Instant::now()));
        }
        let (f, written_out) = self.file.as_mut().expect("open");
        if let Err(e) = f.write_all(&record) {
            // Part of it may be in the file, past the segment's known size (where reading
            // stops): the next append starts a new segment with its own ids.
            self.file = None;
            self.dict_for = None;
            return Err(io(&path)(e));
        }
        last.size += record.len() as u64;
        if written_out.elapsed() >= WRITE_OUT_EVERY {
            self.write_out()?;
        }
        Ok(record.len() as u64)
    }

    /// Writes the buffered appends to the open segment (the operating system has them then).
    fn write_out(&mut self) -> Result<(), SpoolError> {
        if let (Some((f, at)), Some(s)) = (self.file.as_mut(), self.segments.last()) {
            f.flush().map_err(io(&segment_path(&self.dir, s)))?;
            *at = std::time::Instant::now();
        }
        Ok(())
    }

    /// Writes out and fsyncs the open segment (at the stop).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.write_out()?;
        if let (Some((f, _)), Some(s)) = (&self.file, self.segments.last()) {
            f.get_ref().sync_data().map_err(io(&segment_path(&self.dir, s)))?;
        }
        Ok(())
    }

    fn close_segment(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        self.file = None;
        Ok(())
    }

    /// Reads up to `max` rows from the replay position without consuming them; returns the
    /// rows and the position to [`commit`](Self::commit) once they are stored. A record that
    /// does not decode is skipped and reported.
    pub fn peek<T: Record>(&mut self, max: usize) -> Result<(Vec<T>, Position, Vec<String>), SpoolError> {
        self.write_out()?;
        let (mut rows, mut bad, mut at) = (Vec::new(), Vec::new(), self.read_at);
        while rows.len() < max {
            let Some(idx) = self.segments.iter().position(|s| s.n == at.segment) else { break };
            let seg = self.segments[idx];
            if at.offset >= seg.size {
                match self.segments.get(idx + 1) {
                    Some(next) => {
                        at = Position { segment: next.n, offset: 0 };
                        continue;
                    }
                    None => break,
                }
            }
            let path = segment_path(&self.dir, &seg);
            let mut reader = BufReader::new(File::open(&path).map_err(io(&path))?);
            if seg.json {
                reader.seek(SeekFrom::Start(at.offset)).map_err(io(&path))?;
                read_json_lines(&mut reader, &mut at, seg.size, max, &mut rows, &mut bad).map_err(io(&path))?;
            } else {
                if self.read_dict.0 != seg.n || at.offset == 0 {
                    // The segment's ids, from its start to where the replay stands.
                    self.read_dict = (seg.n, ReadDict::default());
                    if !read_header(&mut reader).map_err(io(&path))? {
                        bad.push(format!("{}: not a spool segment of this release (its header differs): skipped", path.display()));
                        at.offset = seg.size;
                        continue;
                    }
                    let until = at.offset.max(HEADER.len() as u64);
                    at.offset = HEADER.len() as u64;
                    read_records::<T>(&mut reader, &mut at, until, usize::MAX, &mut self.read_dict.1, None, &mut bad).map_err(io(&path))?;
                } else {
                    reader.seek(SeekFrom::Start(at.offset)).map_err(io(&path))?;
                }
                read_records(&mut reader, &mut at, seg.size, max, &mut self.read_dict.1, Some(&mut rows), &mut bad).map_err(io(&path))?;
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

    /// Segment files on disk (for tests and health).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

fn segment_path(root: &Path, s: &Segment) -> PathBuf {
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
            out.push(Segment { n, size, json });
        }
    }
    out.sort_unstable_by_key(|s| s.n);
    Ok(out)
}

/// Reads JSON lines (an older release's segment) from `at` up to `end`.
fn read_json_lines<T: Record>(
    reader: &mut BufReader<File>,
    at: &mut Position,
    end: u64,
    max: usize,
    rows: &mut Vec<T>,
    bad: &mut Vec<String>,
) -> std::io::Result<()> {
    let mut line = String::new();
    while rows.len() < max && at.offset < end {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            break;
        }
        at.offset += n as u64;
        match serde_json::from_str(line.trim_end()) {
            Ok(r) => rows.push(r),
            Err(e) => bad.push(format!("{e}: {}", line.chars().take(200).collect::<String>())),
        }
    }
    Ok(())
}

/// Whether the segment starts with this release's header.
fn read_header(reader: &mut BufReader<File>) -> std::io::Result<bool> {
    let mut head = vec![0u8; HEADER.len()];
    match reader.read_exact(&mut head) {
        Ok(()) => Ok(head == HEADER),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads binary records from `at` up to `end` (or until `max` rows): dictionary entries into
/// `dict`, rows into `rows` (`None`: only the dictionary is wanted).
fn read_records<T: Record>(
    reader: &mut BufReader<File>,
    at: &mut Position,
    end: u64,
    max: usize,
    dict: &mut ReadDict,
    mut rows: Option<&mut Vec<T>>,
    bad: &mut Vec<String>,
) -> std::io::Result<()> {
    let mut body = Vec::new();
    while at.offset < end && rows.as_ref().is_none_or(|r| r.len() < max) {
        let len = match read_frame(reader, &mut body) {
            Ok(Some(len)) => len,
            Ok(None) => break,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData) => {
                // A record cut short (a failed write before a later segment was begun): the
                // segment ends here.
                bad.push(format!("segment {}: {e} at byte {}: the rest of the segment skipped", at.segment, at.offset));
                at.offset = end;
                break;
            }
            Err(e) => return Err(e),
        };
        at.offset += len as u64;
        let is_row = body.first() != Some(&spool_format::DEFINE);
        if is_row && rows.is_none() {
            continue;
        }
        match spool_format::decode::<T>(&body, dict) {
            Ok(Some(r)) => rows.as_mut().expect("rows wanted").push(r),
            Ok(None) => {}
            Err(e) => bad.push(format!("record at byte {} of segment {}: {e}", at.offset - len as u64, at.segment)),
        }
    }
    Ok(())
}

/// Reads one framed record into `body`; its whole length, or `None` at the end of the file
/// (an `UnexpectedEof` error when the file ends inside a record).
fn read_frame(reader: &mut BufReader<File>, body: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    let (mut len, mut shift, mut n) = (0usize, 0, 0);
    loop {
        let mut b = [0u8; 1];
        if reader.read(&mut b)? == 0 {
            if n == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a record length cut short"));
        }
        n += 1;
        len |= ((b[0] & 0x7f) as usize) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad record length"));
        }
    }
    body.resize(len, 0);
    reader.read_exact(body)?;
    Ok(Some(n + len))
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

    // Test rows without a binary form: stored as JSON records.
    impl Record for u32 {}
    impl Record for String {}

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
        // The header, then four records of 24 bytes: a length, the JSON kind, 22 bytes of JSON.
        let mut s = Spool::open(dir.path(), HEADER.len() as u64 + 4 * 24, "db").unwrap();
        let row = "x".repeat(20);
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
        let seg = segment_path(&dir.path().join("spool"), &Segment { n: 1, size: 0, json: false });
        // A record announcing 32 bytes, of which 2 were written.
        OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[32, 1, b'{']).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
        s.append(&3u32).unwrap();
        let (rows, _, bad): (Vec<u32>, _, _) = s.peek(10).unwrap();
        assert_eq!(rows, [1, 2, 3], "the torn record does not corrupt the next row");
        assert!(bad.is_empty(), "{bad:?}");
        // A record cut short in a segment before the last (a failed write, then a new segment):
        // reported, and the replay goes on with the next segment.
        s.sync().unwrap();
        drop(s);
        OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[32, 1, b'{']).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
        let (rows, _, bad): (Vec<u32>, _, _) = s.peek(10).unwrap();
        assert_eq!(rows, [1, 2, 3]);
        assert_eq!(bad.len(), 1, "{bad:?}");
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
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                n.starts_with("orphaned-").then_some(n)
            })
            .collect();
        assert_eq!(aside.len(), 1, "kept aside, not deleted");
        // A legacy single-file spool (no binding) is kept aside too.
        std::fs::write(dir.path().join("spool.jsonl"), "1\n").unwrap();
        let s = Spool::open(dir.path(), 1 << 20, "db-b").unwrap();
        assert!(s.is_empty());
        assert!(!dir.path().join("spool.jsonl").exists());
    }

    use crate::collectors::stream::spool_format::tests::{TOKEN, level_change};
    use crate::db::stream::Row;

    /// An older release's JSON-lines segment is replayed after an upgrade, before the rows
    /// this release appends in binary.
    #[test]
    fn an_older_releases_json_segment_is_replayed_first() {
        let dir = tempfile::tempdir().unwrap();
        drop(Spool::open(dir.path(), 1 << 20, "db").unwrap());
        let old: Vec<Row> = (0..3).map(|i| level_change(TOKEN, i)).collect();
        let lines: String = old.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        std::fs::write(dir.path().join("spool/segment-000000000001.jsonl"), lines).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
        assert!(s.reading_inherited());
        s.append(&level_change(TOKEN, 3)).unwrap();
        let (rows, at, bad): (Vec<Row>, _, _) = s.peek(100).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(rows, (0..4).map(|i| level_change(TOKEN, i)).collect::<Vec<_>>());
        let names: Vec<String> =
            std::fs::read_dir(dir.path().join("spool")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.contains(&"segment-000000000002.bin".to_string()), "{names:?}");
        s.commit(at).unwrap();
        assert_eq!(s.segment_count(), 0);
    }

    /// Binary rows across segments: each segment defines its own ids; a chunk read again
    /// (its write failed) and a reopening in the middle of a segment read the same rows.
    #[test]
    fn binary_rows_keep_their_ids_across_segments_rereads_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX, "db").unwrap();
        let tokens = ["token a", "token b", TOKEN];
        let row = |i: i64| level_change(tokens[i as usize % 3], i);
        let n = (SEGMENT_BYTES / 18) as i64; // ~48 bytes a row: about two and a half segments
        for i in 0..n {
            s.append(&row(i)).unwrap();
        }
        assert!(s.segment_count() >= 3, "{} segments", s.segment_count());
        let mut next = 0;
        let mut chunks = 0;
        loop {
            let (rows, at, bad): (Vec<Row>, _, _) = s.peek(50_000).unwrap();
            assert!(bad.is_empty(), "{bad:?}");
            if rows.is_empty() {
                break;
            }
            chunks += 1;
            if chunks % 3 == 1 {
                // The write failed: the same rows again.
                let (again, at2, _): (Vec<Row>, _, _) = s.peek(50_000).unwrap();
                assert_eq!((again.len(), at2), (rows.len(), at));
                assert!(again == rows);
            }
            for r in &rows {
                assert!(*r == row(next), "row {next}");
                next += 1;
            }
            s.commit(at).unwrap();
            if chunks == 4 {
                // A stop mid-segment: the next run replays that segment from its start.
                s.sync().unwrap();
                drop(s);
                s = Spool::open(dir.path(), u64::MAX, "db").unwrap();
                let (rows, _, _): (Vec<Row>, _, _) = s.peek(1).unwrap();
                let first = (0..next).rev().find(|i| row(*i) == rows[0]).expect("a row already replayed");
                next = first;
            }
        }
        assert_eq!(next, n);
        assert!(s.is_empty());
    }
}
