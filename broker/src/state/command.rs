//! The commands the MQTT state machine applies, and its replies. They travel
//! through Raft as postcard bytes, so every field is plain data.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use starling_proto::mqtt::QoS;

/// A message as the broker stores and routes it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payloads are never logged.
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .finish()
    }
}

/// One connection, cluster-wide: the node that holds it, the node's incarnation
/// (incremented at every start, which fences connections of a previous run) and a
/// number local to that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnId {
    pub node: u64,
    pub incarnation: u64,
    pub local: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Client `client_id` is now connected through `conn`. A previous connection of
    /// the same client is taken over (its will published, its node closes it).
    Connect {
        client_id: Arc<str>,
        conn: ConnId,
        clean_session: bool,
        will: Option<Message>,
    },
    /// Connection `conn` of `client_id` ended. `publish_will` is false only after
    /// a DISCONNECT packet. Ignored if the session is owned by another connection.
    Disconnect {
        client_id: Arc<str>,
        conn: ConnId,
        publish_will: bool,
        /// Queued messages below this sequence number were sent on this
        /// connection: a resumed session sends them again with DUP set. `None`
        /// when it sent none (it ended before CONNACK). The session's record
        /// only grows: an earlier connection may have sent more.
        sent_below: Option<u64>,
    },
    /// Adds or replaces subscriptions (filters already validated).
    Subscribe {
        client_id: Arc<str>,
        conn: ConnId,
        filters: Vec<(String, QoS)>,
    },
    Unsubscribe {
        client_id: Arc<str>,
        conn: ConnId,
        filters: Vec<String>,
    },
    /// A message that must be committed before it is acknowledged: it is retained,
    /// reaches a persistent session at QoS 1/2, or is a QoS 2 message of a
    /// persistent publisher (`inbound` = (publisher, packet id) awaiting PUBREL).
    Publish {
        message: Message,
        inbound: Option<(Arc<str>, u16)>,
    },
    /// PUBREL from a persistent publisher: forget the inbound QoS 2 packet id.
    Release { client_id: Arc<str>, packet_id: u16 },
    /// The subscriber acknowledged queued messages (PUBACK, or PUBCOMP for QoS 2):
    /// they leave its queue.
    Ack { client_id: Arc<str>, seqs: Vec<u64> },
    /// PUBREC from the subscriber for a queued QoS 2 message: from now on only
    /// PUBREL is sent for it.
    Received { client_id: Arc<str>, seq: u64 },
    /// A node started with a new incarnation: connections it held in earlier
    /// incarnations are gone, as if each had been lost.
    NodeStarted { node: u64, incarnation: u64 },
    /// The leader declared `node` down: every connection it held is lost (wills
    /// published once, here), and its current incarnation is fenced: commands
    /// from its connections are refused until it starts a new incarnation.
    NodeDown { node: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Connected {
        session_present: bool,
        /// The connection that was taken over, if any.
        previous: Option<ConnId>,
        /// Wills published by this command, for direct delivery to the
        /// subscribers that do not read a replicated queue.
        wills: Vec<Message>,
    },
    Disconnected {
        wills: Vec<Message>,
    },
    /// The command named a session that `conn` no longer owns.
    NotOwner,
    /// `conn` belongs to a node incarnation that was declared down.
    Fenced,
    Done,
    Published {
        /// The message was a repeat of an inbound QoS 2 packet id still awaiting
        /// PUBREL: it was not published again.
        duplicate: bool,
    },
}
