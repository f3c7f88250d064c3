//! A running Raft node: storage opened, openraft started, a proposer in front.
//!
//! Lifecycle: [`Node::start`] opens the sled store (restoring the state machine
//! from its last snapshot), starts openraft, which re-applies the committed log
//! after the snapshot, and initializes a one-member cluster if the store is new.
//! [`Node::shutdown`] stops the proposer, then Raft, then closes the store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::{Raft, RaftMetrics, ServerState, SnapshotPolicy};
use starling_storage::{NodeId, PeerNode, Storage, StorageHandle, TypeConfig};
use tokio::sync::{mpsc, oneshot, watch, OnceCell};
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn, Instrument};

use crate::network::NetworkFactory;
use crate::proposer::{Counters, Proposal, Proposer};
use crate::{ClusterError, NodeConfig, ProposalStats, StateMachine};

/// How long shutdown waits for the store's files to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Knobs beyond [`NodeConfig`]; the defaults suit a LAN cluster.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so that a follower a little
    /// behind catches up from the log rather than by a snapshot transfer.
    pub entries_kept_after_snapshot: u64,
    /// Raft entries the proposer keeps in flight at once. Commands proposed while
    /// all are in flight wait in the queue and form the next entry. On one node 1
    /// is fastest: more entries in flight only split the same load into smaller
    /// batches, each with its own fsync. Measure again where replication adds
    /// latency that pipelining could hide.
    pub max_batches_in_flight: usize,
    /// Commands that may wait for the proposer. When it is full, `propose` waits
    /// for room: callers are slowed down, never refused.
    pub queue_capacity: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            snapshot_after_entries: 20_000,
            entries_kept_after_snapshot: 10_000,
            max_batches_in_flight: 1,
            queue_capacity: 65_536,
        }
    }
}

/// Where Raft stands on this node, in plain numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// The current Raft term.
    pub term: u64,
    /// The leader this node knows of, if any.
    pub leader: Option<u64>,
    /// Whether this node is the leader.
    pub is_leader: bool,
    /// Index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the state machine.
    pub last_applied_index: Option<u64>,
    /// Last index covered by the newest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last index removed from the log.
    pub purged_index: Option<u64>,
    /// Snapshot index the state machine was restored from when this node started.
    pub started_from_snapshot: Option<u64>,
}

/// A running Raft node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: Raft<TypeConfig>,
    /// The proposer task holds the receiving end.
    queue: mpsc::Sender<Proposal>,
    counters: Arc<Counters>,
    storage: StorageHandle,
    /// The last log index on disk at start: the node serves once it applied it.
    replay_to: Option<u64>,
    /// Tells the proposer to stop.
    stop: watch::Sender<bool>,
    /// Taken by the one shutdown that runs; a short, synchronous section.
    proposer: Mutex<Option<JoinHandle<()>>>,
    /// Set once shutdown has completed; later callers wait on the first one.
    stopped: OnceCell<()>,
}

impl Node {
    /// Opens (or creates) the node's storage under `config.data_dir`, restores the
    /// state machine from the last snapshot and the log, and starts Raft. A node
    /// whose storage is new initializes a one-member cluster.
    pub async fn start(
        config: NodeConfig,
        state_machine: Arc<dyn StateMachine>,
    ) -> Result<Node, ClusterError> {
        Node::start_tuned(config, Tuning::default(), state_machine).await
    }

    /// [`Node::start`] with non-default [`Tuning`].
    pub async fn start_tuned(
        config: NodeConfig,
        tuning: Tuning,
        state_machine: Arc<dyn StateMachine>,
    ) -> Result<Node, ClusterError> {
        let span = info_span!("node", id = config.node_id);
        start(config, tuning, state_machine).instrument(span).await
    }

    /// Commits one command, batched with the commands proposed concurrently, and
    /// returns what [`StateMachine::apply`] returned for it. When this returns `Ok`,
    /// the command is durable (fsynced) in the log of a quorum.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ClusterError> {
        if *self.inner.stop.borrow() {
            return Err(ClusterError::ShuttingDown);
        }
        let (reply, replied) = oneshot::channel();
        // Waits while the queue is full: backpressure on the caller.
        self.inner
            .queue
            .send(Proposal { command, reply })
            .await
            .map_err(|_| ClusterError::ShuttingDown)?;
        replied.await.unwrap_or(Err(ClusterError::ShuttingDown))
    }

    /// True when this node has a leader and has applied the log up to what it knew
    /// at start: it may serve clients.
    pub fn is_ready(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let ready = is_ready(&metrics.borrow(), self.inner.id, self.inner.replay_to);
        ready
    }

    /// Waits until [`Node::is_ready`]; `Unavailable` if it is not within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        if *self.inner.stop.borrow() {
            return Err(ClusterError::ShuttingDown);
        }
        let (id, replay_to) = (self.inner.id, self.inner.replay_to);
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(move |m| is_ready(m, id, replay_to), "node ready")
            .await
            .map(|_| ())
            .map_err(wait_error)
    }

    /// Counters of the proposal path since this node started.
    pub fn stats(&self) -> ProposalStats {
        ProposalStats {
            commands: self
                .inner
                .counters
                .commands
                .load(std::sync::atomic::Ordering::Relaxed),
            batches: self
                .inner
                .counters
                .batches
                .load(std::sync::atomic::Ordering::Relaxed),
            log_flushes: self.inner.storage.log_flushes(),
        }
    }

    /// Where Raft stands on this node.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        RaftStatus {
            term: m.current_term,
            leader: m.current_leader,
            is_leader: m.state == ServerState::Leader,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|id| id.index),
            snapshot_index: m.snapshot.map(|id| id.index),
            purged_index: m.purged.map(|id| id.index),
            started_from_snapshot: self.inner.storage.recovery().snapshot_index,
        }
    }

    /// Builds a snapshot of everything applied so far and waits until it is stored,
    /// at most `timeout`. Snapshots are also built on their own (see [`Tuning`]).
    pub async fn snapshot(&self, timeout: Duration) -> Result<(), ClusterError> {
        let applied = self
            .inner
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|id| id.index);
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(
                move |m| m.snapshot.map(|id| id.index) >= applied,
                "snapshot built",
            )
            .await
            .map(|_| ())
            .map_err(wait_error)
    }

    /// Stops Raft and flushes storage.
    ///
    /// Commands still queued fail with `ShuttingDown`; entries already submitted
    /// are waited for. Idempotent: every caller, on any clone, returns once the
    /// one shutdown has finished and the storage is closed.
    pub async fn shutdown(&self) {
        let inner = self.inner.clone();
        self.inner
            .stopped
            .get_or_init(|| async move { inner.stop().await })
            .instrument(info_span!("node", id = self.inner.id))
            .await;
    }
}

impl Inner {
    async fn stop(&self) {
        self.stop.send_replace(true);
        let proposer = self
            .proposer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(proposer) = proposer {
            if let Err(e) = proposer.await {
                warn!(error = %e, "proposer task failed");
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft core task failed");
        }
        if let Err(e) = self.storage.flush() {
            warn!(error = %e, "final flush of raft storage failed");
        }
        // openraft drops the stores as its tasks end; wait for the files to close
        // so that the same directory can be opened again at once.
        if tokio::time::timeout(CLOSE_TIMEOUT, self.storage.closed())
            .await
            .is_err()
        {
            warn!("raft storage still open after shutdown");
        }
        info!("raft node stopped");
    }
}

fn is_ready(m: &RaftMetrics<NodeId, PeerNode>, id: NodeId, replay_to: Option<u64>) -> bool {
    m.state == ServerState::Leader
        && m.current_leader == Some(id)
        && m.last_applied.map(|id| id.index) >= replay_to
}

fn wait_error(e: WaitError) -> ClusterError {
    match e {
        WaitError::Timeout(..) => ClusterError::Unavailable,
        WaitError::ShuttingDown => ClusterError::ShuttingDown,
    }
}

fn raft_config(tuning: &Tuning) -> Result<Arc<openraft::Config>, ClusterError> {
    let config = openraft::Config {
        cluster_name: "starling".into(),
        // Also the timeout of every AppendEntries: a full batch plus the follower's
        // fsync must fit.
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        max_payload_entries: 512,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_after_entries),
        // Never 0: a leader with a fully purged log could not catch a follower up.
        max_in_snapshot_log_to_keep: tuning.entries_kept_after_snapshot.max(1),
        purge_batch_size: 256,
        install_snapshot_timeout: 5_000,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| ClusterError::Raft(e.to_string()))
}

async fn start(
    config: NodeConfig,
    tuning: Tuning,
    state_machine: Arc<dyn StateMachine>,
) -> Result<Node, ClusterError> {
    let storage_error = |e: &dyn std::fmt::Display| ClusterError::Storage(e.to_string());
    let raft_error = |e: &dyn std::fmt::Display| ClusterError::Raft(e.to_string());
    let id = config.node_id;

    let dir = config.data_dir.clone();
    let Storage {
        log_store,
        state_machine,
        handle: storage,
    } = tokio::task::spawn_blocking(move || Storage::open(&dir, state_machine))
        .await
        .map_err(|e| storage_error(&e))?
        .map_err(|e| storage_error(&e))?;
    let recovery = storage.recovery();

    let raft = Raft::new(
        id,
        raft_config(&tuning)?,
        NetworkFactory,
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| raft_error(&e))?;
    if !raft.is_initialized().await.map_err(|e| raft_error(&e))? {
        let members = BTreeMap::from([(id, PeerNode::default())]);
        match raft.initialize(members).await {
            Ok(()) => info!("initialized a new one-member cluster"),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => {
                let _ = raft.shutdown().await;
                return Err(raft_error(&e));
            }
        }
    }

    let counters = Arc::new(Counters::default());
    let (queue, queue_rx) = mpsc::channel(tuning.queue_capacity.max(1));
    let (stop, stop_rx) = watch::channel(false);
    let proposer = Proposer {
        raft: raft.clone(),
        origin: id,
        incarnation: storage.incarnation(),
        max_batch: config.max_batch,
        max_in_flight: tuning.max_batches_in_flight.max(1),
        counters: counters.clone(),
    };
    let proposer = tokio::spawn(proposer.run(queue_rx, stop_rx).in_current_span());

    info!(
        incarnation = storage.incarnation(),
        snapshot_index = ?recovery.snapshot_index,
        last_log_index = ?recovery.last_log_index,
        "raft node started"
    );
    Ok(Node {
        inner: Arc::new(Inner {
            id,
            raft,
            queue,
            counters,
            storage,
            replay_to: recovery.last_log_index,
            stop,
            proposer: Mutex::new(Some(proposer)),
            stopped: OnceCell::new(),
        }),
    })
}
