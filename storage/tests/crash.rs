//! What a crash or a damaged disk leaves of a store, and what open makes of
//! it: a snapshot cut short while it was written is dropped and the previous
//! one stands; a snapshot file that is damaged, or that this version cannot
//! read, makes open fail with a message naming it, never start empty.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::Journal;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder, StorageHelper,
    Vote,
};
use starling_storage::{Request, SnapshotEncoder, StateMachine, Storage, TypeConfig};
use tempfile::TempDir;

const NODE: u64 = 1;
const SNAP: u64 = 60;
const N: u64 = 120;

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, NODE), index)
}

fn entries(from: u64, to: u64) -> Vec<Entry<TypeConfig>> {
    (from..=to)
        .map(|i| Entry {
            log_id: log_id(i),
            payload: if i == 0 {
                EntryPayload::Membership(Membership::new(vec![[NODE].into()], None))
            } else {
                EntryPayload::Normal(Request {
                    origin: NODE,
                    incarnation: 1,
                    first_seq: i,
                    commands: vec![format!("c{i}").into_bytes()],
                })
            },
        })
        .collect()
}

fn journal(to: u64) -> Vec<Vec<u8>> {
    (1..=to).map(|i| format!("c{i}").into_bytes()).collect()
}

fn open_with(dir: &Path, app: Arc<dyn StateMachine>) -> Result<Storage, String> {
    Storage::open(dir, app).map_err(|e| e.to_string())
}

/// A store with a snapshot at `SNAP`, the log purged below it, and entries up
/// to `N`, closed. Returns the snapshot file's bytes.
async fn store_with_a_snapshot(dir: &Path) -> Vec<u8> {
    let app = Arc::new(Journal::default());
    let Ok(mut s) = open_with(dir, app) else {
        panic!("open");
    };
    s.log_store
        .save_vote(&Vote::new_committed(1, NODE))
        .await
        .expect("vote");
    s.log_store
        .blocking_append(entries(0, N))
        .await
        .expect("append");
    s.state_machine
        .apply(entries(0, SNAP))
        .await
        .expect("apply");
    s.state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    s.log_store.purge(log_id(SNAP - 10)).await.expect("purge");
    s.state_machine
        .apply(entries(SNAP + 1, N))
        .await
        .expect("apply");
    s.log_store
        .save_committed(Some(log_id(N)))
        .await
        .expect("committed");
    let Storage {
        log_store,
        state_machine,
        handle,
    } = s;
    drop((log_store, state_machine));
    tokio::time::timeout(std::time::Duration::from_secs(10), handle.closed())
        .await
        .expect("closed");
    std::fs::read(dir.join("snapshot")).expect("snapshot file")
}

#[tokio::test]
async fn a_snapshot_cut_short_while_written_leaves_the_previous_one_and_the_log() {
    let dir = TempDir::new().expect("temp dir");
    let snapshot = store_with_a_snapshot(dir.path()).await;
    // The next snapshot was being written when the node died: half of it.
    let tmp = dir.path().join("snapshot.tmp");
    std::fs::write(&tmp, &snapshot[..snapshot.len() / 2]).expect("write");

    let app = Arc::new(Journal::default());
    let Ok(mut s) = open_with(dir.path(), app.clone()) else {
        panic!("open");
    };
    assert!(!tmp.exists(), "the partial snapshot is removed");
    assert_eq!(s.handle.recovery().snapshot_index, Some(SNAP));
    assert_eq!(s.handle.recovery().last_log_index, Some(N));
    assert_eq!(app.applied(), journal(SNAP));
    StorageHelper::new(&mut s.log_store, &mut s.state_machine)
        .get_initial_state()
        .await
        .expect("initial state");
    assert_eq!(app.applied(), journal(N), "the snapshot, then the log");
}

#[tokio::test]
async fn a_damaged_snapshot_file_refuses_the_open_and_names_it() {
    let dir = TempDir::new().expect("temp dir");
    let good = store_with_a_snapshot(dir.path()).await;
    let path = dir.path().join("snapshot");
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut other_format = good.clone();
    other_format[7] += 1;
    for (damage, bytes, why) in [
        ("cut in its header", good[..10].to_vec(), "truncated"),
        (
            "cut in its body",
            good[..good.len() - 100].to_vec(),
            "checksum",
        ),
        ("a flipped bit", flipped, "does not match its checksum"),
        ("another format", other_format, "file format 2"),
    ] {
        std::fs::write(&path, &bytes).expect("write");
        let err = match open_with(dir.path(), Arc::new(Journal::default())) {
            Ok(_) => panic!("{damage}: opened"),
            Err(e) => e,
        };
        assert!(err.contains(&path.display().to_string()), "{damage}: {err}");
        assert!(err.contains(why), "{damage}: {err}");
        assert_eq!(std::fs::read(&path).expect("read"), bytes, "left as it was");
    }
}

/// Reads no snapshot, as a version of the application that does not know the
/// format of the one stored.
struct Refusing;

impl StateMachine for Refusing {
    fn apply(&self, _term: u64, _command: &[u8]) -> Vec<u8> {
        Vec::new()
    }

    fn snapshot(&self) -> SnapshotEncoder {
        Box::new(|| Ok(Vec::new()))
    }

    fn restore(&self, _snapshot: &[u8]) -> Result<(), String> {
        Err("the state in this snapshot is format 5; this version reads format 6 only".into())
    }
}

#[tokio::test]
async fn a_snapshot_the_application_cannot_read_refuses_the_open() {
    let dir = TempDir::new().expect("temp dir");
    store_with_a_snapshot(dir.path()).await;
    let err = match open_with(dir.path(), Arc::new(Refusing)) {
        Ok(_) => panic!("opened"),
        Err(e) => e,
    };
    assert!(err.contains("refused the snapshot"), "{err}");
    assert!(err.contains("format 5"), "{err}");
    // The files are untouched: the right version opens them.
    let app = Arc::new(Journal::default());
    assert!(open_with(dir.path(), app.clone()).is_ok());
    assert_eq!(app.applied(), journal(SNAP));
}
