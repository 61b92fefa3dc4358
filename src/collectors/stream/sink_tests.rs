// Tests of `sink.rs`.

use super::*;
use std::io::Write;

fn quarantine_row(i: usize) -> Row {
    Row::Quarantine { connection: None, reason: format!("r{i}"), frame: String::new(), received_at: chrono::Utc::now() }
}

fn reason(r: &Row) -> &str {
    let Row::Quarantine { reason, .. } = r else { panic!() };
    reason
}

#[test]
fn a_frames_rows_are_queued_together_or_spooled_together() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, mut rx) = Sink::new(5, usize::MAX, Spool::open(dir.path(), 1 << 20, "db").unwrap());
    sink.push_all((0..3).map(quarantine_row).collect());
    assert_eq!(sink.queue_depth(), 3);
    // Three more do not fit in five: all three spill, and so does what follows, in order.
    sink.push_all((3..6).map(quarantine_row).collect());
    sink.push(quarantine_row(6));
    assert_eq!(sink.queue_depth(), 3);
    assert_eq!(sink.stats.spooled_rows.load(Ordering::Relaxed), 4);
    let queued = rx.try_recv().unwrap();
    assert_eq!(queued.iter().map(reason).collect::<Vec<_>>(), ["r0", "r1", "r2"]);
    assert_eq!(sink.queue_depth(), 0);
    assert!(rx.try_recv().is_none());
    let (spooled, at, maybe_stored) = sink.spool_chunk_if_idle(&mut rx, 10).unwrap();
    assert!(!maybe_stored, "spilled by this process: never handed to the database");
    assert_eq!(spooled.iter().map(reason).collect::<Vec<_>>(), ["r3", "r4", "r5", "r6"]);
    sink.spool_commit(at);
    // Replayed: the queue takes rows again.
    sink.push(quarantine_row(7));
    assert_eq!(sink.queue_depth(), 1);
    assert_eq!(rx.try_recv().map(|r| r.len()), Some(1));
}

#[test]
fn the_queue_is_bounded_in_bytes_too() {
    let dir = tempfile::tempdir().unwrap();
    let three = 3 * quarantine_row(0).approx_bytes() + 2;
    let (sink, mut rx) = Sink::new(1000, three, Spool::open(dir.path(), 1 << 20, "db").unwrap());
    for i in 0..3 {
        sink.push(quarantine_row(i));
    }
    assert_eq!(sink.queue_depth(), 3);
    assert!(sink.queue_bytes() <= three as u64 && sink.queue_bytes() > 0);
    sink.push(quarantine_row(3));
    assert_eq!(sink.queue_depth(), 3, "the fourth row's bytes do not fit: spooled");
    assert_eq!(sink.stats.spooled_rows.load(Ordering::Relaxed), 1);
    while rx.try_recv().is_some() {}
    assert_eq!((sink.queue_depth(), sink.queue_bytes()), (0, 0), "taken rows leave the count");
}

/// Records the spool cannot decode are counted (and skipped); a segment it cannot read at
/// all is set aside, counted, and the replay goes on with the next one.
#[test]
fn unreadable_spool_records_and_segments_are_counted_and_the_replay_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20, "db").unwrap();
    spool.append(&quarantine_row(0)).unwrap();
    spool.sync().unwrap();
    drop(spool);
    // A record of an unknown kind in segment 1, then a second run's segment 2.
    let seg1 = dir.path().join("spool/segment-000000000001.bin");
    std::fs::OpenOptions::new().append(true).open(&seg1).unwrap().write_all(&[2, 99, 0]).unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20, "db").unwrap();
    spool.append(&quarantine_row(1)).unwrap();
    spool.sync().unwrap();
    drop(spool);
    let mut spool = Spool::open(dir.path(), 1 << 20, "db").unwrap();
    spool.append(&quarantine_row(2)).unwrap();
    let (sink, mut rx) = Sink::new(5, usize::MAX, spool);
    let (rows, _, _) = sink.spool_chunk_if_idle(&mut rx, 100).unwrap();
    assert_eq!(rows.iter().map(reason).collect::<Vec<_>>(), ["r0", "r1", "r2"]);
    assert_eq!(sink.stats.spool_unreadable.load(Ordering::Relaxed), 1, "the undecodable record counted");
    // Segment 2 cannot be read at all (here: a directory where its file was).
    let seg2 = dir.path().join("spool/segment-000000000002.bin");
    std::fs::remove_file(&seg2).unwrap();
    std::fs::create_dir(&seg2).unwrap();
    let (rows, at, _) = sink.spool_chunk_if_idle(&mut rx, 100).unwrap();
    assert_eq!(rows.iter().map(reason).collect::<Vec<_>>(), ["r0"], "segment 1's rows, up to the unreadable one");
    assert_eq!(sink.stats.spool_errors.load(Ordering::Relaxed), 1);
    sink.spool_commit(at);
    let (rows, at, _) = sink.spool_chunk_if_idle(&mut rx, 100).unwrap();
    assert_eq!(rows.iter().map(reason).collect::<Vec<_>>(), ["r2"], "the replay goes on after the segment set aside");
    sink.spool_commit(at);
    assert!(sink.spool_chunk_if_idle(&mut rx, 100).is_none(), "replayed");
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("unreadable-"))
        .count();
    assert_eq!(aside, 1, "kept aside for an operator");
}

/// Every loss is logged: the first at once, the ones within a second of a line by the next
/// call a second later — none left unlogged, and no line per row.
#[tokio::test(start_paused = true)]
async fn every_lost_row_is_in_a_data_lost_line_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    // A queue of one row and a spool too small for any: every row after the first is lost.
    let (sink, _rx) = Sink::new(1, usize::MAX, Spool::open(dir.path(), 8, "db").unwrap());
    sink.push(quarantine_row(0));
    sink.push(quarantine_row(1));
    assert_eq!(sink.stats.dropped_rows.load(Ordering::Relaxed), 1);
    assert_eq!(sink.stats.dropped_unlogged.load(Ordering::Relaxed), 0, "the first loss is logged at once");
    for i in 2..50 {
        sink.push(quarantine_row(i));
    }
    assert_eq!(sink.stats.dropped_rows.load(Ordering::Relaxed), 49);
    assert_eq!(sink.stats.dropped_unlogged.load(Ordering::Relaxed), 48, "not a line per row");
    sink.log_losses();
    assert_eq!(sink.stats.dropped_unlogged.load(Ordering::Relaxed), 48, "within the second: waits");
    tokio::time::advance(Duration::from_millis(1001)).await;
    sink.log_losses();
    assert_eq!(sink.stats.dropped_unlogged.load(Ordering::Relaxed), 0, "a second later, in one line");
    let window = sink.take_losses().expect("the lost rows make a gap's window");
    assert_eq!(window.rows, 49);
    assert!(sink.take_losses().is_none());
}
