//! The Raft type configuration shared by storage and cluster: what one log entry
//! carries, what applying it returns, and how a member is addressed.
//!
//! These types are openraft's vocabulary. They stay inside `storage` and `cluster`;
//! the broker only ever sees opaque command bytes and replies.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Raft node ids are plain integers, unique in a cluster.
pub type NodeId = u64;

/// What one Raft member is reachable at. Stored in the membership config, so every
/// node learns its peers' addresses from the log itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// The peer's cluster gRPC address, `host:port`.
    pub grpc_addr: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.grpc_addr)
    }
}

/// The payload of one Raft entry: a batch of opaque commands from one proposer.
///
/// `(origin, incarnation, first_seq + i)` names command `i` uniquely and increases
/// with every command the same proposer submits, so the state machine can drop a
/// command that reaches the log twice (a retry after a leader change).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Node id of the proposer.
    pub origin: NodeId,
    /// Grows at every start of the proposer, so sequence numbers may restart at 0.
    pub incarnation: u64,
    /// Sequence number of `commands[0]`; the others follow consecutively.
    pub first_seq: u64,
    /// The commands, applied in this order.
    pub commands: Vec<Vec<u8>>,
}

// Commands may hold client payloads; logs show only their shape.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("origin", &self.origin)
            .field("incarnation", &self.incarnation)
            .field("first_seq", &self.first_seq)
            .field("commands", &self.commands.len())
            .finish()
    }
}

/// The result of applying one entry: one reply per command of its [`Request`]
/// (empty for a duplicate), and no replies for blank or membership entries.
pub type Response = Vec<Vec<u8>>;

openraft::declare_raft_types!(
    /// Starling's Raft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A log entry of [`TypeConfig`].
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id of [`TypeConfig`].
pub type LogId = openraft::LogId<NodeId>;
/// The error every storage method returns to openraft.
pub type StorageError = openraft::StorageError<NodeId>;
/// Membership as stored with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<NodeId, PeerNode>;
/// Snapshot metadata of [`TypeConfig`].
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, PeerNode>;
