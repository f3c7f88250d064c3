//! Storage directories written before the log and the snapshot moved out of
//! sled: their `raft_log` and `snapshot` trees are moved into the files once, at
//! open, and the trees dropped.
//!
//! Each move is written and fsynced before the tree is emptied (one atomic sled
//! batch), so a crash in between repeats the move at the next open.

use std::path::Path;

use tracing::info;

use crate::error::{decode, get, StoreError};
use crate::segments::SegmentLog;
use crate::snapshot;
use crate::types::{Entry, SnapshotMeta};

const LOG_TREE: &[u8] = b"raft_log";
const SNAPSHOT_TREE: &[u8] = b"snapshot";
const KEY_META: &[u8] = b"meta";
const KEY_DATA: &[u8] = b"data";
/// Entries written to the files at a time while moving them.
const CHUNK: usize = 64;

/// Moves what the old layout holds into `log` and the snapshot file. `purged`
/// is the stored purge point. Blocking.
pub(crate) fn migrate(
    db: &sled::Db,
    log: &mut SegmentLog,
    dir: &Path,
    purged: Option<u64>,
) -> Result<(), StoreError> {
    let names = db.tree_names();
    if names.iter().any(|n| n.as_ref() == LOG_TREE) {
        let tree = db.open_tree(LOG_TREE)?;
        if !tree.is_empty() {
            move_log(db, &tree, log, purged)?;
        }
        db.drop_tree(LOG_TREE)?;
    }
    if names.iter().any(|n| n.as_ref() == SNAPSHOT_TREE) {
        let tree = db.open_tree(SNAPSHOT_TREE)?;
        if let Some(meta) = get::<SnapshotMeta>(&tree, KEY_META, "snapshot meta")? {
            move_snapshot(db, &tree, dir, &meta)?;
        }
        db.drop_tree(SNAPSHOT_TREE)?;
    }
    Ok(())
}

fn move_log(
    db: &sled::Db,
    tree: &sled::Tree,
    log: &mut SegmentLog,
    purged: Option<u64>,
) -> Result<(), StoreError> {
    // The tree is still whole, so whatever the files hold is an earlier,
    // interrupted move.
    log.truncate(0)?;
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut moved = 0usize;
    for value in tree.iter().values() {
        let entry: Entry = decode("log entry", &value?)?;
        // Entries below the purge point that a crash left behind.
        if purged.is_some_and(|p| entry.log_id.index <= p) {
            continue;
        }
        chunk.push(entry);
        if chunk.len() == CHUNK {
            moved += chunk.len();
            log.append(chunk.drain(..))?;
        }
    }
    moved += chunk.len();
    log.append(chunk)?;
    log.sync_targets().sync()?;
    let mut batch = sled::Batch::default();
    for key in tree.iter().keys() {
        batch.remove(key?);
    }
    tree.apply_batch(batch)?;
    db.flush()?;
    info!(
        entries = moved,
        "moved the raft log out of sled into segment files"
    );
    Ok(())
}

fn move_snapshot(
    db: &sled::Db,
    tree: &sled::Tree,
    dir: &Path,
    meta: &SnapshotMeta,
) -> Result<(), StoreError> {
    let current = snapshot::load(dir)?;
    if current.is_none_or(|c| c.meta.last_log_id < meta.last_log_id) {
        let body = tree
            .get(KEY_DATA)?
            .ok_or_else(|| StoreError::corrupt("snapshot", "metadata without data"))?;
        snapshot::write_file(dir, meta, &body)?;
        info!(snapshot = %meta, "moved the snapshot out of sled into a file");
    }
    let mut batch = sled::Batch::default();
    batch.remove(KEY_META);
    batch.remove(KEY_DATA);
    tree.apply_batch(batch)?;
    db.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::error::encode;
    use crate::types::{LogId, Request, StoredMembership};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                origin: 1,
                incarnation: 1,
                first_seq: index,
                commands: vec![vec![7; 300 * 1024]],
            }),
        }
    }

    fn indexes(log: &SegmentLog) -> Vec<u64> {
        log.positions(Bound::Unbounded, Bound::Unbounded, u64::MAX)
            .iter()
            .map(|p| p.read().expect("read").log_id.index)
            .collect()
    }

    /// A database as the sled-only layout left it: entries 3..=40, of which
    /// 3..=9 lie below the purge point (a crash between pointer and removal),
    /// and a snapshot at 20.
    fn old_layout(db: &sled::Db) -> SnapshotMeta {
        let log = db.open_tree(LOG_TREE).expect("tree");
        for i in 3..=40u64 {
            log.insert(i.to_be_bytes(), encode("entry", &entry(i)).expect("encode"))
                .expect("insert");
        }
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 20)),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-20-1".into(),
        };
        let snap = db.open_tree(SNAPSHOT_TREE).expect("tree");
        snap.insert(KEY_META, encode("meta", &meta).expect("encode"))
            .expect("insert");
        snap.insert(KEY_DATA, vec![5; 200 * 1024]).expect("insert");
        meta
    }

    #[test]
    fn the_old_layout_moves_into_files_once() {
        let dir = tempfile::TempDir::new().expect("dir");
        let db = sled::open(dir.path().join("db")).expect("sled");
        let meta = old_layout(&db);
        let log_dir = dir.path().join("log");
        let mut log = SegmentLog::open(&log_dir, Some(9)).expect("open");
        // An earlier move was cut short: the files hold part of the log already.
        log.append((10..=15).map(entry)).expect("append");

        migrate(&db, &mut log, dir.path(), Some(9)).expect("migrate");
        assert_eq!(indexes(&log), (10..=40).collect::<Vec<_>>());
        let snapshot = snapshot::load(dir.path()).expect("load").expect("moved");
        assert_eq!(snapshot.meta, meta);
        assert_eq!(snapshot.body, vec![5; 200 * 1024]);
        assert!(!db.tree_names().iter().any(|n| n.as_ref() == LOG_TREE));
        assert!(!db.tree_names().iter().any(|n| n.as_ref() == SNAPSHOT_TREE));

        drop(log);
        let mut log = SegmentLog::open(&log_dir, Some(9)).expect("reopen");
        migrate(&db, &mut log, dir.path(), Some(9)).expect("nothing left to move");
        assert_eq!(indexes(&log), (10..=40).collect::<Vec<_>>());
    }
}
