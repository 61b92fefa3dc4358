//! The spool's replay side: [`SpoolReader`] reads records from the segments of a
//! [`ReadPlan`] (taken under the sink's lock, read outside it). A record that does not decode
//! is reported and skipped; a record length that runs past its segment (or past
//! [`MAX_RECORD`]) ends that segment's reading, reported, without allocating for it; a
//! segment that cannot be read at all is named in [`Read::unreadable`] for the sink to set
//! aside.

use std::fs::File;
use std::io::{BufRead, BufReader, Read as _, Seek, SeekFrom};

use super::spool::{Position, ReadPlan, segment_path};
use super::spool_format::{self, HEADER, ReadDict, Record};

/// The largest record a segment may hold (a book of thousands of levels is well under it): a
/// length above it is corruption.
pub const MAX_RECORD: usize = 16 << 20;

/// What one read gave.
pub struct Read<T> {
    pub rows: Vec<T>,
    /// Where the next read starts: commit it once `rows` are stored.
    pub at: Position,
    /// Records skipped, with why.
    pub bad: Vec<String>,
    /// A segment that could not be read (opened, read or positioned), with the error: the
    /// rows before it are in `rows`, `at` is its start.
    pub unreadable: Option<(u64, std::io::Error)>,
}

/// Reads the spool in order; keeps the ids defined in the segment it reads (a segment is read
/// from its start, so its dictionary is complete wherever the replay stands).
#[derive(Default)]
pub struct SpoolReader {
    dict: (u64, ReadDict),
}

impl SpoolReader {
    /// Reads up to `max` rows from `plan.from` without consuming them.
    pub fn read<T: Record>(&mut self, plan: &ReadPlan, max: usize) -> Read<T> {
        let mut out = Read { rows: Vec::new(), at: plan.from, bad: Vec::new(), unreadable: None };
        // The replay position may name a segment set aside since: the next one, from its start.
        if let Some(first) = plan.segments.iter().find(|s| s.n >= out.at.segment).filter(|s| s.n > out.at.segment) {
            out.at = Position { segment: first.n, offset: 0 };
        }
        while out.rows.len() < max {
            let Some(idx) = plan.segments.iter().position(|s| s.n == out.at.segment) else { break };
            let seg = plan.segments[idx];
            if out.at.offset >= seg.readable {
                match plan.segments.get(idx + 1) {
                    Some(next) if out.at.offset >= seg.size => {
                        out.at = Position { segment: next.n, offset: 0 };
                        continue;
                    }
                    _ => break,
                }
            }
            let path = segment_path(&plan.dir, &seg);
            let (mut at, rows_before) = (out.at, out.rows.len());
            let result = (|| -> std::io::Result<()> {
                let mut reader = BufReader::new(File::open(&path)?);
                if seg.json {
                    reader.seek(SeekFrom::Start(at.offset))?;
                    return read_json_lines(&mut reader, &mut at, seg.readable, max, &mut out.rows, &mut out.bad);
                }
                if self.dict.0 != seg.n || at.offset == 0 {
                    // The segment's ids, from its start to where the replay stands.
                    self.dict = (seg.n, ReadDict::default());
                    if !read_header(&mut reader)? {
                        out.bad.push(format!("{}: not a spool segment of this release (its header differs): skipped", path.display()));
                        at.offset = seg.size;
                        return Ok(());
                    }
                    let until = at.offset.max(HEADER.len() as u64);
                    at.offset = HEADER.len() as u64;
                    read_records::<T>(&mut reader, &mut at, until, usize::MAX, &mut self.dict.1, None, &mut out.bad)?;
                } else {
                    reader.seek(SeekFrom::Start(at.offset))?;
                }
                read_records(&mut reader, &mut at, seg.readable, max, &mut self.dict.1, Some(&mut out.rows), &mut out.bad)
            })();
            match result {
                Ok(()) => out.at = at,
                Err(e) => {
                    // The rows of this segment read so far are dropped from this read: the
                    // whole segment is set aside (kept for an operator).
                    out.rows.truncate(rows_before);
                    out.at = Position { segment: seg.n, offset: 0 };
                    out.unreadable = Some((seg.n, e));
                    self.dict = (0, ReadDict::default());
                    break;
                }
            }
        }
        out
    }
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
        let len = match read_frame(reader, &mut body, end - at.offset) {
            Ok(Some(len)) => len,
            Ok(None) => break,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData) => {
                // A record cut short (a failed write before a later segment was begun) or a
                // corrupt length: the segment ends here.
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
/// (an `UnexpectedEof` error when the file ends inside a record). A length past `room` (the
/// bytes left in the segment) or [`MAX_RECORD`] is `InvalidData`, and nothing is allocated
/// for it.
fn read_frame(reader: &mut BufReader<File>, body: &mut Vec<u8>, room: u64) -> std::io::Result<Option<usize>> {
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
    if len > MAX_RECORD || (n + len) as u64 > room {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a record length of {len} bytes runs past its segment ({room} bytes left) or the largest record"),
        ));
    }
    body.resize(len, 0);
    reader.read_exact(body)?;
    Ok(Some(n + len))
}
