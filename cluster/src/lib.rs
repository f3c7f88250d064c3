//! An openraft node that replicates a state machine its user supplies.
//!
//! The user hands [`Node::start`] a [`StateMachine`] and proposes opaque commands
//! with [`Node::propose`]; concurrent proposals are coalesced into few Raft entries
//! and few fsyncs. No openraft type appears in this crate's public API.

use std::path::PathBuf;

mod network;
mod node;
mod proposer;

pub use node::{Node, RaftStatus, Tuning};
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
    /// The Raft storage could not be opened or failed.
    #[error("storage: {0}")]
    Storage(String),
    /// This node is not the leader, or it lost leadership while the command was in
    /// flight. In the second case the command may still commit later.
    #[error("no leader or no quorum")]
    Unavailable,
    /// [`Node::shutdown`] was called (or Raft stopped) before the command committed.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Raft failed; the node must be restarted.
    #[error("raft: {0}")]
    Raft(String),
}
