//! The Raft log on sled, with group commit.
//!
//! `append` writes entries with one `apply_batch` (readable at once) and hands the
//! completion callback to a flusher thread. The flusher takes every callback queued
//! since its last fsync, runs ONE `db.flush()`, and completes them all: while an
//! fsync runs, the appends that arrive meanwhile pile up and share the next one.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError, Vote};
use tracing::{debug, warn};

use crate::store::{
    self, decode, encode, get, index_key, index_of_key, Shared, StoreError, KEY_COMMITTED,
    KEY_LAST_PURGED, KEY_VOTE,
};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// Most bytes of entries one `limited_get_log_entries` returns: keeps an
/// AppendEntries message well below the gRPC message limit.
const MAX_READ_BYTES: usize = 2 * 1024 * 1024;

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
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = match start {
            Bound::Included(i) => Bound::Included(index_key(i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match end {
            Bound::Included(i) => Bound::Included(index_key(i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for item in self.log.range::<[u8; 8], _>((start, end)) {
            let (key, value) = item?;
            let entry: Entry = decode("log entry", &value)?;
            if entry.log_id.index != index_of_key(&key)? {
                return Err(StoreError::corrupt(
                    "log entry",
                    format!("entry {} stored under another index", entry.log_id),
                ));
            }
            entries.push(entry);
            bytes += value.len();
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(entries)
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
                usize::MAX,
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
        // Counted once at open; the log is read again anyway by the replay.
        let mut bytes = 0u64;
        for value in shared.log.iter().values() {
            bytes = bytes.saturating_add(value?.len() as u64);
        }
        shared.log_bytes.store(bytes, Ordering::Relaxed);
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

/// Takes `bytes` of removed entries off the log's count.
fn forget_bytes(shared: &Shared, bytes: u64) {
    // Never below zero, even if a count at open raced an append.
    let _ = shared
        .log_bytes
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some(b.saturating_sub(bytes))
        });
}

/// Group commit: one fsync for every callback queued since the previous one.
fn run_flusher(shared: &Shared, rx: &mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut callbacks = vec![first];
        callbacks.extend(rx.try_iter());
        let result = shared.flush();
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
        let last_log_id = store::last_log_id(shared).map_err(read_err)?;
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
            // A vote must survive a crash before openraft acts on it.
            shared.flush()?;
            Ok(())
        };
        write().map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        get(&self.shared().meta, KEY_VOTE, "vote").map_err(|e| StorageIOError::read_vote(&e).into())
    }

    // Not flushed: the next log flush carries it. If a crash loses it, the node
    // replays less at start and learns the rest from the leader (or, alone, by
    // committing its own log again).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let meta = &self.shared().meta;
        let write = || -> Result<(), StoreError> {
            match committed {
                Some(id) => meta.insert(KEY_COMMITTED, encode("committed", &id)?)?,
                None => meta.remove(KEY_COMMITTED)?,
            };
            Ok(())
        };
        write().map_err(|e| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, &e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        get(&self.shared().meta, KEY_COMMITTED, "committed")
            .map_err(|e| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Read, &e).into())
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
        let mut batch = sled::Batch::default();
        let mut bytes = 0u64;
        for entry in entries {
            let value = encode("log entry", &entry).map_err(write_err)?;
            bytes += value.len() as u64;
            batch.insert(&index_key(entry.log_id.index), value);
        }
        self.shared()
            .log
            .apply_batch(batch)
            .map_err(|e| write_err(e.into()))?;
        self.shared().log_bytes.fetch_add(bytes, Ordering::Relaxed);
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
        let remove = || -> Result<(), StoreError> {
            let mut batch = sled::Batch::default();
            let mut bytes = 0u64;
            for item in shared.log.range(index_key(log_id.index)..) {
                let (key, value) = item?;
                bytes += value.len() as u64;
                batch.remove(key);
            }
            // Not flushed: until a later append's flush, a crash merely brings back
            // the conflicting tail, which the leader truncates again.
            shared.log.apply_batch(batch)?;
            forget_bytes(shared, bytes);
            Ok(())
        };
        remove().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        debug!(%log_id, "purging raft log");
        let shared = self.shared();
        let remove = || -> Result<(), StoreError> {
            // The pointer first: entries left behind by a crash below it are ignored
            // and removed by the next purge. Everything purged is covered by a
            // snapshot that was flushed when it was stored, so no flush here.
            shared
                .meta
                .insert(KEY_LAST_PURGED, encode("last purged log id", &log_id)?)?;
            let mut batch = sled::Batch::default();
            let mut bytes = 0u64;
            for item in shared.log.range(..=index_key(log_id.index)) {
                let (key, value) = item?;
                bytes += value.len() as u64;
                batch.remove(key);
            }
            shared.log.apply_batch(batch)?;
            forget_bytes(shared, bytes);
            Ok(())
        };
        remove().map_err(write_err)
    }
}
