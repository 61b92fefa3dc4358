// Tests of `spool.rs` (appending, bookkeeping) read through `spool_read.rs`, as the sink does.

use super::super::spool_read::SpoolReader;
use super::*;

/// Reads up to `max` rows from where the replay stands (the sink's way: a plan, then a read).
fn peek<T: Record>(s: &mut Spool, r: &mut SpoolReader, max: usize) -> (Vec<T>, Position, Vec<String>) {
    let (plan, failed) = s.plan();
    assert!(failed.is_none(), "{failed:?}");
    let read = r.read(&plan, max);
    assert!(read.unreadable.is_none());
    (read.rows, read.at, read.bad)
}

// Test rows without a binary form: stored as JSON records.
impl Record for u32 {}
impl Record for String {}

#[test]
fn rows_replay_in_order_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = SpoolReader::default();
    let mut s = Spool::open(dir.path(), 1 << 20, "db-a").unwrap();
    for i in 0..10u32 {
        s.append(&i).unwrap();
    }
    let (rows, at, bad): (Vec<u32>, _, _) = peek(&mut s, &mut r, 4);
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
    let (rows, at, _): (Vec<u32>, _, _) = peek(&mut s, &mut r, 5);
    assert_eq!(rows, (0..5).collect::<Vec<_>>());
    s.commit(at).unwrap();
    assert!(s.reading_inherited(), "rows 5..10 are from before the open");
    let (rows, at, _): (Vec<u32>, _, _) = peek(&mut s, &mut r, 5);
    assert_eq!(rows, (5..10).collect::<Vec<_>>());
    s.commit(at).unwrap();
    assert!(!s.reading_inherited(), "row 10 was appended by this process");
    let (rows, at, _): (Vec<u32>, _, _) = peek(&mut s, &mut r, 100);
    assert_eq!(rows, [10]);
    s.commit(at).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.segment_count(), 0, "replayed segments are deleted");
    s.append(&42u32).unwrap();
    assert!(!s.reading_inherited());
    let (rows, _, _): (Vec<u32>, _, _) = peek(&mut s, &mut r, 10);
    assert_eq!(rows, [42]);
}

#[test]
fn the_cap_counts_only_bytes_not_yet_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = SpoolReader::default();
    // The header, then four records of 24 bytes: a length, the JSON kind, 22 bytes of JSON.
    let mut s = Spool::open(dir.path(), HEADER.len() as u64 + 4 * 24, "db").unwrap();
    let row = "x".repeat(20);
    for _ in 0..4 {
        s.append(&row).unwrap();
    }
    assert!(matches!(s.append(&row), Err(SpoolError::Full { .. })));
    let (_, at, _): (Vec<String>, _, _) = peek(&mut s, &mut r, 4);
    s.commit(at).unwrap();
    for _ in 0..4 {
        s.append(&row).expect("room again after the replay");
    }
}

#[test]
fn segments_roll_over_and_replayed_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = SpoolReader::default();
    let mut s = Spool::open(dir.path(), u64::MAX, "db").unwrap();
    let row = "y".repeat(1 << 20);
    for _ in 0..40 {
        s.append(&row).unwrap();
    }
    assert!(s.segment_count() >= 3, "{} segments", s.segment_count());
    let mut seen = 0;
    loop {
        let (rows, at, _): (Vec<String>, _, _) = peek(&mut s, &mut r, 7);
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
    let mut r = SpoolReader::default();
    let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
    s.append(&1u32).unwrap();
    s.append(&2u32).unwrap();
    drop(s);
    let seg = segment_path(&dir.path().join("spool"), &Segment { n: 1, size: 0, readable: 0, json: false });
    // A record announcing 32 bytes, of which 2 were written.
    OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[32, 1, b'{']).unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
    s.append(&3u32).unwrap();
    let (rows, _, bad): (Vec<u32>, _, _) = peek(&mut s, &mut r, 10);
    assert_eq!(rows, [1, 2, 3], "the torn record does not corrupt the next row");
    assert!(bad.is_empty(), "{bad:?}");
    // A record cut short in a segment before the last (a failed write, then a new segment):
    // reported, and the replay goes on with the next segment.
    s.sync().unwrap();
    drop(s);
    OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[32, 1, b'{']).unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
    let (rows, _, bad): (Vec<u32>, _, _) = peek(&mut s, &mut r, 10);
    assert_eq!(rows, [1, 2, 3]);
    assert_eq!(bad.len(), 1, "{bad:?}");
}

#[test]
fn a_spool_for_another_database_is_set_aside_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = SpoolReader::default();
    let mut s = Spool::open(dir.path(), 1 << 20, "db-a").unwrap();
    s.append(&7u32).unwrap();
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20, "db-b").unwrap();
    assert!(s.is_empty(), "rows of db-a are not offered to db-b");
    let (rows, _, _): (Vec<u32>, _, _) = peek(&mut s, &mut r, 10);
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
    let mut r = SpoolReader::default();
    drop(Spool::open(dir.path(), 1 << 20, "db").unwrap());
    let old: Vec<Row> = (0..3).map(|i| level_change(TOKEN, i)).collect();
    let lines: String = old.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(dir.path().join("spool/segment-000000000001.jsonl"), lines).unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
    assert!(s.reading_inherited());
    s.append(&level_change(TOKEN, 3)).unwrap();
    let (rows, at, bad): (Vec<Row>, _, _) = peek(&mut s, &mut r, 100);
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
    let mut r = SpoolReader::default();
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
        let (rows, at, bad): (Vec<Row>, _, _) = peek(&mut s, &mut r, 50_000);
        assert!(bad.is_empty(), "{bad:?}");
        if rows.is_empty() {
            break;
        }
        chunks += 1;
        if chunks % 3 == 1 {
            // The write failed: the same rows again.
            let (again, at2, _): (Vec<Row>, _, _) = peek(&mut s, &mut r, 50_000);
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
            let (rows, _, _): (Vec<Row>, _, _) = peek(&mut s, &mut r, 1);
            let first = (0..next).rev().find(|i| row(*i) == rows[0]).expect("a row already replayed");
            next = first;
        }
    }
    assert_eq!(next, n);
    assert!(s.is_empty());
}

/// A record length past its segment (corruption) ends the segment's reading, reported,
/// without allocating for it.
#[test]
fn a_corrupt_length_is_reported_not_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = SpoolReader::default();
    let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
    s.append(&1u32).unwrap();
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
    s.append(&2u32).unwrap();
    drop(s);
    // In segment 1 (not the last, so not cut as a torn tail at open): a varint announcing
    // 2^62 bytes, then a little.
    let seg = segment_path(&dir.path().join("spool"), &Segment { n: 1, size: 0, readable: 0, json: false });
    OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 1, 2]).unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
    let (rows, _, bad): (Vec<u32>, _, _) = peek(&mut s, &mut r, 10);
    assert_eq!(rows, [1, 2]);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("runs past its segment"), "{bad:?}");
}

/// New segments are created new: a file already at the next number is never appended to.
#[test]
fn a_segment_file_already_there_is_not_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = SpoolReader::default();
    let mut s = Spool::open(dir.path(), 1 << 20, "db").unwrap();
    let stray = dir.path().join("spool/segment-000000000001.bin");
    std::fs::write(&stray, b"someone else's bytes").unwrap();
    s.append(&7u32).unwrap();
    assert_eq!(std::fs::read(&stray).unwrap(), b"someone else's bytes");
    let (rows, _, _): (Vec<u32>, _, _) = peek(&mut s, &mut r, 10);
    assert_eq!(rows, [7]);
}
