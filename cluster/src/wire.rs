//! The payloads inside the gRPC envelopes of `cluster.proto`: postcard-encoded
//! openraft messages and our own small requests, each envelope stamped with
//! [`VERSION`] so that a member running an incompatible build is refused rather
//! than misread.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use starling_storage::NodeId;
use tonic::Status;

/// Bumped whenever any payload below, openraft's own messages, or the
/// application's commands and forwarded frames inside them change shape: 2
/// since the MQTT state machine's commands carry MQTT 5's fields.
pub(crate) const VERSION: u32 = 2;

/// The gRPC message size limit of both ends. Log reads are capped well below it;
/// a single very large entry is the only thing that can come near.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// The most bytes a received snapshot may have in all: a peer that streams
/// without end is refused before it exhausts this node's memory.
pub(crate) const MAX_SNAPSHOT_BYTES: usize = 8 << 30;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("peer speaks version {0}, this node {VERSION}")]
    Version(u32),
    #[error("undecodable payload: {0}")]
    Decode(postcard::Error),
    #[error("unencodable payload: {0}")]
    Encode(postcard::Error),
}

impl From<WireError> for Status {
    fn from(e: WireError) -> Status {
        match e {
            WireError::Version(_) => Status::failed_precondition(e.to_string()),
            WireError::Decode(_) => Status::invalid_argument(e.to_string()),
            WireError::Encode(_) => Status::internal(e.to_string()),
        }
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, WireError> {
    postcard::to_stdvec(value)
        .map(Bytes::from)
        .map_err(WireError::Encode)
}

/// Decodes the payload of an envelope of version `version`.
pub(crate) fn decode<T: DeserializeOwned>(version: u32, data: &[u8]) -> Result<T, WireError> {
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    postcard::from_bytes(data).map_err(WireError::Decode)
}

/// Why the leader (or the member asked) did not carry out a request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum Refused {
    /// The node asked is not the leader; `leader` is the one it knows of.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Raft is stopping on the node asked.
    #[error("raft is stopping")]
    Stopping,
    /// Not now: another membership change is in progress, or a step is still
    /// running. Worth retrying.
    #[error("busy: {0}")]
    Busy(String),
    /// The leader refused, for a reason a retry will not change by itself.
    #[error("{0}")]
    Failed(String),
}

/// The reply to a forwarded proposal: what applying the batch returned.
pub(crate) type ProposeResult = Result<starling_storage::Response, Refused>;

/// Asks for `node_id` to become a voter, reachable at `addr`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JoinRequest {
    pub(crate) node_id: NodeId,
    pub(crate) addr: String,
    /// Set by the member that passed the request on to the leader; a request is
    /// passed on once at most.
    pub(crate) relayed: bool,
}

/// Asks for `node_id` to be removed from the membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LeaveRequest {
    pub(crate) node_id: NodeId,
    pub(crate) relayed: bool,
}

pub(crate) type MembershipResult = Result<(), Refused>;

/// The first chunk of a snapshot stream: whose snapshot, and of what.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotHeader {
    pub(crate) vote: openraft::Vote<NodeId>,
    pub(crate) meta: starling_storage::types::SnapshotMeta,
}
