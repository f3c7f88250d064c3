//! The sled database behind one node's Raft storage, and opening it.
//!
//! One `Db` holds three trees: `raft_log` (entries keyed by big-endian index, so
//! sled's key order is log order), `raft_meta` (vote, committed, last purged,
//! incarnation) and `snapshot` (the last snapshot's metadata and bytes). The
//! application state itself lives in memory, in the [`StateMachine`]; it is made
//! durable by the log and the snapshots, and rebuilt from them at open.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tracing::info;

use crate::log_store::LogStore;
use crate::snapshot::{self, StoredSnapshot};
use crate::state_machine::{SmState, StateMachineStore};
use crate::types::LogId;
use crate::StateMachine;

/// sled's page cache. Its default (1 GiB) is far more than a Raft log needs, and
/// sled's resident memory is known to grow to a multiple of it.
const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_INCARNATION: &[u8] = b"incarnation";

/// Errors of opening or using the store outside openraft's own calls.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("the state machine refused the snapshot: {0}")]
    Restore(String),
    #[error("the state machine could not encode a snapshot: {0}")]
    Snapshot(String),
    #[error("a blocking storage task failed: {0}")]
    Task(String),
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    pub(crate) fn corrupt(what: &'static str, detail: impl ToString) -> Self {
        StoreError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

/// Everything that reads or writes the database shares this. When the last
/// reference goes, the database is closed and [`ClosedWatch`] fires.
pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    pub(crate) log: sled::Tree,
    pub(crate) meta: sled::Tree,
    pub(crate) snapshot: sled::Tree,
    pub(crate) flushes: Arc<AtomicU64>,
    /// Bytes of the entries in `log`, as stored: counted at open, then kept up
    /// to date by append, truncate and purge.
    pub(crate) log_bytes: AtomicU64,
    pub(crate) incarnation: u64,
    /// Held while a snapshot is written, so that a snapshot built from older state
    /// never replaces a newer one installed meanwhile. Never held across `.await`.
    pub(crate) snapshot_write: Mutex<()>,
    /// Declared last, so it drops after the database and trees: its receivers learn
    /// that the store is gone.
    _closed: watch::Sender<()>,
}

impl Shared {
    /// fsyncs the whole database (the trees share one page cache) and counts it.
    pub(crate) fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush()?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::corrupt(what, e))
}

pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::corrupt(what, e))
}

pub(crate) fn get<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    match tree.get(key)? {
        Some(bytes) => Ok(Some(decode(what, &bytes)?)),
        None => Ok(None),
    }
}

pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn index_of_key(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::corrupt("log key", format!("{} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

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
    incarnation: u64,
    recovery: Recovery,
    closed: watch::Receiver<()>,
}

impl StorageHandle {
    /// fsyncs of the database so far (log group commits, votes, snapshots).
    pub fn log_flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
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

    /// The highest index that can be purged from the log while keeping at most
    /// `keep_bytes` of the entries up to `snapshot_index` (all of them covered
    /// by the snapshot): `None` if those entries fit in `keep_bytes` already.
    /// Blocking: it reads the tail of the log.
    pub fn purge_point(
        &self,
        snapshot_index: u64,
        keep_bytes: u64,
    ) -> Result<Option<u64>, StoreError> {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(None);
        };
        let mut kept = 0u64;
        for item in shared.log.range(..=index_key(snapshot_index)).rev() {
            let (key, value) = item?;
            kept = kept.saturating_add(value.len() as u64);
            if kept > keep_bytes {
                return Ok(Some(index_of_key(&key)?));
            }
        }
        Ok(None)
    }

    /// What was on disk at open.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// fsyncs everything written so far. A no-op once the store is closed, since
    /// closing flushes nothing that was not already flushed by a Raft path.
    pub fn flush(&self) -> Result<(), StoreError> {
        match self.shared.upgrade() {
            Some(shared) => Ok(shared.flush()?),
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
        let log = db.open_tree("raft_log")?;
        let meta = db.open_tree("raft_meta")?;
        let snapshot_tree = db.open_tree("snapshot")?;

        let incarnation = bump_incarnation(&db, &meta)?;

        let (closed_tx, closed_rx) = watch::channel(());
        let flushes = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            db,
            log,
            meta,
            snapshot: snapshot_tree,
            flushes: flushes.clone(),
            log_bytes: AtomicU64::new(0),
            incarnation,
            snapshot_write: Mutex::new(()),
            _closed: closed_tx,
        });

        let mut sm_state = SmState::default();
        let mut recovery = Recovery::default();
        if let Some(stored) = snapshot::load(&shared)? {
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

/// The last log id present, or the last purged one when the log is empty.
pub(crate) fn last_log_id(shared: &Shared) -> Result<Option<LogId>, StoreError> {
    let purged: Option<LogId> = get(&shared.meta, KEY_LAST_PURGED, "last purged log id")?;
    let last = match shared.log.last()? {
        Some((_, bytes)) => Some(decode::<crate::types::Entry>("log entry", &bytes)?.log_id),
        None => None,
    };
    Ok(last.max(purged))
}
