//! The Raft log store openraft drives, with group commit.
//!
//! Entries go to the segment files (`segments.rs`), votes and the commit and
//! purge points to sled. `append` writes the entries (readable at once) and hands
//! the completion callback to a flusher thread. The flusher takes every callback
//! queued since its last fsync, fsyncs the log files written since then ONCE, and
//! completes them all: while an fsync runs, the appends that arrive meanwhile
//! pile up and share the next one.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError, Vote};
use tracing::{debug, warn};

use crate::error::{encode, get, StoreError};
use crate::shared::{self, Shared, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// Most bytes of entries one `limited_get_log_entries` returns: keeps an
/// AppendEntries message well below the gRPC message limit.
const MAX_READ_BYTES: u64 = 2 * 1024 * 1024;

/// How often at most the flusher also fsyncs sled for a new `committed`. That
/// value only spares a restarting node re-learning how far its log is
/// committed, so it need not cost an fsync per group commit.
const COMMITTED_FLUSH_EVERY: Duration = Duration::from_secs(1);

fn read_err(e: StoreError) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: StoreError) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

/// Reads entries; shared by the log store and the readers replication tasks use.
impl Shared {
    fn read_entries(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let positions = self.log().positions(start, end, max_bytes);
        positions.iter().map(|pos| pos.read()).collect()
    }
}

/// A log reader for replication tasks. Cheap to clone.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.shared
            .read_entries(
                range.start_bound().cloned(),
                range.end_bound().cloned(),
                u64::MAX,
            )
            .map_err(read_err)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.shared
            .read_entries(Bound::Included(start), Bound::Excluded(end), MAX_READ_BYTES)
            .map_err(read_err)
    }
}

/// The Raft log store that openraft drives.
pub struct LogStore {
    reader: LogReader,
    /// The flusher thread holds the other end; it stops when this store is dropped.
    /// Unbounded because openraft waits for these callbacks before it lets many more
    /// entries in, and the proposer above bounds what is in flight.
    flush_tx: mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<LogStore, StoreError> {
        let (flush_tx, flush_rx) = mpsc::channel();
        let flusher_shared = shared.clone();
        thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || run_flusher(&flusher_shared, &flush_rx))?;
        Ok(LogStore {
            reader: LogReader { shared },
            flush_tx,
        })
    }

    fn shared(&self) -> &Shared {
        &self.reader.shared
    }
}

/// Group commit: one fsync for every callback queued since the previous one.
fn run_flusher(shared: &Shared, rx: &mpsc::Receiver<LogFlushed<TypeConfig>>) {
    let mut meta_flushed = Instant::now();
    while let Ok(first) = rx.recv() {
        let mut callbacks = vec![first];
        callbacks.extend(rx.try_iter());
        let mut result = shared.sync_log().map_err(StoreError::from);
        if result.is_ok()
            && shared.committed_dirty.load(Ordering::Relaxed)
            && meta_flushed.elapsed() >= COMMITTED_FLUSH_EVERY
        {
            meta_flushed = Instant::now();
            result = shared.flush_meta().map_err(StoreError::from);
        }
        debug!(callbacks = callbacks.len(), "raft log flushed");
        match result {
            Ok(()) => callbacks
                .into_iter()
                .for_each(|cb| cb.log_io_completed(Ok(()))),
            Err(e) => {
                // openraft stops the node on this error; every waiter must hear it.
                warn!(error = %e, "raft log flush failed");
                for cb in callbacks {
                    cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader.try_get_log_entries(range).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader.limited_get_log_entries(start, end).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let shared = self.shared();
        let last_purged_log_id =
            get::<LogId>(&shared.meta, KEY_LAST_PURGED, "last purged log id").map_err(read_err)?;
        let last_log_id = shared::last_log_id(shared).map_err(read_err)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let shared = self.shared();
        let write = || -> Result<(), StoreError> {
            shared.meta.insert(KEY_VOTE, encode("vote", vote)?)?;
            // A vote must survive a crash before openraft acts on it. It is in
            // sled alone: the log files need no fsync for it.
            shared.flush_meta()?;
            Ok(())
        };
        write().map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        get(&self.shared().meta, KEY_VOTE, "vote").map_err(|e| StorageIOError::read_vote(&e).into())
    }

    // Not flushed: the flusher carries it at most a second later, and any other
    // flush sooner. If a crash loses it, the node replays less at start and
    // learns the rest from the leader (or, alone, by committing its own log
    // again).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let shared = self.shared();
        let write = || -> Result<(), StoreError> {
            match committed {
                Some(id) => shared
                    .meta
                    .insert(KEY_COMMITTED, encode("committed", &id)?)?,
                None => shared.meta.remove(KEY_COMMITTED)?,
            };
            shared.committed_dirty.store(true, Ordering::Relaxed);
            Ok(())
        };
        write().map_err(|e| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, &e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let shared = self.shared();
        let read = || -> Result<Option<LogId>, StoreError> {
            let committed: Option<LogId> = get(&shared.meta, KEY_COMMITTED, "committed")?;
            // sled and the log files are fsynced apart: after a crash the stored
            // value may name entries the log lost (they were never acknowledged).
            // Only what the log holds can be applied.
            let last = shared::last_log_id(shared)?;
            Ok(match (committed, last) {
                (Some(c), Some(l)) if l.index < c.index => Some(l),
                (Some(_), None) => None,
                (committed, _) => committed,
            })
        };
        read().map_err(|e| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Read, &e).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let shared = self.shared();
            let mut log = shared.log();
            log.append(entries).map_err(write_err)?;
            shared.count_log_bytes(&log);
        }
        if let Err(mpsc::SendError(callback)) = self.flush_tx.send(callback) {
            let e = std::io::Error::other("the raft log flusher has stopped");
            let err = StorageIOError::write_logs(AnyError::new(&e)).into();
            callback.log_io_completed(Err(e));
            return Err(err);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        debug!(%log_id, "truncating raft log");
        let shared = self.shared();
        let mut log = shared.log();
        // fsynced before it returns: see `segments.rs`. Rare (a new leader
        // overriding entries this node never committed), so the fsync is cheap.
        log.truncate(log_id.index).map_err(write_err)?;
        shared.count_log_bytes(&log);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        debug!(%log_id, "purging raft log");
        let shared = self.shared();
        let remove = || -> Result<(), StoreError> {
            // The pointer first, durably: once files are deleted, a log that came
            // back without it would have a hole. Everything purged is covered by a
            // snapshot that was made durable when it was stored.
            shared
                .meta
                .insert(KEY_LAST_PURGED, encode("last purged log id", &log_id)?)?;
            shared.flush_meta()?;
            let mut log = shared.log();
            log.purge(log_id.index)?;
            shared.count_log_bytes(&log);
            Ok(())
        };
        remove().map_err(write_err)
    }
}
