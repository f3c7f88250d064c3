//! A one-member cluster end to end: proposals, batching, shutdown and restart.

use std::time::{Duration, Instant};

use crate::common::{command, position_in_reply, propose_concurrently, start};
use starling_cluster::{ClusterError, Tuning};
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_proposal_gets_the_apps_reply() {
    let dir = TempDir::new().expect("temp dir");
    let (node, app) = start(dir.path(), Tuning::default()).await;
    assert!(node.is_ready());

    let reply = node.propose(b"hello".to_vec()).await.expect("commit");
    assert_eq!(reply, b"hello#1");
    assert_eq!(app.applied(), vec![b"hello".to_vec()]);
    let stats = node.stats();
    assert_eq!((stats.commands, stats.batches), (1, 1));
    assert!(stats.log_flushes >= 1, "the entry was fsynced");

    node.shutdown().await;
    node.shutdown().await; // idempotent
    assert!(!node.is_ready());
    assert!(matches!(
        node.propose(b"late".to_vec()).await,
        Err(ClusterError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_are_batched_and_each_gets_its_own_reply() {
    const N: usize = 1_000;
    let dir = TempDir::new().expect("temp dir");
    let (node, app) = start(dir.path(), Tuning::default()).await;

    // One task per proposal, all at once.
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move {
                let reply = node.propose(command(i)).await.expect("commit");
                position_in_reply(&reply, &command(i))
            })
        })
        .collect();
    let mut positions = Vec::new();
    for task in tasks {
        positions.push(task.await.expect("proposer task"));
    }
    positions.sort_unstable();
    assert_eq!(
        positions,
        (1..=N).collect::<Vec<_>>(),
        "each command applied once"
    );
    assert_eq!(app.applied().len(), N);

    let stats = node.stats();
    println!("1000 concurrent proposals: {stats:?}");
    assert_eq!(stats.commands, N as u64);
    assert!(
        stats.batches < stats.commands / 4,
        "too little batching: {stats:?}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_the_state_from_the_log() {
    let dir = TempDir::new().expect("temp dir");
    let (node, app) = start(dir.path(), Tuning::default()).await;
    propose_concurrently(&node, 0, 200, 8).await;
    let before = app.applied();
    assert_eq!(before.len(), 200);
    node.shutdown().await;

    let (node, app) = start(dir.path(), Tuning::default()).await;
    assert_eq!(node.status().started_from_snapshot, None);
    assert_eq!(app.applied(), before, "same commands, same order");
    let reply = node
        .propose(command(200))
        .await
        .expect("commit after restart");
    assert_eq!(position_in_reply(&reply, &command(200)), 201);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_from_a_snapshot_plus_the_log_after_it() {
    let tuning = || Tuning {
        snapshot_after_entries: 50,
        entries_kept_after_snapshot: 10,
        ..Tuning::default()
    };
    let dir = TempDir::new().expect("temp dir");
    let (node, app) = start(dir.path(), tuning()).await;
    // Two proposers: small batches, so well over 50 entries.
    propose_concurrently(&node, 0, 400, 2).await;
    // The policy builds a snapshot on its own; wait for one that lets the log be purged.
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.status().purged_index.is_none() {
        assert!(
            Instant::now() < deadline,
            "no snapshot and purge: {:?}",
            node.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Snapshot everything now, so the next automatic one is 50 entries away, and
    // add a few entries after it for the replay.
    node.snapshot(Duration::from_secs(20))
        .await
        .expect("snapshot");
    propose_concurrently(&node, 400, 10, 1).await;
    let before = app.applied();
    node.shutdown().await;

    let (node, app) = start(dir.path(), tuning()).await;
    let status = node.status();
    assert!(
        status.started_from_snapshot.is_some_and(|i| i > 0),
        "{status:?}"
    );
    assert!(
        status.started_from_snapshot < status.last_applied_index,
        "{status:?}"
    );
    assert_eq!(app.applied(), before, "snapshot plus replayed log");

    // Once more, after an explicit snapshot of everything applied.
    propose_concurrently(&node, 410, 20, 4).await;
    node.snapshot(Duration::from_secs(20))
        .await
        .expect("snapshot");
    let before = app.applied();
    let snapshot_index = node.status().snapshot_index;
    node.shutdown().await;

    let (node, app) = start(dir.path(), tuning()).await;
    assert_eq!(node.status().started_from_snapshot, snapshot_index);
    assert_eq!(app.applied(), before);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_answers_every_proposal_and_loses_no_acknowledged_one() {
    let dir = TempDir::new().expect("temp dir");
    let (node, _app) = start(dir.path(), Tuning::default()).await;
    let tasks: Vec<_> = (0..64)
        .map(|p| {
            let node = node.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in (p..).step_by(64) {
                    match node.propose(command(i)).await {
                        Ok(reply) => {
                            position_in_reply(&reply, &command(i));
                            acknowledged.push(command(i));
                        }
                        Err(ClusterError::ShuttingDown) => return acknowledged,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                acknowledged
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.stats().commands < 2_000 {
        assert!(Instant::now() < deadline, "proposals do not commit");
        tokio::task::yield_now().await;
    }
    node.shutdown().await;
    let mut acknowledged = Vec::new();
    for task in tasks {
        let answered = tokio::time::timeout(Duration::from_secs(20), task).await;
        acknowledged.extend(answered.expect("every proposer is answered").expect("task"));
    }

    let (node, app) = start(dir.path(), Tuning::default()).await;
    let applied: std::collections::HashSet<_> = app.applied().into_iter().collect();
    assert!(acknowledged.len() >= 2_000);
    assert!(
        acknowledged.iter().all(|c| applied.contains(c)),
        "an acknowledged command was lost"
    );
    node.shutdown().await;
}

/// Not a benchmark: it asserts only correctness, and prints the rate for the record
/// (run with `--release -- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_proposals_from_64_proposers() {
    const N: usize = 10_000;
    let dir = TempDir::new().expect("temp dir");
    let (node, app) = start(dir.path(), Tuning::default()).await;
    let started = Instant::now();
    let mut positions = propose_concurrently(&node, 0, N, 64).await;
    let elapsed = started.elapsed();
    positions.sort_unstable();
    assert_eq!(positions, (1..=N).collect::<Vec<_>>());
    assert_eq!(app.applied().len(), N);
    let stats = node.stats();
    println!(
        "{N} proposals, 64 proposers: {:?}, {:.0} commands/s, {} batches, {} log flushes",
        elapsed,
        N as f64 / elapsed.as_secs_f64(),
        stats.batches,
        stats.log_flushes
    );
    node.shutdown().await;
}

/// Entries of any size: the log stays within its byte bound through
/// snapshots and purges, whatever the entry count, and a restart recovers
/// everything from the snapshot and what the log kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_compacted_by_bytes_and_a_restart_recovers_everything() {
    const COMMANDS: usize = 40;
    const SIZE: usize = 256 * 1024;
    const MAX_LOG: u64 = 2 * 1024 * 1024;
    let tuning = || Tuning {
        // The count policy alone would never snapshot here.
        snapshot_after_entries: 1_000_000,
        max_log_bytes: MAX_LOG,
        ..Tuning::default()
    };
    let dir = TempDir::new().expect("temp dir");
    let (node, app) = start(dir.path(), tuning()).await;
    let big = |i: usize| {
        let mut command = command(i);
        command.resize(SIZE, b'.');
        command
    };
    let mut peak = 0;
    for i in 0..COMMANDS {
        node.propose(big(i)).await.expect("commit");
        peak = peak.max(node.log_bytes());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // Raft's metrics report a purge a moment after the log store did it.
    while node.log_bytes() > MAX_LOG || node.status().purged_index.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "log still {} bytes, bound {MAX_LOG}: {:?}",
            node.log_bytes(),
            node.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = node.status();
    assert!(status.snapshot_index.is_some(), "a snapshot was built");
    assert!(status.purged_index.is_some(), "the log was purged");
    eprintln!(
        "{COMMANDS} commands of {SIZE} bytes: log peaked at {peak} bytes, now {}",
        node.log_bytes()
    );
    let before = app.applied();
    assert_eq!(before.len(), COMMANDS);
    node.shutdown().await;

    let (node, app) = start(dir.path(), tuning()).await;
    assert!(node.status().started_from_snapshot.is_some());
    assert_eq!(app.applied(), before, "snapshot plus the kept log");
    node.shutdown().await;
}
