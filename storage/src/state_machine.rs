//! The Raft state machine: hosts the application's [`StateMachine`], feeds it the
//! committed commands in log order, and drops commands it has already applied.
//!
//! The application state lives in memory. It is made durable by the log and by
//! snapshots: at open the store restores the last snapshot and reports its last
//! log id as applied, and openraft re-applies the committed log after it.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use tracing::{debug, info};

use crate::error::StoreError;
use crate::marks::{LastBatch, Mark};
use crate::shared::Shared;
use crate::snapshot::{self, Body};
use crate::types::{
    Entry, LogId, NodeId, Request, Response, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use crate::StateMachine;

/// What this layer tracks beside the application state. Part of every snapshot.
#[derive(Debug, Default)]
pub(crate) struct SmState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    marks: BTreeMap<NodeId, Mark>,
    last_batches: BTreeMap<NodeId, LastBatch>,
}

impl SmState {
    pub(crate) fn from_snapshot(
        meta: &SnapshotMeta,
        marks: Vec<(NodeId, Mark)>,
        last_batches: Vec<(NodeId, LastBatch)>,
    ) -> SmState {
        SmState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            marks: marks.into_iter().collect(),
            last_batches: last_batches.into_iter().collect(),
        }
    }
}

/// The state machine half of the storage that openraft drives.
pub struct StateMachineStore {
    shared: Arc<Shared>,
    app: Arc<dyn StateMachine>,
    state: SmState,
    /// Makes snapshot ids unique within one incarnation.
    snapshots_built: u64,
}

impl StateMachineStore {
    pub(crate) fn new(shared: Arc<Shared>, app: Arc<dyn StateMachine>, state: SmState) -> Self {
        StateMachineStore {
            shared,
            app,
            state,
            snapshots_built: 0,
        }
    }

    fn apply_request(&mut self, term: u64, request: Request) -> Response {
        let Request {
            origin,
            incarnation,
            first_seq,
            commands,
        } = request;
        let count = commands.len();
        let mut replies = Vec::with_capacity(count);
        let mut skipped = 0usize;
        for (i, command) in commands.into_iter().enumerate() {
            // The numbers come from a peer: one that would overflow names no
            // command that could follow the mark, so the command is skipped, on
            // every node alike.
            let Some(seq) = u64::try_from(i).ok().and_then(|i| first_seq.checked_add(i)) else {
                skipped += 1;
                replies.push(Vec::new());
                continue;
            };
            let this = Mark { incarnation, seq };
            if self
                .state
                .marks
                .get(&origin)
                .is_some_and(|mark| this <= *mark)
            {
                skipped += 1;
                replies.push(Vec::new());
                continue;
            }
            replies.push(self.app.apply(term, &command));
            self.state.marks.insert(origin, this);
        }
        if skipped > 0 {
            debug!(
                origin,
                incarnation, first_seq, skipped, "skipped commands already applied"
            );
        }
        if skipped == 0 {
            self.state.last_batches.insert(
                origin,
                LastBatch {
                    incarnation,
                    first_seq,
                    replies: replies.clone(),
                },
            );
        } else if skipped == count {
            // The whole batch again: a retry. Answer it as the first time.
            if let Some(last) = self.state.last_batches.get(&origin) {
                if last.incarnation == incarnation
                    && last.first_seq == first_seq
                    && last.replies.len() == count
                {
                    return last.replies.clone();
                }
            }
        }
        replies
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            self.state.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(request) => {
                    self.apply_request(entry.log_id.leader_id.term, request)
                }
                EntryPayload::Membership(membership) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Runs between two `apply` calls: the copy is consistent with last_applied.
        self.snapshots_built += 1;
        let last = self.state.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.state.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                self.shared.incarnation,
                last.map_or(0, |id| id.index),
                self.snapshots_built
            ),
        };
        let marks = self.state.marks.iter().map(|(o, m)| (*o, *m)).collect();
        let last_batches = self
            .state
            .last_batches
            .iter()
            .map(|(o, b)| (*o, b.clone()))
            .collect();
        let encode = self.app.snapshot();
        let work: Encode = Box::new(move || {
            Body::encode(
                marks,
                last_batches,
                &encode().map_err(StoreError::Snapshot)?,
            )
        });
        SnapshotBuilder {
            shared: self.shared.clone(),
            meta,
            work: Some(work),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let dir = self.shared.dir.clone();
        let file = blocking(move || snapshot::spool(&dir))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let err = |e: StoreError| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        };
        let mut file = snapshot.into_std().await;
        let (shared, stored_meta) = (self.shared.clone(), meta.clone());
        // The received bytes are on disk, from the file's position on; read
        // once, checked, stored, restored.
        let body = blocking(move || {
            let mut body = Vec::new();
            file.read_to_end(&mut body)?;
            // Refuse bytes we cannot read before they replace the stored snapshot.
            Body::decode(&body)?;
            snapshot::store(&shared, &stored_meta, &body)?;
            Ok(body)
        })
        .await
        .map_err(err)?;
        let parts = Body::decode(&body).map_err(err)?;
        self.app
            .restore(parts.app)
            .map_err(|e| err(StoreError::Restore(e)))?;
        self.state = SmState::from_snapshot(meta, parts.marks, parts.last_batches);
        info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.shared.dir.clone();
        let stored = blocking(move || snapshot::open_body(&dir))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

/// Runs blocking file work (reads, writes, fsyncs) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Serializes the copy taken by `get_snapshot_builder`, with this layer's header.
type Encode = Box<dyn FnOnce() -> Result<Vec<u8>, StoreError> + Send + Sync>;

/// Builds a snapshot from the copy taken by `get_snapshot_builder`, encoding
/// it on a blocking thread while commands go on being applied.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    meta: SnapshotMeta,
    /// The encoding still to do; `None` once built.
    work: Option<Encode>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let meta = self.meta.clone();
        let err = |e: StoreError| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        };
        let work = self
            .work
            .take()
            .ok_or_else(|| err(StoreError::Task("snapshot already built".into())))?;
        let (shared, built) = (self.shared.clone(), meta.clone());
        let file = blocking(move || {
            let body = work()?;
            let bytes = body.len();
            if let Some(file) = snapshot::store(&shared, &built, &body)? {
                info!(snapshot = %built, bytes, "built snapshot");
                return Ok(file);
            }
            // A newer snapshot was installed meanwhile: this one is handed
            // out from a file of its own.
            let mut file = snapshot::spool(&shared.dir)?;
            file.write_all(&body)?;
            file.seek(SeekFrom::Start(0))?;
            Ok(file)
        })
        .await
        .map_err(err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}
