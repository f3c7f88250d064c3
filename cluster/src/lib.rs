//! An openraft node that replicates a state machine its user supplies.
//!
//! The user hands [`Node::start`] a [`StateMachine`] and proposes opaque commands
//! with [`Node::propose`] on any member; concurrent proposals are coalesced into few
//! Raft entries and few fsyncs, and a follower passes its batches to the leader.
//! Members talk gRPC to each other ([`NodeConfig::listen`]); the same server carries
//! the forwarding streams of [`Forwarder`]. No openraft type appears in this
//! crate's public API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod compaction;
mod forward;
#[doc(hidden)]
pub mod fuzzing;
mod liveness;
mod membership;
mod network;
mod node;
mod proposer;
mod server;
mod shared;
mod timeouts;
mod tls;
mod wire;

pub use forward::{
    forward_service, ForwardError, ForwardHandler, ForwardStats, Forwarder, Hold, PeerStats,
    DEFAULT_BUFFER_BYTES, MAX_FRAME_BYTES,
};
pub use network::source_for;
pub use node::{Node, NodeBuilder, RaftStatus, Tuning};
pub use proposer::BATCH_BOUNDS;
pub use starling_storage::{SnapshotEncoder, StateMachine};
pub use tls::{ClusterTls, Dialer};

/// The cluster gRPC port of [`NodeConfig::default`].
pub const DEFAULT_CLUSTER_PORT: u16 = 7946;

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster and never reused by another node.
    pub node_id: u64,
    /// Where the Raft log, snapshots and metadata live.
    pub data_dir: PathBuf,
    /// The most commands one Raft entry may carry.
    pub max_batch: usize,
    /// Where the cluster gRPC server listens (Raft, proposals from followers,
    /// membership requests, forwarded publishes). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// What the other members dial to reach this node (`host:port`). `None`: the
    /// address the server is bound to, which only suits a single host unless
    /// `listen` names a routable address.
    pub advertise: Option<String>,
    /// The bootstrap members, node id -> `host:port`, the same on every node and
    /// including this one. Empty: a cluster of this node alone (unless `join`).
    /// Only the node with the lowest id initializes the cluster, once, when its
    /// storage is new; the others wait for it to contact them.
    pub peers: BTreeMap<u64, String>,
    /// The `host:port` of any member of a running cluster to ask for admission as a
    /// voter. Asked at every start; a node that already is a voter is told so.
    pub join: Option<String>,
    /// How long a member may be silent before it is reported down
    /// ([`ClusterEvent::PeerDown`]), and how long without a quorum before this node
    /// reports it has none ([`Node::has_quorum`]). Also how long a proposal is
    /// retried across leader changes before it fails with `Unavailable`.
    pub node_down_after: Duration,
    /// Mutual TLS on the cluster port; `None`: plaintext (a warning is logged
    /// when the port listens beyond loopback).
    pub tls: Option<ClusterTls>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            data_dir: PathBuf::from("data"),
            max_batch: 4096,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_CLUSTER_PORT)),
            advertise: None,
            peers: BTreeMap::new(),
            join: None,
            node_down_after: Duration::from_secs(3),
            tls: None,
        }
    }
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

/// What the cluster tells its user, from [`Node::events`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterEvent {
    /// Seen by the leader only: `node` (a voter or learner) sent no successful
    /// Raft reply for `node_down_after`. Sent once per outage. A new leader judges
    /// afresh, counting from when it became leader.
    PeerDown { node: u64 },
    /// Seen by the leader only: a node reported down answers again.
    PeerUp { node: u64 },
    /// This node no longer has a quorum (see [`Node::has_quorum`]).
    QuorumLost,
    /// This node has a quorum again; also sent the first time it has one.
    QuorumRegained,
    /// The membership (voters, learners or their addresses) changed; read
    /// [`Node::members`].
    MembershipChanged,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Raft storage could not be opened or failed.
    #[error("storage: {0}")]
    Storage(String),
    /// No leader could take the command within `node_down_after`, or this node has
    /// no quorum. The command may still commit later; proposing it again is safe
    /// only if applying it twice is.
    #[error("no leader or no quorum")]
    Unavailable,
    /// [`Node::shutdown`] was called (or Raft stopped) before the command committed.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Raft failed; the node must be restarted.
    #[error("raft: {0}")]
    Raft(String),
    /// The cluster gRPC server could not start.
    #[error("cluster listener on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The configuration cannot work (e.g. `peers` without this node).
    #[error("config: {0}")]
    Config(String),
    /// The leader refused a membership change (e.g. another one is in progress, or
    /// it would leave no voter).
    #[error("membership change refused: {0}")]
    Membership(String),
}
