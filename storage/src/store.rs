//! One node's Raft storage directory, and opening it.
//!
//! sled holds only small values, in the tree `raft_meta` (vote, committed, last
//! purged, incarnation). The log's entries are in segment files under `log/`
//! (`segments.rs`) and the last snapshot in the file `snapshot` (`snapshot.rs`),
//! both beside sled's files: sled keeps large values as blob files that it does
//! not always delete. The application state itself lives in memory, in the
//! [`StateMachine`]; it is made durable by the log and the snapshots, and
//! rebuilt from them at open.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::info;

use crate::error::{encode, get, StoreError};
use crate::log_store::LogStore;
use crate::segments::SegmentLog;
use crate::shared::{last_log_id, Shared, KEY_LAST_PURGED};
use crate::snapshot::{self, StoredSnapshot};
use crate::state_machine::{SmState, StateMachineStore};
use crate::types::LogId;
use crate::{legacy, StateMachine};

/// sled's page cache. Its default (1 GiB) is far more than a Raft log needs, and
/// sled's resident memory is known to grow to a multiple of it.
const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

const KEY_INCARNATION: &[u8] = b"incarnation";
/// The directory of the log's segment files, inside the storage directory.
const LOG_DIR: &str = "log";

/// Errors of opening or using the store outside openraft's own calls.
/// What [`Storage::open`] found on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Last log index covered by the snapshot the state machine was restored from.
    pub snapshot_index: Option<u64>,
    /// Index of the last entry in the log (or the last purged one, if none is left).
    pub last_log_index: Option<u64>,
}

/// A node's Raft storage, opened: the two halves openraft drives, and a handle
/// for the node itself.
pub struct Storage {
    pub log_store: LogStore,
    pub state_machine: StateMachineStore,
    pub handle: StorageHandle,
}

/// What the node keeps of its storage. It does not keep the database open: once
/// openraft drops the stores, the files close.
#[derive(Clone)]
pub struct StorageHandle {
    shared: std::sync::Weak<Shared>,
    flushes: Arc<AtomicU64>,
    flush_times: Arc<crate::timing::Timings>,
    snapshots: Arc<AtomicU64>,
    dir: std::path::PathBuf,
    incarnation: u64,
    recovery: Recovery,
    closed: watch::Receiver<()>,
}

impl StorageHandle {
    /// fsyncs of the database so far (log group commits, votes, snapshots).
    pub fn log_flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Snapshots stored since the store opened, built here or received.
    pub fn snapshots_stored(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// The size of the stored snapshot file, 0 without one.
    pub fn snapshot_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join(crate::snapshot::FILE)).map_or(0, |m| m.len())
    }

    /// How long those fsyncs took.
    pub fn flush_times(&self) -> crate::timing::TimingsSnapshot {
        self.flush_times.snapshot()
    }

    /// Starts at 1 for a new store and grows by one at every open: with the node
    /// id, it lets proposers restart their sequence numbers at 0.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Takes the next incarnation number, durably, for a node that must come
    /// back as a new incarnation without reopening its store (it was declared
    /// down while alive). One counter serves both this and [`Self::incarnation`],
    /// so no number is ever handed out twice, even across a crash. Blocking.
    pub fn next_incarnation(&self) -> Result<u64, StoreError> {
        let shared = self.shared.upgrade().ok_or(StoreError::Closed)?;
        bump_incarnation(&shared.db, &shared.meta)
    }

    /// Bytes of the entries the log holds now (0 once the store is closed).
    pub fn log_bytes(&self) -> u64 {
        self.shared
            .upgrade()
            .map_or(0, |shared| shared.log_bytes.load(Ordering::Relaxed))
    }

    /// Bytes of the entries up to `index` that the log holds now (those a
    /// snapshot at `index` covers). Reads the index in memory only.
    pub fn log_bytes_through(&self, index: u64) -> u64 {
        self.shared
            .upgrade()
            .map_or(0, |shared| shared.log().bytes_through(index))
    }

    /// The highest index that can be purged from the log while keeping at most
    /// `keep_bytes` of the entries up to `snapshot_index` (all of them covered
    /// by the snapshot): `None` if those entries fit in `keep_bytes` already.
    /// Reads the index in memory only (one walk over the entries).
    pub fn purge_point(&self, snapshot_index: u64, keep_bytes: u64) -> Option<u64> {
        let shared = self.shared.upgrade()?;
        let point = shared.log().purge_point(snapshot_index, keep_bytes);
        point
    }

    /// What was on disk at open.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// fsyncs everything written so far. A no-op once the store is closed, since
    /// closing flushes nothing that was not already flushed by a Raft path.
    pub fn flush(&self) -> Result<(), StoreError> {
        match self.shared.upgrade() {
            Some(shared) => shared.flush(),
            None => Ok(()),
        }
    }

    /// Resolves once every part of the store has been dropped. sled's IO threads
    /// may hold the files a few milliseconds longer; [`Storage::open`] waits for
    /// them, so the same directory can be opened again right after this.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        // `changed` fails only when the sender, owned by the database, is gone.
        while rx.changed().await.is_ok() {}
    }
}

impl Storage {
    /// Opens (creating if needed) the store in `dir`, restores `app` from the last
    /// snapshot if there is one, and reports that snapshot as applied. openraft then
    /// re-applies the committed log after it when the node starts. Blocking: call
    /// it from a blocking context.
    pub fn open(dir: &Path, app: Arc<dyn StateMachine>) -> Result<Storage, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = open_db(dir)?;
        let meta = db.open_tree("raft_meta")?;

        let incarnation = bump_incarnation(&db, &meta)?;

        let purged = get::<LogId>(&meta, KEY_LAST_PURGED, "last purged log id")?;
        let mut log = SegmentLog::open(&dir.join(LOG_DIR), purged.map(|id| id.index))?;
        legacy::migrate(&db, &mut log, dir, purged.map(|id| id.index))?;
        snapshot::remove_partial(dir)?;
        let stored_snapshot = snapshot::load(dir)?;

        let (closed_tx, closed_rx) = watch::channel(());
        let flushes = Arc::new(AtomicU64::new(0));
        let flush_times = Arc::new(crate::timing::Timings::default());
        let snapshots = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            snapshots: snapshots.clone(),
            flush_times: flush_times.clone(),
            db,
            meta,
            dir: dir.to_owned(),
            log_bytes: AtomicU64::new(log.bytes()),
            log: Mutex::new(log),
            flushes: flushes.clone(),
            committed_dirty: AtomicBool::new(false),
            incarnation,
            snapshot_write: Mutex::new(stored_snapshot.as_ref().map(|s| s.meta.clone())),
            _closed: closed_tx,
        });

        let mut sm_state = SmState::default();
        let mut recovery = Recovery::default();
        if let Some(stored) = stored_snapshot {
            let StoredSnapshot { meta, body } = stored;
            let parts = snapshot::Body::decode(&body)?;
            app.restore(parts.app).map_err(StoreError::Restore)?;
            recovery.snapshot_index = meta.last_log_id.map(|id| id.index);
            sm_state = SmState::from_snapshot(&meta, parts.marks, parts.last_batches);
        }
        recovery.last_log_index = last_log_id(&shared)?.map(|id| id.index);

        match recovery.snapshot_index {
            Some(n) => info!(
                incarnation,
                "recovered snapshot at index {n}, replaying log to {}",
                fmt_index(recovery.last_log_index)
            ),
            None => info!(
                incarnation,
                "opened raft storage without a snapshot, replaying log to {}",
                fmt_index(recovery.last_log_index)
            ),
        }

        let handle = StorageHandle {
            shared: Arc::downgrade(&shared),
            flushes,
            flush_times,
            snapshots,
            dir: dir.to_owned(),
            incarnation,
            recovery,
            closed: closed_rx,
        };
        Ok(Storage {
            log_store: LogStore::new(shared.clone())?,
            state_machine: StateMachineStore::new(shared, app, sm_state),
            handle,
        })
    }
}

/// Increments the stored incarnation and fsyncs it before handing it out: it
/// must be durable before any command of this incarnation can be proposed. A
/// stored value that cannot be read is an error, never a fresh start at 0.
fn bump_incarnation(db: &sled::Db, meta: &sled::Tree) -> Result<u64, StoreError> {
    let previous = get::<u64>(meta, KEY_INCARNATION, "incarnation")?.unwrap_or(0);
    let next = previous
        .checked_add(1)
        .ok_or_else(|| StoreError::corrupt("incarnation", "at its maximum"))?;
    meta.insert(KEY_INCARNATION, encode("incarnation", &next)?)?;
    db.flush()?;
    Ok(next)
}

/// How long [`open_db`] waits for the lock on a database closed a moment ago.
const LOCK_WAIT: Duration = Duration::from_secs(3);
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// Opens the database, waiting briefly while its file lock is still held: after a
/// store is dropped, sled's own IO threads may hold the files for a few more
/// milliseconds, so reopening in the same process (a node restart) can race them.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_CAPACITY_BYTES)
        // Every Raft path flushes explicitly; a timer adds fsyncs but no safety.
        .flush_every_ms(None);
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            // sled 0.34 reports a held lock only in the message of an `Other` error.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(LOCK_RETRY);
            }
            result => return Ok(result?),
        }
    }
}

fn fmt_index(index: Option<u64>) -> String {
    index.map_or_else(|| "none".to_owned(), |i| i.to_string())
}
