//! Crash-free restart: what one store wrote, a store opened again on the same
//! directory reads back, and the application state comes back through openraft's
//! start-up path (snapshot restore, then re-applying the committed log).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::Journal;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder, StorageHelper,
    Vote,
};
use starling_storage::{Request, Storage, StorageHandle, TypeConfig};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

const NODE: u64 = 1;

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, NODE), index)
}

fn command(index: u64, i: u64) -> Vec<u8> {
    format!("cmd-{index}-{i}").into_bytes()
}

/// Index 0 is the membership {1}, as `initialize` writes it; every later index
/// carries two commands.
fn entries(from: u64, to: u64) -> Vec<Entry<TypeConfig>> {
    (from..=to)
        .map(|index| Entry {
            log_id: log_id(index),
            payload: if index == 0 {
                EntryPayload::Membership(Membership::new(vec![BTreeSet::from([NODE])], None))
            } else {
                EntryPayload::Normal(Request {
                    origin: NODE,
                    incarnation: 1,
                    first_seq: index * 2,
                    commands: vec![command(index, 0), command(index, 1)],
                })
            },
        })
        .collect()
}

/// The journal an app has after applying entries 0..=to.
fn expected_journal(to: u64) -> Vec<Vec<u8>> {
    (1..=to)
        .flat_map(|i| [command(i, 0), command(i, 1)])
        .collect()
}

fn open(dir: &Path) -> (Storage, Arc<Journal>) {
    let app = Arc::new(Journal::default());
    let storage = Storage::open(dir, app.clone()).expect("open storage");
    (storage, app)
}

async fn close(storage: Storage) {
    let Storage {
        log_store,
        state_machine,
        handle,
    } = storage;
    drop(log_store);
    drop(state_machine);
    wait_closed(handle).await;
}

async fn wait_closed(handle: StorageHandle) {
    tokio::time::timeout(std::time::Duration::from_secs(10), handle.closed())
        .await
        .expect("storage closes");
}

#[tokio::test]
async fn reopen_recovers_log_and_replays_it_into_a_fresh_app() {
    const N: u64 = 200;
    let dir = TempDir::new().expect("temp dir");
    {
        let (mut s, app) = open(dir.path());
        s.log_store
            .save_vote(&Vote::new_committed(1, NODE))
            .await
            .expect("vote");
        s.log_store
            .blocking_append(entries(0, N))
            .await
            .expect("append");
        s.state_machine.apply(entries(0, N)).await.expect("apply");
        s.log_store
            .save_committed(Some(log_id(N)))
            .await
            .expect("committed");
        assert_eq!(app.applied(), expected_journal(N));
        close(s).await;
    }

    let (mut s, app) = open(dir.path());
    assert_eq!(s.handle.incarnation(), 2);
    assert_eq!(s.handle.recovery().snapshot_index, None);
    assert_eq!(s.handle.recovery().last_log_index, Some(N));
    assert_eq!(
        s.log_store.read_vote().await.expect("vote"),
        Some(Vote::new_committed(1, NODE))
    );
    assert_eq!(
        s.log_store.read_committed().await.expect("committed"),
        Some(log_id(N))
    );
    let state = s.log_store.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(N)));
    assert_eq!(state.last_purged_log_id, None);
    let all = s
        .log_store
        .try_get_log_entries(0..=N)
        .await
        .expect("read log");
    assert_eq!(all.len() as u64, N + 1);
    assert!(
        app.applied().is_empty(),
        "no snapshot: the app starts empty"
    );

    // What openraft does when a Raft starts on this store.
    let initial = StorageHelper::new(&mut s.log_store, &mut s.state_machine)
        .get_initial_state()
        .await
        .expect("initial state");
    assert_eq!(initial.committed, Some(log_id(N)));
    assert_eq!(app.applied(), expected_journal(N));
    let (applied, membership) = s.state_machine.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(N)));
    assert_eq!(membership.log_id(), &Some(log_id(0)));
}

#[tokio::test]
async fn reopen_restores_the_snapshot_then_replays_the_log_after_it() {
    const SNAP: u64 = 120;
    const N: u64 = 300;
    let dir = TempDir::new().expect("temp dir");
    {
        let (mut s, _app) = open(dir.path());
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
        let snap = s
            .state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
        assert_eq!(snap.meta.last_log_id, Some(log_id(SNAP)));
        // As openraft does after a snapshot, keeping some log before it.
        s.log_store.purge(log_id(SNAP - 20)).await.expect("purge");
        s.state_machine
            .apply(entries(SNAP + 1, N))
            .await
            .expect("apply");
        s.log_store
            .save_committed(Some(log_id(N)))
            .await
            .expect("committed");
        close(s).await;
    }

    let (mut s, app) = open(dir.path());
    assert_eq!(s.handle.recovery().snapshot_index, Some(SNAP));
    assert_eq!(s.handle.recovery().last_log_index, Some(N));
    assert_eq!(
        app.applied(),
        expected_journal(SNAP),
        "restored from the snapshot"
    );
    let (applied, membership) = s.state_machine.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(SNAP)));
    assert_eq!(membership.log_id(), &Some(log_id(0)));
    let state = s.log_store.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(SNAP - 20)));
    assert_eq!(state.last_log_id, Some(log_id(N)));
    let current = s
        .state_machine
        .get_current_snapshot()
        .await
        .expect("snapshot");
    assert_eq!(
        current.map(|c| c.meta.last_log_id),
        Some(Some(log_id(SNAP)))
    );

    StorageHelper::new(&mut s.log_store, &mut s.state_machine)
        .get_initial_state()
        .await
        .expect("initial state");
    assert_eq!(
        app.applied(),
        expected_journal(N),
        "snapshot plus replayed log"
    );
}

#[tokio::test]
async fn duplicate_commands_are_skipped_also_after_a_snapshot_transfer() {
    let dir = TempDir::new().expect("temp dir");
    let (mut s, app) = open(dir.path());
    let request = |first_seq: u64, commands: &[&str]| Request {
        origin: 7,
        incarnation: 3,
        first_seq,
        commands: commands.iter().map(|c| c.as_bytes().to_vec()).collect(),
    };
    let normal = |index: u64, r: Request| Entry::<TypeConfig> {
        log_id: log_id(index),
        payload: EntryPayload::Normal(r),
    };

    let replies = s
        .state_machine
        .apply([normal(1, request(0, &["a", "b"]))])
        .await
        .expect("apply");
    assert_eq!(
        replies,
        vec![vec![
            1u64.to_be_bytes().to_vec(),
            2u64.to_be_bytes().to_vec()
        ]]
    );

    // A retry of the same batch, overlapping a new command: only "c" applies.
    let replies = s
        .state_machine
        .apply([normal(2, request(0, &["a", "b", "c"]))])
        .await
        .expect("apply");
    assert_eq!(
        replies,
        vec![vec![vec![], vec![], 3u64.to_be_bytes().to_vec()]]
    );
    assert_eq!(
        app.applied(),
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );

    // The marks travel with the snapshot to another node.
    let snap = s
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    let other_dir = TempDir::new().expect("temp dir");
    let (mut other, other_app) = open(other_dir.path());
    other
        .state_machine
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect("install");
    assert_eq!(other_app.applied(), app.applied());
    let replies = other
        .state_machine
        .apply([normal(3, request(1, &["b", "c", "d"]))])
        .await
        .expect("apply");
    assert_eq!(
        replies,
        vec![vec![vec![], vec![], 4u64.to_be_bytes().to_vec()]]
    );

    // A new incarnation of the origin starts its sequence again.
    let restarted = Request {
        incarnation: 4,
        ..request(0, &["e"])
    };
    let replies = other
        .state_machine
        .apply([normal(4, restarted)])
        .await
        .expect("apply");
    assert_eq!(replies, vec![vec![5u64.to_be_bytes().to_vec()]]);
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused_without_replacing_the_stored_one() {
    let dir = TempDir::new().expect("temp dir");
    let (mut s, _app) = open(dir.path());
    s.state_machine.apply(entries(0, 5)).await.expect("apply");
    let snap = s
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    let mut meta = snap.meta.clone();
    meta.last_log_id = Some(log_id(9));
    let mut garbage = s
        .state_machine
        .begin_receiving_snapshot()
        .await
        .expect("spool");
    garbage.write_all(&[0xff; 3]).await.expect("write");
    assert!(s
        .state_machine
        .install_snapshot(&meta, garbage)
        .await
        .is_err());
    let current = s
        .state_machine
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(current.meta, snap.meta);
}

#[tokio::test]
async fn a_retried_batch_gets_its_first_replies_also_after_a_snapshot_transfer() {
    let dir = TempDir::new().expect("temp dir");
    let (mut s, app) = open(dir.path());
    let request = |first_seq: u64, commands: &[&str]| Request {
        origin: 9,
        incarnation: 1,
        first_seq,
        commands: commands.iter().map(|c| c.as_bytes().to_vec()).collect(),
    };
    let normal = |index: u64, r: Request| Entry::<TypeConfig> {
        log_id: log_id(index),
        payload: EntryPayload::Normal(r),
    };
    let first = vec![1u64.to_be_bytes().to_vec(), 2u64.to_be_bytes().to_vec()];

    let replies = s
        .state_machine
        .apply([normal(1, request(0, &["a", "b"]))])
        .await
        .expect("apply");
    assert_eq!(replies, vec![first.clone()]);

    // The proposer did not learn the outcome and sent the batch again.
    let replies = s
        .state_machine
        .apply([normal(2, request(0, &["a", "b"]))])
        .await
        .expect("apply");
    assert_eq!(
        replies,
        vec![first.clone()],
        "the retry is answered as the first time"
    );
    assert_eq!(app.applied(), vec![b"a".to_vec(), b"b".to_vec()]);

    // The replies travel with the snapshot: a new leader answers the retry alike.
    let snap = s
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    let other_dir = TempDir::new().expect("temp dir");
    let (mut other, other_app) = open(other_dir.path());
    other
        .state_machine
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect("install");
    let replies = other
        .state_machine
        .apply([normal(3, request(0, &["a", "b"]))])
        .await
        .expect("apply");
    assert_eq!(replies, vec![first]);
    assert_eq!(other_app.applied(), app.applied());
}

#[tokio::test]
async fn incarnations_taken_while_open_are_never_handed_out_again() {
    let dir = TempDir::new().expect("temp dir");
    let (s, _app) = open(dir.path());
    assert_eq!(s.handle.incarnation(), 1);
    // Declared down while alive: the node comes back as a new incarnation.
    assert_eq!(s.handle.next_incarnation().expect("next"), 2);
    assert_eq!(s.handle.next_incarnation().expect("next"), 3);
    close(s).await;
    let (s, _app) = open(dir.path());
    assert_eq!(
        s.handle.incarnation(),
        4,
        "a reopen continues the one counter"
    );
    close(s).await;
}

#[tokio::test]
async fn sequence_numbers_that_would_overflow_are_skipped_not_panicked_on() {
    let dir = TempDir::new().expect("temp dir");
    let (mut s, app) = open(dir.path());
    // A hostile or broken peer: the batch starts one below the maximum.
    let request = Request {
        origin: 9,
        incarnation: 1,
        first_seq: u64::MAX - 1,
        commands: vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()],
    };
    let entry = Entry::<TypeConfig> {
        log_id: log_id(1),
        payload: EntryPayload::Normal(request),
    };
    let replies = s.state_machine.apply([entry]).await.expect("apply");
    assert_eq!(
        replies,
        vec![vec![
            1u64.to_be_bytes().to_vec(),
            2u64.to_be_bytes().to_vec(),
            vec![]
        ]]
    );
    assert_eq!(app.applied(), vec![b"x".to_vec(), b"y".to_vec()]);
}

#[tokio::test]
async fn a_snapshot_is_the_state_when_it_was_taken_while_apply_goes_on() {
    const SNAP: u64 = 10;
    const N: u64 = 20;
    let dir = TempDir::new().expect("temp dir");
    let (mut s, app) = open(dir.path());
    s.log_store
        .blocking_append(entries(0, N))
        .await
        .expect("append");
    s.state_machine
        .apply(entries(0, SNAP))
        .await
        .expect("apply");
    // Taken here; encoded only when built.
    let mut builder = s.state_machine.get_snapshot_builder().await;
    s.state_machine
        .apply(entries(SNAP + 1, N))
        .await
        .expect("apply goes on before the snapshot is encoded");
    assert_eq!(app.applied(), expected_journal(N));
    let snap = builder.build_snapshot().await.expect("snapshot");
    assert_eq!(snap.meta.last_log_id, Some(log_id(SNAP)));
    drop(builder);
    close(s).await;

    let (_s, app) = open(dir.path());
    assert_eq!(
        app.applied(),
        expected_journal(SNAP),
        "the snapshot holds the state it was taken at, not what was applied after"
    );
}

#[tokio::test]
async fn a_snapshot_streams_from_one_store_into_another_through_files() {
    const SNAP: u64 = 40;
    let leader_dir = TempDir::new().expect("temp dir");
    let (mut leader, _app) = open(leader_dir.path());
    leader
        .state_machine
        .apply(entries(0, SNAP))
        .await
        .expect("apply");
    let built = leader
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    let mut sent = leader
        .state_machine
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(sent.meta, built.meta);

    // What a follower does with the chunks: into its spool file as they come.
    let follower_dir = TempDir::new().expect("temp dir");
    let (mut follower, app) = open(follower_dir.path());
    let mut spool = follower
        .state_machine
        .begin_receiving_snapshot()
        .await
        .expect("spool");
    let mut chunk = vec![0; 7];
    let mut bytes = 0;
    loop {
        let n = sent.snapshot.read(&mut chunk).await.expect("read");
        if n == 0 {
            break;
        }
        bytes += n;
        spool.write_all(&chunk[..n]).await.expect("write");
    }
    assert!(bytes > 0);
    spool.flush().await.expect("flush");
    spool.seek(std::io::SeekFrom::Start(0)).await.expect("seek");
    follower
        .state_machine
        .install_snapshot(&sent.meta, spool)
        .await
        .expect("install");
    assert_eq!(app.applied(), expected_journal(SNAP));
    let names: Vec<_> = std::fs::read_dir(follower_dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        names.iter().all(|n| n != "snapshot.recv"),
        "the spool leaves nothing behind: {names:?}"
    );
    drop((sent, built));
    close(follower).await;
    close(leader).await;

    let (_again, app) = open(follower_dir.path());
    assert_eq!(app.applied(), expected_journal(SNAP), "stored as well");
}
