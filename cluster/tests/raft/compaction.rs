//! Compaction by bytes, measured on disk: a log of large entries keeps the data
//! directory within the log's byte bound, and a restart recovers everything.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_cluster::{Node, SnapshotEncoder, StateMachine, Tuning};
use tempfile::TempDir;

/// Keeps the length and a hash of every command applied: like a broker's, its
/// state is small beside the log that built it, so the directory's size is
/// mostly the log's.
#[derive(Default)]
struct Digests {
    /// One lock around the list; held only inside each call.
    applied: Mutex<Vec<(usize, u64)>>,
}

impl Digests {
    fn applied(&self) -> Vec<(usize, u64)> {
        self.applied.lock().expect("digests lock").clone()
    }
}

fn digest(command: &[u8]) -> (usize, u64) {
    let mut hasher = DefaultHasher::new();
    command.hash(&mut hasher);
    (command.len(), hasher.finish())
}

impl StateMachine for Digests {
    fn apply(&self, _term: u64, command: &[u8]) -> Vec<u8> {
        self.applied
            .lock()
            .expect("digests lock")
            .push(digest(command));
        Vec::new()
    }

    fn snapshot(&self) -> SnapshotEncoder {
        let copy = self.applied.lock().expect("digests lock").clone();
        Box::new(move || postcard::to_stdvec(&copy).map_err(|e| e.to_string()))
    }

    fn restore(&self, snapshot: &[u8]) -> Result<(), String> {
        let applied = postcard::from_bytes(snapshot).map_err(|e| e.to_string())?;
        *self.applied.lock().expect("digests lock") = applied;
        Ok(())
    }
}

async fn start(dir: &Path, tuning: Tuning) -> (Node, Arc<Digests>) {
    let app = Arc::new(Digests::default());
    let node = Node::start_tuned(crate::common::config(dir), tuning, app.clone())
        .await
        .expect("node starts");
    node.wait_ready(crate::common::READY_TIMEOUT)
        .await
        .expect("node becomes ready");
    (node, app)
}

/// Bytes of the files under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(m) if m.is_dir() => total += disk_bytes(&entry.path()),
            // A file deleted meanwhile counts as nothing.
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

/// 200 commands of 256 KiB (50 MiB of log) through a 2 MiB byte bound, with a
/// count policy that never fires: the directory ends far below what was
/// written, and the restarted node has every command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entries_keep_the_data_directory_within_the_byte_bound() {
    const COMMANDS: usize = 200;
    const SIZE: usize = 256 * 1024;
    const MAX_LOG: u64 = 2 * 1024 * 1024;
    // Beside the log's bound: the first segment file, purged only in part (8
    // MiB), one entry, and sled's files for votes and marks.
    const DISK_BOUND: u64 = MAX_LOG + 8 * 1024 * 1024 + 4 * 1024 * 1024;
    let tuning = || Tuning {
        snapshot_after_entries: 1_000_000,
        entries_kept_after_snapshot: 1_000_000,
        max_log_bytes: MAX_LOG,
        ..Tuning::default()
    };
    let dir = TempDir::new().expect("temp dir");
    let (node, app) = start(dir.path(), tuning()).await;
    let big = |i: usize| {
        let mut command = vec![(i % 251) as u8; SIZE];
        command[..8].copy_from_slice(&(i as u64).to_be_bytes());
        command
    };
    for i in 0..COMMANDS {
        node.propose(big(i)).await.expect("commit");
    }
    let written = (COMMANDS * SIZE) as u64;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (log, disk) = (node.log_bytes(), disk_bytes(dir.path()));
        if log <= MAX_LOG && disk <= DISK_BOUND {
            eprintln!("{written} bytes proposed: log {log} bytes, directory {disk} bytes");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {written} bytes proposed: log {log} bytes (bound {MAX_LOG}), \
             directory {disk} bytes (bound {DISK_BOUND})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = node.status();
    assert!(status.snapshot_index.is_some(), "a snapshot was built");
    assert!(status.purged_index.is_some(), "the log was purged");
    let before = app.applied();
    assert_eq!(
        before,
        (0..COMMANDS).map(|i| digest(&big(i))).collect::<Vec<_>>()
    );
    node.shutdown().await;

    let (node, app) = start(dir.path(), tuning()).await;
    assert!(node.status().started_from_snapshot.is_some());
    assert_eq!(app.applied(), before, "snapshot plus the kept log");
    node.shutdown().await;
}
