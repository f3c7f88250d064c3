//! The Raft type configuration shared by storage and cluster: what one log entry
//! carries, what applying it returns, and how a member is addressed.
//!
//! These types are openraft's vocabulary. They stay inside `storage` and `cluster`;
//! the broker only ever sees opaque command bytes and replies.

use serde::{Deserialize, Serialize};
use std::fmt;

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
    #[serde(with = "byte_strings")]
    pub commands: Vec<Vec<u8>>,
}

/// Commands as byte strings rather than sequences of `u8`: the same bytes in
/// postcard (a length, then the bytes), written and read in one copy instead
/// of one call per byte, which made large entries too slow to replicate
/// within a heartbeat in unoptimised builds.
mod byte_strings {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserializer, Serializer};

    struct Bytes<'a>(&'a [u8]);

    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    pub(super) fn serialize<S: Serializer>(
        commands: &[Vec<u8>],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(commands.len()))?;
        for command in commands {
            seq.serialize_element(&Bytes(command))?;
        }
        seq.end()
    }

    struct ByteBuf(Vec<u8>);

    impl<'de> serde::Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_byte_buf(ByteBufVisitor)
        }
    }

    struct ByteBufVisitor;

    impl<'de> Visitor<'de> for ByteBufVisitor {
        type Value = ByteBuf;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
            Ok(ByteBuf(v.to_vec()))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
            Ok(ByteBuf(v))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(byte) = seq.next_element::<u8>()? {
                bytes.push(byte);
            }
            Ok(ByteBuf(bytes))
        }
    }

    struct CommandsVisitor;

    impl<'de> Visitor<'de> for CommandsVisitor {
        type Value = Vec<Vec<u8>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence of byte strings")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Vec<u8>>, A::Error> {
            // The hint comes from the peer: it only sizes a first allocation.
            let mut commands = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(ByteBuf(command)) = seq.next_element()? {
                commands.push(command);
            }
            Ok(commands)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        deserializer.deserialize_seq(CommandsVisitor)
    }

    #[cfg(test)]
    mod tests {
        /// The same bytes as the plain `Vec<Vec<u8>>` encoding, so logs and
        /// snapshots written before still read.
        #[test]
        fn postcard_bytes_are_unchanged() {
            #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
            struct Plain(Vec<Vec<u8>>);
            #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
            struct Fast(#[serde(with = "super")] Vec<Vec<u8>>);
            let commands = vec![vec![], vec![1, 2, 3], vec![0xff; 300]];
            let plain = postcard::to_allocvec(&Plain(commands.clone())).expect("encode");
            let fast = postcard::to_allocvec(&Fast(commands.clone())).expect("encode");
            assert_eq!(plain, fast);
            let back: Fast = postcard::from_bytes(&plain).expect("decode");
            assert_eq!(back.0, commands);
        }
    }
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
        SnapshotData = tokio::fs::File,
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
