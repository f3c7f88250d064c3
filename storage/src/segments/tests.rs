//! The segment files on their own: what survives a reopen, and what a crash can
//! leave behind (torn tails, files whose deletion was lost).

use std::collections::BTreeSet;
use std::fs;
use std::ops::Bound;
use std::path::Path;

use openraft::{CommittedLeaderId, EntryPayload, Membership};

use super::*;
use crate::types::Request;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, size: usize) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request {
            origin: 1,
            incarnation: 1,
            first_seq: index,
            commands: vec![vec![index as u8; size]],
        }),
    }
}

fn indexes(log: &SegmentLog) -> Vec<u64> {
    log.positions(Bound::Unbounded, Bound::Unbounded, u64::MAX)
        .iter()
        .map(|p| p.read().expect("read").log_id.index)
        .collect()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn disk_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum()
}

#[test]
fn the_log_id_is_read_from_the_front_of_an_encoded_entry() {
    // The scan at open relies on it to skip decoding payloads.
    for e in [
        entry(7, 42, 10),
        Entry {
            log_id: log_id(3, 0),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], None)),
        },
    ] {
        let bytes = encode("entry", &e).expect("encode");
        let (id, _) = postcard::take_from_bytes::<LogId>(&bytes).expect("prefix");
        assert_eq!(id, e.log_id);
    }
}

#[test]
fn entries_survive_a_reopen_across_segments() {
    let dir = tempfile::TempDir::new().expect("dir");
    let big = (SEGMENT_BYTES / 3) as usize;
    {
        let mut log = SegmentLog::open(dir.path(), None).expect("open");
        log.append((0..10).map(|i| entry(1, i, big)))
            .expect("append");
        log.append((10..12).map(|i| entry(1, i, 10)))
            .expect("append");
        log.sync_targets().sync().expect("sync");
        assert!(files(dir.path()).len() >= 3, "{:?}", files(dir.path()));
    }
    let log = SegmentLog::open(dir.path(), None).expect("reopen");
    assert_eq!(indexes(&log), (0..12).collect::<Vec<_>>());
    assert_eq!(log.last_log_id(), Some(log_id(1, 11)));
    let limited = log.positions(Bound::Included(3), Bound::Excluded(12), 1);
    assert_eq!(limited.len(), 1, "at least one entry, then the byte limit");
}

#[test]
fn a_purge_deletes_whole_files_and_a_reopen_ignores_what_is_left_below_it() {
    let dir = tempfile::TempDir::new().expect("dir");
    let big = (SEGMENT_BYTES / 4) as usize;
    let mut log = SegmentLog::open(dir.path(), None).expect("open");
    log.append((1..=40).map(|i| entry(1, i, big)))
        .expect("append");
    let before = disk_bytes(dir.path());
    let total = log.bytes();
    assert!(before >= total);
    assert_eq!(log.purge_point(40, total), None, "everything fits");
    // Five records and their framing fit; a sixth does not.
    let point = log
        .purge_point(30, 5 * (big as u64 + 100))
        .expect("a point");
    assert_eq!(point, 25, "entries 26..=30 are kept, 5 of them");
    log.purge(point).expect("purge");
    assert_eq!(indexes(&log), (26..=40).collect::<Vec<_>>());
    let after = disk_bytes(dir.path());
    assert!(
        after < before / 2,
        "files deleted: {before} bytes before, {after} after"
    );
    assert!(after <= log.bytes() + SEGMENT_BYTES + big as u64);
    drop(log);

    let log = SegmentLog::open(dir.path(), Some(25)).expect("reopen");
    assert_eq!(indexes(&log), (26..=40).collect::<Vec<_>>());

    // Purging everything deletes every file; the log goes on after the point.
    let mut log = log;
    log.purge(40).expect("purge all");
    assert!(files(dir.path()).is_empty());
    log.append([entry(2, 41, 10)]).expect("append");
    drop(log);
    let log = SegmentLog::open(dir.path(), Some(40)).expect("reopen");
    assert_eq!(indexes(&log), vec![41]);
}

#[test]
fn a_file_whose_deletion_was_lost_is_ignored_and_deleted() {
    let dir = tempfile::TempDir::new().expect("dir");
    let big = (SEGMENT_BYTES / 2) as usize;
    let mut log = SegmentLog::open(dir.path(), None).expect("open");
    log.append((1..=6).map(|i| entry(1, i, big)))
        .expect("append");
    let first = dir.path().join(&files(dir.path())[0]);
    let saved = fs::read(&first).expect("read");
    log.purge(6).expect("purge");
    log.append([entry(1, 7, 10)]).expect("append");
    drop(log);
    // A crash brought the first file back.
    fs::write(&first, saved).expect("restore");
    let log = SegmentLog::open(dir.path(), Some(6)).expect("reopen");
    assert_eq!(indexes(&log), vec![7]);
    assert!(!first.exists());
}

#[test]
fn a_torn_tail_ends_the_log_and_appends_continue_after_it() {
    let dir = tempfile::TempDir::new().expect("dir");
    {
        let mut log = SegmentLog::open(dir.path(), None).expect("open");
        log.append((1..=5).map(|i| entry(1, i, 1000)))
            .expect("append");
    }
    let path = dir.path().join(&files(dir.path())[0]);
    let len = fs::metadata(&path).expect("meta").len();
    // The last record lost its last bytes.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(len - 10)
        .expect("cut");
    let mut log = SegmentLog::open(dir.path(), None).expect("reopen");
    assert_eq!(indexes(&log), vec![1, 2, 3, 4]);
    log.append([entry(1, 5, 20)]).expect("append");
    drop(log);
    let log = SegmentLog::open(dir.path(), None).expect("reopen");
    assert_eq!(indexes(&log), vec![1, 2, 3, 4, 5]);

    // A flipped byte in the middle of a record: the log ends before it.
    drop(log);
    let mut bytes = fs::read(&path).expect("read");
    let at = bytes.len() - 5;
    bytes[at] ^= 0xff;
    fs::write(&path, bytes).expect("write");
    let log = SegmentLog::open(dir.path(), None).expect("reopen");
    assert_eq!(indexes(&log), vec![1, 2, 3, 4]);
}

#[test]
fn truncation_leaves_no_stale_record_after_the_new_tail() {
    let dir = tempfile::TempDir::new().expect("dir");
    let big = (SEGMENT_BYTES / 3) as usize;
    let mut log = SegmentLog::open(dir.path(), None).expect("open");
    log.append((1..=9).map(|i| entry(1, i, big)))
        .expect("append");
    let files_before = files(dir.path()).len();
    log.truncate(5).expect("truncate");
    assert_eq!(log.last_log_id(), Some(log_id(1, 4)));
    assert!(
        files(dir.path()).len() < files_before,
        "later files deleted"
    );
    // The new leader's entries, smaller than the ones they replace.
    log.append((5..=6).map(|i| entry(2, i, 10)))
        .expect("append");
    drop(log);
    let log = SegmentLog::open(dir.path(), None).expect("reopen");
    let ids: Vec<LogId> = log
        .positions(Bound::Unbounded, Bound::Unbounded, u64::MAX)
        .iter()
        .map(|p| p.read().expect("read").log_id)
        .collect();
    let expected: Vec<LogId> = (1..=4)
        .map(|i| log_id(1, i))
        .chain((5..=6).map(|i| log_id(2, i)))
        .collect();
    assert_eq!(ids, expected);
    let count: u64 = log.bytes();
    assert_eq!(
        count,
        log.positions(Bound::Unbounded, Bound::Unbounded, u64::MAX)
            .iter()
            .map(Pos::record_bytes)
            .sum::<u64>()
    );
}

#[test]
fn an_append_before_the_end_of_the_log_is_refused() {
    let dir = tempfile::TempDir::new().expect("dir");
    let mut log = SegmentLog::open(dir.path(), None).expect("open");
    log.append((1..=3).map(|i| entry(1, i, 10)))
        .expect("append");
    assert!(log.append([entry(1, 3, 10)]).is_err());
    assert!(log.append([entry(1, 4, 10), entry(1, 4, 10)]).is_err());
    assert_eq!(log.last_log_id(), Some(log_id(1, 3)), "nothing indexed");
}

/// Writes entries `1..=n` of `size` bytes and returns the segment files.
fn written(dir: &Path, n: u64, size: usize) -> Vec<PathBuf> {
    let mut log = SegmentLog::open(dir, None).expect("open");
    log.append((1..=n).map(|i| entry(1, i, size)))
        .expect("append");
    log.sync_targets().sync().expect("sync");
    files(dir).iter().map(|name| dir.join(name)).collect()
}

/// Where entry `index` starts in its file.
fn offset_of(dir: &Path, index: u64) -> u64 {
    let log = SegmentLog::open(dir, None).expect("open");
    log.positions(Bound::Included(index), Bound::Included(index), 1)[0].offset
}

fn flip(path: &Path, at: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[at as usize] ^= 0x5a;
    fs::write(path, bytes).expect("write");
}

fn refused(dir: &Path) -> String {
    match SegmentLog::open(dir, None) {
        Ok(log) => panic!("opened with entries {:?}", indexes(&log)),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_damaged_record_followed_by_valid_ones_refuses_the_open_and_changes_nothing() {
    let dir = tempfile::TempDir::new().expect("dir");
    let paths = written(dir.path(), 10, 1000);
    let at = offset_of(dir.path(), 4);
    // A byte of entry 4's payload.
    flip(&paths[0], at + RECORD_HEADER + 500);
    let before = fs::read(&paths[0]).expect("read");
    let err = refused(dir.path());
    let name = paths[0].display().to_string();
    assert!(err.contains(&name), "{err}");
    assert!(err.contains(&format!("record at byte {at}")), "{err}");
    assert!(
        err.contains("entry T1-N1-5"),
        "the first entry beyond: {err}"
    );
    assert!(err.contains("refusing to start"), "{err}");
    assert_eq!(fs::read(&paths[0]).expect("read"), before, "nothing cut");
}

#[test]
fn a_damaged_length_inside_the_log_refuses_the_open() {
    let dir = tempfile::TempDir::new().expect("dir");
    let paths = written(dir.path(), 10, 1000);
    // The length of entry 6 now reaches past the end of the file.
    let at = offset_of(dir.path(), 6);
    flip(&paths[0], at + 3);
    let err = refused(dir.path());
    assert!(err.contains(&format!("record at byte {at}")), "{err}");
    assert!(err.contains("entry T1-N1-7"), "{err}");
}

#[test]
fn a_damaged_tail_of_a_file_before_a_valid_one_refuses_the_open() {
    let dir = tempfile::TempDir::new().expect("dir");
    let big = (SEGMENT_BYTES / 3) as usize;
    let paths = written(dir.path(), 6, big);
    assert!(paths.len() >= 2, "{paths:?}");
    // The last record of the first file.
    let len = fs::metadata(&paths[0]).expect("meta").len();
    OpenOptions::new()
        .write(true)
        .open(&paths[0])
        .expect("open")
        .set_len(len - 10)
        .expect("cut");
    let err = refused(dir.path());
    assert!(err.contains(&paths[1].display().to_string()), "{err}");
}

#[test]
fn garbage_or_zeros_after_the_last_record_are_cut_off() {
    for tail in [vec![0u8; 4096], b"not a record at all, just bytes".to_vec()] {
        let dir = tempfile::TempDir::new().expect("dir");
        let paths = written(dir.path(), 5, 1000);
        let len = fs::metadata(&paths[0]).expect("meta").len();
        let mut bytes = fs::read(&paths[0]).expect("read");
        bytes.extend_from_slice(&tail);
        fs::write(&paths[0], bytes).expect("write");
        let log = SegmentLog::open(dir.path(), None).expect("open");
        assert_eq!(indexes(&log), (1..=5).collect::<Vec<_>>());
        assert_eq!(fs::metadata(&paths[0]).expect("meta").len(), len, "cut");
    }
}

#[test]
fn a_damaged_file_holding_only_purged_entries_is_deleted_not_refused() {
    let dir = tempfile::TempDir::new().expect("dir");
    let big = (SEGMENT_BYTES / 3) as usize;
    let paths = written(dir.path(), 9, big);
    assert!(paths.len() >= 3, "{paths:?}");
    let second_first: u64 = files(dir.path())[1]
        .strip_suffix(SUFFIX)
        .and_then(|n| n.parse().ok())
        .expect("name");
    // A crash lost the deletion of the first file, and damaged it.
    flip(&paths[0], MAGIC.len() as u64 + RECORD_HEADER + 100);
    let log = SegmentLog::open(dir.path(), Some(second_first - 1)).expect("open");
    assert_eq!(indexes(&log), (second_first..=9).collect::<Vec<_>>());
    assert!(!paths[0].exists());
}
