//! What the log store, the state machine host and the snapshot files of one
//! storage directory share.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::error::{get, StoreError};
use crate::segments::SegmentLog;
use crate::types::{LogId, SnapshotMeta};

/// Keys of the `raft_meta` tree.
pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Everything that reads or writes the database shares this. When the last
/// reference goes, the database is closed and [`ClosedWatch`] fires.
pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    pub(crate) meta: sled::Tree,
    /// The storage directory: sled's files, `log/` and `snapshot`.
    pub(crate) dir: PathBuf,
    /// The log's entries. The lock covers the index in memory and the writes of
    /// one append, truncate or purge; readers copy positions out and read the
    /// files without it, so replication never waits for disk behind it.
    pub(crate) log: Mutex<SegmentLog>,
    pub(crate) flushes: Arc<AtomicU64>,
    /// Snapshots stored since the store opened (built here or received).
    pub(crate) snapshots: Arc<AtomicU64>,
    /// How long each fsync of the log and of sled took.
    pub(crate) flush_times: Arc<crate::timing::Timings>,
    /// Bytes of the entries in the log, as stored; a copy of the log's own
    /// count, updated after each change, so that reading it takes no lock.
    pub(crate) log_bytes: AtomicU64,
    /// `committed` was written to sled since sled was last flushed.
    pub(crate) committed_dirty: AtomicBool,
    pub(crate) incarnation: u64,
    /// The stored snapshot's metadata. Held while a snapshot is written, so that
    /// a snapshot built from older state never replaces a newer one installed
    /// meanwhile. Never held across `.await`.
    pub(crate) snapshot_write: Mutex<Option<SnapshotMeta>>,
    /// Declared last, so it drops after the database and trees: its receivers learn
    /// that the store is gone.
    pub(crate) _closed: watch::Sender<()>,
}

impl Shared {
    /// The log, for a short synchronous section.
    pub(crate) fn log(&self) -> MutexGuard<'_, SegmentLog> {
        // A panic under the lock leaves at worst an index that the next open
        // rebuilds from the files; openraft stops the node on the error anyway.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the log's byte count after a change.
    pub(crate) fn count_log_bytes(&self, log: &SegmentLog) {
        self.log_bytes.store(log.bytes(), Ordering::Relaxed);
    }

    /// fsyncs every log file written since the last sync, and counts it.
    pub(crate) fn sync_log(&self) -> std::io::Result<()> {
        let targets = self.log().sync_targets();
        let started = std::time::Instant::now();
        targets.sync()?;
        self.flush_times.record(started.elapsed());
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// fsyncs sled, and counts it.
    pub(crate) fn flush_meta(&self) -> Result<(), sled::Error> {
        self.committed_dirty.store(false, Ordering::Relaxed);
        let started = std::time::Instant::now();
        self.db.flush()?;
        self.flush_times.record(started.elapsed());
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// fsyncs the log, then sled: everything written so far is durable.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.sync_log()?;
        self.flush_meta()?;
        Ok(())
    }
}

/// The last log id present, or the last purged one when the log is empty.
pub(crate) fn last_log_id(shared: &Shared) -> Result<Option<LogId>, StoreError> {
    let purged: Option<LogId> = get(&shared.meta, KEY_LAST_PURGED, "last purged log id")?;
    let last = shared.log().last_log_id();
    Ok(last.max(purged))
}
