//! The on-disk spool: when the write queue is full (the database is down or slow), rows go to
//! an append-only file of JSON lines in the state directory, bounded in bytes, and are
//! replayed in order once the database keeps up again. It survives restarts: a spool left by
//! a previous run is replayed first.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full ({bytes} of {max} bytes): row dropped")]
    Full { bytes: u64, max: u64 },
    #[error("spool {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub struct Spool {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Offset of the first row not yet replayed.
    read_at: u64,
    max_bytes: u64,
}

impl Spool {
    /// Opens (or creates) the spool file `dir/spool.jsonl`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let path = dir.join("spool.jsonl");
        let io = |source| SpoolError::Io { path: path.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Ok(Spool { path, file, len, read_at: 0, max_bytes })
    }

    /// Bytes not yet replayed.
    pub fn pending_bytes(&self) -> u64 {
        self.len - self.read_at
    }

    pub fn is_empty(&self) -> bool {
        self.pending_bytes() == 0
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io { path: self.path.display().to_string(), source }
    }

    /// Appends one row (one write of one line).
    pub fn append<T: Serialize>(&mut self, row: &T) -> Result<(), SpoolError> {
        let mut line = serde_json::to_vec(row).expect("rows serialise");
        line.push(b'\n');
        if self.len + line.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full { bytes: self.len, max: self.max_bytes });
        }
        self.file.write_all(&line).map_err(|e| self.io(e))?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Reads up to `max` rows from the replay position without consuming them; returns the
    /// rows and the offset to [`commit`](Self::commit) once they are stored. A line that does
    /// not decode (a torn write from a crash) is skipped and reported.
    pub fn peek<T: DeserializeOwned>(&mut self, max: usize) -> Result<(Vec<T>, u64, Vec<String>), SpoolError> {
        let mut reader = BufReader::new(&self.file);
        reader.seek(SeekFrom::Start(self.read_at)).map_err(|e| self.io(e))?;
        let (mut rows, mut bad, mut at) = (Vec::new(), Vec::new(), self.read_at);
        let mut line = String::new();
        while rows.len() < max && at < self.len {
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| SpoolError::Io { path: self.path.display().to_string(), source: e })?;
            if n == 0 {
                break;
            }
            at += n as u64;
            match serde_json::from_str(line.trim_end()) {
                Ok(r) => rows.push(r),
                Err(e) => bad.push(format!("{e}: {}", line.chars().take(200).collect::<String>())),
            }
        }
        Ok((rows, at, bad))
    }

    /// Marks everything before `offset` as stored; empties the file once all is replayed.
    pub fn commit(&mut self, offset: u64) -> Result<(), SpoolError> {
        self.read_at = offset.min(self.len);
        if self.read_at == self.len && self.len > 0 {
            self.file.set_len(0).map_err(|e| self.io(e))?;
            self.len = 0;
            self.read_at = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_replay_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..10u32 {
            s.append(&i).unwrap();
        }
        let (rows, at, bad): (Vec<u32>, _, _) = s.peek(4).unwrap();
        assert_eq!(rows, [0, 1, 2, 3]);
        assert!(bad.is_empty());
        s.commit(at).unwrap();
        drop(s);
        // A new run starts from the file's beginning: rows not committed before are replayed
        // again (at-least-once; the writes are idempotent).
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let (rows, at, _): (Vec<u32>, _, _) = s.peek(100).unwrap();
        assert_eq!(rows, (0..10).collect::<Vec<_>>());
        s.commit(at).unwrap();
        assert!(s.is_empty());
        assert_eq!(std::fs::metadata(dir.path().join("spool.jsonl")).unwrap().len(), 0);
    }

    #[test]
    fn a_full_spool_refuses_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 10).unwrap();
        s.append(&"abc").unwrap();
        assert!(matches!(s.append(&"defghij"), Err(SpoolError::Full { .. })));
    }
}
