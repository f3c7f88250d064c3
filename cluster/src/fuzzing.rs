//! Entry points for the fuzz targets in `fuzz/`: every payload a peer puts in the
//! envelopes of `cluster.proto`, decoded as this node decodes it. Not an API:
//! the types stay private, and nothing here is used by the node itself.

use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use starling_storage::{NodeId, Request, TypeConfig};

use crate::wire::{
    self, JoinRequest, LeaveRequest, MembershipResult, ProposeResult, SnapshotHeader,
};

/// The payload kinds, in the order [`decode_payload`] numbers them.
pub const PAYLOAD_KINDS: u8 = 10;

/// Decodes `data` as payload kind `kind % PAYLOAD_KINDS` of an envelope of
/// `version`, as the receiving end does. A payload that decodes is encoded
/// again, and that must decode too. `Err` is the decoder's refusal.
pub fn decode_payload(kind: u8, version: u32, data: &[u8]) -> Result<(), String> {
    match kind % PAYLOAD_KINDS {
        // What the server reads (server.rs).
        0 => round_trip::<AppendEntriesRequest<TypeConfig>>(version, data),
        1 => round_trip::<VoteRequest<NodeId>>(version, data),
        2 => round_trip::<SnapshotHeader>(version, data),
        3 => round_trip::<Request>(version, data),
        4 => round_trip::<JoinRequest>(version, data),
        5 => round_trip::<LeaveRequest>(version, data),
        // What the client reads in replies (network.rs).
        6 => round_trip::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(version, data),
        7 => round_trip::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(version, data),
        8 => round_trip::<Result<SnapshotResponse<NodeId>, Fatal<NodeId>>>(version, data),
        _ => {
            round_trip::<ProposeResult>(version, data)?;
            round_trip::<MembershipResult>(version, data)
        }
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(version: u32, data: &[u8]) -> Result<(), String> {
    let value: T = wire::decode(version, data).map_err(|e| e.to_string())?;
    let again = wire::encode(&value).expect("a decoded payload encodes");
    wire::decode::<T>(wire::VERSION, &again).expect("an encoded payload decodes");
    Ok(())
}

/// The envelope version this build speaks.
pub const VERSION: u32 = wire::VERSION;
