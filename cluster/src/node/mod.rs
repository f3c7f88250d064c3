//! A running Raft node: storage opened, openraft started, the cluster server
//! listening, a proposer in front and a monitor watching liveness and quorum.
//!
//! Lifecycle: [`Node::start`] binds the cluster listener, opens the sled store
//! (restoring the state machine from its last snapshot), starts openraft, which
//! re-applies the committed log after the snapshot, and then either initializes the
//! cluster (a node alone, or the lowest id of the bootstrap peers, when its storage
//! is new), waits to be contacted, or asks to join. [`Node::shutdown`] stops the
//! proposer, then the server and Raft together, then closes the store.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::{Raft, RaftMetrics, ServerState, SnapshotPolicy};
use starling_storage::{NodeId, PeerNode, Storage, StorageHandle};
use tokio::sync::{broadcast, mpsc, oneshot, watch, OnceCell};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, info_span, warn, Instrument};

use crate::forward::ForwardHandler;
use crate::liveness::{self, Monitor};
use crate::membership;
use crate::network::{NetworkFactory, Peers};
use crate::proposer::{Counters, Proposal, Proposer};
use crate::shared::Core;
use crate::timeouts;
use crate::{ClusterError, ClusterEvent, NodeConfig, ProposalStats, StateMachine};

mod start;

use start::start;

/// Events a receiver of [`Node::events`] may fall behind by before it loses the
/// oldest.
const EVENT_CAPACITY: usize = 256;

/// Knobs beyond [`NodeConfig`]; the defaults suit a LAN cluster.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so that a follower a little
    /// behind catches up from the log rather than by a snapshot transfer.
    pub entries_kept_after_snapshot: u64,
    /// Bytes the log may hold, about: a snapshot is built once the entries after
    /// the last one hold half of this, and what a snapshot covers is purged down
    /// to a quarter of this. Bounds disk use and replay time whatever the size
    /// of entries (`compaction.rs`).
    pub max_log_bytes: u64,
    /// Not used: the proposer keeps one entry in flight. A batch that fails over
    /// to a new leader is retried as it was, and no later batch of the same node
    /// may commit before it, or the retry would be taken for a duplicate. Commands
    /// proposed meanwhile wait in the queue and form the next entry.
    pub max_batches_in_flight: usize,
    /// Commands that may wait for the proposer. When it is full, `propose` waits
    /// for room: callers are slowed down, never refused.
    pub queue_capacity: usize,
    /// Bytes of commands one Raft entry carries at most (a single larger
    /// command still gets an entry of its own). Keeps every entry, and so every
    /// AppendEntries, far below the gRPC message limit whatever the payloads,
    /// and small enough to be replicated within openraft's AppendEntries
    /// timeout, which is the heartbeat interval.
    pub max_batch_bytes: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            snapshot_after_entries: 20_000,
            entries_kept_after_snapshot: 10_000,
            max_log_bytes: 256 * 1024 * 1024,
            max_batches_in_flight: 1,
            queue_capacity: 65_536,
            max_batch_bytes: 4 * 1024 * 1024,
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
    /// Whether this node initialized the cluster when it started (its storage was
    /// new and it was alone, or the lowest id of the bootstrap peers).
    pub initialized_here: bool,
}

/// A running Raft node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    /// The proposer task holds the receiving end.
    queue: mpsc::Sender<Proposal>,
    counters: Arc<Counters>,
    storage: StorageHandle,
    /// The last log index on disk at start: the node serves once it applied it.
    replay_to: Option<u64>,
    initialized_here: bool,
    cluster_addr: SocketAddr,
    advertise: String,
    /// Tells the proposer, the monitor and the join task to stop.
    stop: watch::Sender<bool>,
    /// Tells the server to stop; sent together with Raft's shutdown.
    stop_server: watch::Sender<bool>,
    events: broadcast::Sender<ClusterEvent>,
    /// Taken by the one shutdown that runs; a short, synchronous section.
    tasks: Mutex<Option<Tasks>>,
    /// Set once shutdown has completed; later callers wait on the first one.
    stopped: OnceCell<()>,
}

struct Tasks {
    proposer: JoinHandle<()>,
    monitor: JoinHandle<()>,
    compactor: JoinHandle<()>,
    server: JoinHandle<()>,
}

/// Starts a [`Node`] with more than a config and a state machine.
pub struct NodeBuilder {
    config: NodeConfig,
    tuning: Tuning,
    state_machine: Arc<dyn StateMachine>,
    forward: Option<Arc<dyn ForwardHandler>>,
}

impl NodeBuilder {
    /// Non-default [`Tuning`].
    pub fn tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// Serves the forwarding streams of other nodes' [`crate::Forwarder`]s on the
    /// cluster listener, handing their frames to `handler`. Without one, peers'
    /// forwarding streams are refused (`Unimplemented`).
    pub fn forward_handler(mut self, handler: Arc<dyn ForwardHandler>) -> Self {
        self.forward = Some(handler);
        self
    }

    /// Starts the node; see [`Node::start`].
    pub async fn start(self) -> Result<Node, ClusterError> {
        let span = info_span!("node", id = self.config.node_id);
        start(self).instrument(span).await
    }
}

impl Node {
    /// Binds the cluster listener, opens (or creates) the node's storage under
    /// `config.data_dir`, restores the state machine from the last snapshot and the
    /// log, starts Raft, and then bootstraps or joins as `config` says. A new node
    /// with `join` set returns once it is a voter (or fails with `Unavailable`
    /// after a minute). It does not wait for a leader: see [`Node::wait_ready`].
    pub async fn start(
        config: NodeConfig,
        state_machine: Arc<dyn StateMachine>,
    ) -> Result<Node, ClusterError> {
        Node::builder(config, state_machine).start().await
    }

    /// [`Node::start`] with non-default [`Tuning`].
    pub async fn start_tuned(
        config: NodeConfig,
        tuning: Tuning,
        state_machine: Arc<dyn StateMachine>,
    ) -> Result<Node, ClusterError> {
        Node::builder(config, state_machine)
            .tuning(tuning)
            .start()
            .await
    }

    /// A builder for the less common options.
    pub fn builder(config: NodeConfig, state_machine: Arc<dyn StateMachine>) -> NodeBuilder {
        NodeBuilder {
            config,
            tuning: Tuning::default(),
            state_machine,
            forward: None,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.core.id
    }

    /// This run's incarnation, taken from storage at start.
    pub fn incarnation(&self) -> u64 {
        self.inner.storage.incarnation()
    }

    /// Takes a new incarnation from the same durable counter as
    /// [`Node::incarnation`], for a node that must come back as a new life
    /// without restarting (it was declared down while alive).
    pub async fn next_incarnation(&self) -> Result<u64, ClusterError> {
        let storage = self.inner.storage.clone();
        tokio::task::spawn_blocking(move || storage.next_incarnation())
            .await
            .map_err(|e| ClusterError::Storage(e.to_string()))?
            .map_err(|e| ClusterError::Storage(e.to_string()))
    }

    /// The members that this node, as leader, finds silent for longer than
    /// `node_down_after`, by id; empty on a node that does not lead. Read it
    /// again and again: a peer stays here for as long as it is silent, so that
    /// acting on it can be retried until it succeeds.
    pub fn silent_peers(&self) -> Vec<u64> {
        self.inner
            .core
            .silent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Bytes of the entries in this node's Raft log now.
    pub fn log_bytes(&self) -> u64 {
        self.inner.storage.log_bytes()
    }

    /// The address the cluster server is bound to (useful with port 0).
    pub fn cluster_addr(&self) -> SocketAddr {
        self.inner.cluster_addr
    }

    /// The address the other members dial to reach this node.
    pub fn advertise_addr(&self) -> &str {
        &self.inner.advertise
    }

    /// Commits one command, batched with the commands proposed concurrently on this
    /// node, and returns what [`StateMachine::apply`] returned for it. Works on any
    /// member: a follower sends its batches to the leader. When this returns `Ok`,
    /// the command is durable (fsynced) in the log of a quorum.
    ///
    /// Across a leader change the batch is sent again as it was, for up to
    /// `node_down_after`; the state machine host applies it once. After that, or at
    /// once when this node knows it has no quorum for that long, it fails with
    /// [`ClusterError::Unavailable`] (the command may still commit later).
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

    /// True when this node is in touch with a quorum: as leader, a quorum of voters
    /// acknowledged it within `node_down_after` (or it is the only voter); as
    /// follower or learner, it heard from a leader within `node_down_after`.
    pub fn has_quorum(&self) -> bool {
        let metrics = self.inner.core.raft.metrics();
        let quorum = liveness::has_quorum(&self.inner.core, &metrics.borrow());
        quorum
    }

    /// Whether this node heard, within `node_down_after`, from enough voters to
    /// form a majority with itself (a reply to one of its Raft calls, or a vote
    /// request): true for a member of a majority that is electing a leader,
    /// false for a node cut off from it.
    pub fn reaches_majority(&self) -> bool {
        let metrics = self.inner.core.raft.metrics();
        let reaches = liveness::reaches_majority(&self.inner.core, &metrics.borrow());
        reaches
    }

    /// [`Node::has_quorum`] as the liveness monitor last saw it, at most 100 ms
    /// ago. Cheap enough for every publish, and what every decision to serve
    /// uses ([`Node::is_ready`] included), so that they all agree.
    pub fn quorum_hint(&self) -> bool {
        self.inner
            .core
            .quorum
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// True when this node may serve clients: it has a quorum and has applied the
    /// log up to what it held at start.
    /// Why Raft stopped on its own, if it did: a storage error such as a full
    /// disk. The node cannot recover from it while it runs.
    pub fn fatal(&self) -> Option<String> {
        let metrics = self.inner.core.raft.metrics();
        let m = metrics.borrow();
        m.running_state.as_ref().err().map(ToString::to_string)
    }

    /// Resolves with the cause once Raft stops on its own ([`Node::fatal`]),
    /// woken by Raft's own metrics rather than polled.
    pub async fn wait_fatal(&self) -> String {
        let mut metrics = self.inner.core.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                // The metrics are gone with the core. A stop that was asked
                // for is no failure: nothing to report, ever.
                return match self.fatal() {
                    Some(fatal) => fatal,
                    None => std::future::pending().await,
                };
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        if *self.inner.stop.borrow() {
            return false;
        }
        let metrics = self.inner.core.raft.metrics();
        let m = metrics.borrow();
        self.quorum_hint() && self.replayed(&m)
    }

    fn replayed(&self, m: &RaftMetrics<NodeId, PeerNode>) -> bool {
        m.last_applied.map(|id| id.index) >= self.inner.replay_to
    }

    /// Waits until [`Node::is_ready`]; `Unavailable` if it is not within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let mut metrics = self.inner.core.raft.metrics();
        loop {
            if *self.inner.stop.borrow() {
                return Err(ClusterError::ShuttingDown);
            }
            if self.is_ready() {
                return Ok(());
            }
            // Readiness also depends on when a leader was last heard from, which
            // is not in the metrics: look again at least every monitor period.
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() {
                    return Err(ClusterError::ShuttingDown);
                },
                _ = tokio::time::sleep(timeouts::LIVENESS_CHECK_EVERY) => {}
                _ = tokio::time::sleep_until(deadline) => return Err(ClusterError::Unavailable),
            }
        }
    }

    /// Liveness and quorum events. The channel is bounded: a receiver that falls
    /// more than 256 events behind loses the oldest (`recv` reports `Lagged`), and
    /// should then read [`Node::status`], [`Node::members`] and
    /// [`Node::has_quorum`] afresh.
    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.inner.events.subscribe()
    }

    /// The members as this node knows them: (id, address, is a voter), by id.
    /// Non-voters are learners (a node joining, not yet caught up).
    pub fn members(&self) -> Vec<(u64, String, bool)> {
        let metrics = self.inner.core.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| (*id, node.grpc_addr.clone(), voters.contains(id)))
            .collect()
    }

    /// Removes this node from the cluster (its voters and learners), through the
    /// leader; a leader removes itself and steps down once that is committed. Ok
    /// if it is no member. Retries while there is no leader or another change is
    /// in progress, up to a minute (then `Unavailable`); `Membership` if the leader
    /// refuses (the last voter cannot leave). The node keeps running: shut it down
    /// afterwards.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        membership::leave(&self.inner.core, Instant::now() + timeouts::LEAVE).await
    }

    /// Removes member `node_id` (a dead one, say) from the cluster, through
    /// the leader, as [`Node::leave`] does for this node.
    pub async fn remove_member(&self, node_id: u64) -> Result<(), ClusterError> {
        membership::remove(&self.inner.core, node_id, Instant::now() + timeouts::LEAVE).await
    }

    /// Hands leadership to another voter, if this node leads. openraft 0.9
    /// has no transfer, and a follower refuses to vote while its leader's
    /// lease runs (an election timeout since it last heard from it). So the
    /// leader goes quiet instead: no heartbeats, no new writes (its own
    /// proposals and those relayed to it wait, then go to the next leader),
    /// and no election of its own; the followers' leases run out and one of
    /// them is elected, while this node still runs and follows it. Writes
    /// pause for about an election timeout, as when a leader dies, but
    /// nothing in flight is lost and no second election follows when this
    /// node stops.
    ///
    /// Returns the new leader, or `None` when this node did not lead (or is
    /// the only voter, which has no one to hand over to). With `stay`, the
    /// node takes part in elections again afterwards (a transfer); without,
    /// it never stands again in this run (a drain). `Unavailable` if no other
    /// leader appeared within `timeout`; this node then leads on.
    pub async fn step_down(
        &self,
        timeout: Duration,
        stay: bool,
    ) -> Result<Option<u64>, ClusterError> {
        let core = &self.inner.core;
        let config = core.raft.runtime_config();
        let mut metrics = core.raft.metrics();
        let (leading, voters) = {
            let m = metrics.borrow();
            let voters = m.membership_config.membership().voter_ids().count();
            (m.state == ServerState::Leader, voters)
        };
        if !stay {
            config.elect(false);
        }
        if !leading || voters < 2 {
            return Ok(None);
        }
        info!("stepping down as leader: writes pause until a follower is elected");
        core.stepping_down.store(true, Ordering::Relaxed);
        config.heartbeat(false);
        config.elect(false);
        let id = core.id;
        let elected = tokio::time::timeout(
            timeout,
            metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != id)),
        )
        .await;
        let outcome = match elected {
            Ok(Ok(m)) => {
                let leader = m.current_leader;
                info!(leader = ?leader, "stepped down: another node leads");
                Ok(leader)
            }
            Ok(Err(_)) => Err(ClusterError::ShuttingDown),
            Err(_) => {
                warn!(?timeout, "no other node was elected: this node leads on");
                Err(ClusterError::Unavailable)
            }
        };
        core.stepping_down.store(false, Ordering::Relaxed);
        config.heartbeat(true);
        if stay || outcome.is_err() {
            config.elect(true);
        }
        outcome
    }

    /// On the leader: for each other member, the index of the last log entry
    /// known replicated to it (`None`: nothing yet). Empty elsewhere.
    pub fn replication(&self) -> Vec<(u64, Option<u64>)> {
        let metrics = self.inner.core.raft.metrics();
        let m = metrics.borrow();
        m.replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.inner.core.id)
                    .map(|(id, log)| (*id, log.map(|l| l.index)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Snapshots stored since this node started, and the stored one's size.
    pub fn snapshot_stats(&self) -> (u64, u64) {
        (
            self.inner.storage.snapshots_stored(),
            self.inner.storage.snapshot_bytes(),
        )
    }

    /// How long the fsyncs of this node's Raft log and metadata took.
    pub fn fsync_times(&self) -> starling_storage::timing::TimingsSnapshot {
        self.inner.storage.flush_times()
    }

    /// How many batches carried how many commands: per bucket of
    /// [`crate::BATCH_BOUNDS`] (the last: more), and the commands in all.
    pub fn batch_sizes(&self) -> (Vec<u64>, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = &self.inner.counters;
        let buckets = counters
            .batch_sizes
            .iter()
            .map(|b| b.load(Relaxed))
            .collect();
        (buckets, counters.commands.load(Relaxed))
    }

    /// Counters of the proposal path since this node started.
    pub fn stats(&self) -> ProposalStats {
        use std::sync::atomic::Ordering::Relaxed;
        ProposalStats {
            commands: self.inner.counters.commands.load(Relaxed),
            batches: self.inner.counters.batches.load(Relaxed),
            log_flushes: self.inner.storage.log_flushes(),
        }
    }

    /// Where Raft stands on this node.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.inner.core.raft.metrics();
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
            initialized_here: self.inner.initialized_here,
        }
    }

    /// Builds a snapshot of everything applied so far and waits until it is stored,
    /// at most `timeout`. Snapshots are also built on their own (see [`Tuning`]).
    pub async fn snapshot(&self, timeout: Duration) -> Result<(), ClusterError> {
        let raft = &self.inner.core.raft;
        let applied = raft.metrics().borrow().last_applied.map(|id| id.index);
        let deadline = Instant::now() + timeout;
        loop {
            // openraft drops a trigger while a snapshot is being built; that
            // one may end below `applied`, so the trigger is repeated.
            raft.trigger()
                .snapshot()
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            let left = deadline.saturating_duration_since(Instant::now());
            let round = left.min(Duration::from_secs(1));
            match raft
                .wait(Some(round))
                .metrics(
                    move |m| m.snapshot.map(|id| id.index) >= applied,
                    "snapshot built",
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(openraft::metrics::WaitError::ShuttingDown) => {
                    return Err(ClusterError::ShuttingDown)
                }
                Err(openraft::metrics::WaitError::Timeout(..)) if left > round => {}
                Err(openraft::metrics::WaitError::Timeout(..)) => {
                    return Err(ClusterError::Unavailable)
                }
            }
        }
    }

    /// Stops the proposer, the cluster server and Raft, and flushes storage.
    ///
    /// Commands still queued fail with `ShuttingDown`; entries already submitted
    /// are waited for (a few seconds at most). Idempotent: every caller, on any
    /// clone, returns once the one shutdown has finished and the storage is closed.
    pub async fn shutdown(&self) {
        let inner = self.inner.clone();
        self.inner
            .stopped
            .get_or_init(|| async move { inner.stop().await })
            .instrument(info_span!("node", id = self.inner.core.id))
            .await;
    }
}

impl Inner {
    async fn stop(&self) {
        self.stop.send_replace(true);
        let tasks = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(tasks) = tasks else { return };
        if let Err(e) = tasks.proposer.await {
            warn!(error = %e, "proposer task failed");
        }
        if let Err(e) = tasks.monitor.await {
            warn!(error = %e, "monitor task failed");
        }
        if let Err(e) = tasks.compactor.await {
            warn!(error = %e, "log compaction task failed");
        }
        // The server and Raft stop together, so that no peer is answered by a
        // stopped Raft.
        self.stop_server.send_replace(true);
        if let Err(e) = self.core.raft.shutdown().await {
            warn!(error = %e, "raft core task failed");
        }
        let server = tasks.server;
        let abort = server.abort_handle();
        match tokio::time::timeout(timeouts::SERVER_STOP, server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_cancelled() => {}
            Ok(Err(e)) => warn!(error = %e, "cluster server task failed"),
            Err(_) => {
                warn!("cluster connections still open after shutdown; closing the listener");
                abort.abort();
            }
        }
        if let Err(e) = self.storage.flush() {
            warn!(error = %e, "final flush of raft storage failed");
        }
        // openraft drops the stores as its tasks end; wait for the files to close
        // so that the same directory can be opened again at once.
        if tokio::time::timeout(timeouts::CLOSE, self.storage.closed())
            .await
            .is_err()
        {
            warn!("raft storage still open after shutdown");
        }
        info!("raft node stopped");
    }
}
