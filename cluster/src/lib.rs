//! An openraft node that replicates a state machine its user supplies.
//! (Interface fixed; implementation in progress.)

use std::path::PathBuf;
use std::sync::Arc;

pub use starling_storage::StateMachine;

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster.
    pub node_id: u64,
    /// Where the Raft log, snapshots and metadata live.
    pub data_dir: PathBuf,
    /// The most commands one Raft entry may carry.
    pub max_batch: usize,
}

/// Counters of the proposal path, to see how well batching works.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProposalStats {
    /// Commands proposed through [`Node::propose`].
    pub commands: u64,
    /// Raft entries those commands were carried in.
    pub batches: u64,
    /// fsyncs of the Raft log.
    pub log_flushes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("no leader or no quorum")]
    Unavailable,
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("raft: {0}")]
    Raft(String),
}

/// A running Raft node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    _sm: Arc<dyn StateMachine>,
}

impl Node {
    /// Opens (or creates) the node's storage under `config.data_dir`, restores the
    /// state machine from the last snapshot and the log, and starts Raft. A node
    /// whose storage is new initializes a one-member cluster.
    pub async fn start(
        _config: NodeConfig,
        state_machine: Arc<dyn StateMachine>,
    ) -> Result<Node, ClusterError> {
        Ok(Node { _sm: state_machine })
    }

    /// Commits one command, batched with the commands proposed concurrently, and
    /// returns what [`StateMachine::apply`] returned for it. When this returns `Ok`,
    /// the command is durable (fsynced) in the log of a quorum.
    pub async fn propose(&self, _command: Vec<u8>) -> Result<Vec<u8>, ClusterError> {
        Err(ClusterError::Unavailable)
    }

    /// True when this node has a leader and has applied the log up to what it knew
    /// at start: it may serve clients.
    pub fn is_ready(&self) -> bool {
        false
    }

    pub fn stats(&self) -> ProposalStats {
        ProposalStats::default()
    }

    /// Stops Raft and flushes storage.
    pub async fn shutdown(&self) {}
}
