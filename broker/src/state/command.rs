//! The commands the MQTT state machine applies, and its replies. They travel
//! through Raft as postcard bytes, so every field is plain data.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use starling_proto::mqtt::{QoS, SubOptions};

/// A message as the broker stores and routes it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    /// As published. Live deliveries clear it unless the subscription asked
    /// for Retain As Published [MQTT-3.3.1-9].
    pub retain: bool,
    /// The MQTT 5 properties that travel with the message; `None` for most.
    pub props: Option<Arc<MessageProps>>,
    /// When the message expires (MQTT 5 Message Expiry Interval), in
    /// milliseconds since the Unix epoch, fixed by the node that received it.
    pub expires_at: Option<u64>,
    /// When and how this node took the message in, for the delivery latency
    /// histogram. Local to the node: never serialized.
    #[serde(skip)]
    pub arrival: Arrival,
}

impl Message {
    /// A message without MQTT 5 properties.
    pub fn new(topic: Arc<str>, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            props: None,
            expires_at: None,
            arrival: Arrival::default(),
        }
    }

    /// Whether the message expired by `now` (milliseconds since the epoch).
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// How a message reached this node: the label of the delivery latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// From a client connected here.
    Local = 0,
    /// From another node, over a forwarding stream.
    Forwarded = 1,
    /// From the Raft log, when this node applied it (queued for persistent
    /// sessions, or a will).
    Replicated = 2,
}

impl Via {
    pub const ALL: [Via; 3] = [Via::Local, Via::Forwarded, Via::Replicated];

    pub fn label(self) -> &'static str {
        match self {
            Via::Local => "local",
            Via::Forwarded => "forwarded",
            Via::Replicated => "replicated",
        }
    }
}

/// When a message arrived on this node, and how; none for messages that are
/// not live traffic (retained messages sent at subscribe, what a snapshot
/// restored). It is no part of the message's identity: any two are equal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Arrival(Option<(std::time::Instant, Via)>);

impl Arrival {
    /// Arrived now, by `via`.
    pub fn now(via: Via) -> Arrival {
        Arrival(Some((std::time::Instant::now(), via)))
    }

    /// Stamped now by `via` unless it was stamped already.
    pub fn or_now(self, via: Via) -> Arrival {
        if self.0.is_some() {
            self
        } else {
            Arrival::now(via)
        }
    }

    /// How long ago it arrived, and how.
    pub fn elapsed(&self) -> Option<(std::time::Duration, Via)> {
        self.0.map(|(at, via)| (at.elapsed(), via))
    }
}

impl PartialEq for Arrival {
    fn eq(&self, _: &Arrival) -> bool {
        true
    }
}

impl Eq for Arrival {}

/// The MQTT 5 properties of a PUBLISH that the server passes on unchanged
/// (section 3.3.2.3): everything but Topic Alias, Subscription Identifier and
/// Message Expiry Interval, which are per hop.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageProps {
    pub payload_format: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// In the order the publisher sent them [MQTT-3.3.2-18].
    pub user_properties: Vec<(String, String)>,
}

/// One subscription of a session: its options and MQTT 5 Subscription
/// Identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub options: SubOptions,
    pub id: Option<u32>,
}

impl From<QoS> for Subscription {
    fn from(qos: QoS) -> Subscription {
        Subscription {
            options: qos.into(),
            id: None,
        }
    }
}

/// The Session Expiry Interval that never ends a session.
pub const NEVER_EXPIRES: u32 = u32::MAX;

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payloads are never logged.
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("props", &self.props)
            .field("expires_at", &self.expires_at)
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

/// What the admin API shows of a client's connection, recorded by its
/// Connect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    /// The client's address as its node saw it.
    pub address: String,
    /// The MQTT protocol level: 3 (3.1), 4 (3.1.1) or 5.
    pub protocol: u8,
    /// The keepalive in force, in seconds.
    pub keep_alive: u16,
    /// The user it authenticated as, if any.
    pub username: Option<String>,
    /// When it connected, on its node's clock (ms since the epoch).
    pub connected_at: u64,
}

/// The connection a session mutation comes from. Apply refuses it unless that
/// connection still owns the session: a command that a connection proposed
/// before it was taken over, or before its node was declared down, and that
/// commits only later, must not act for the session's new owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub client_id: Arc<str>,
    pub conn: ConnId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Client `client_id` is now connected through `conn`. A previous connection of
    /// the same client is taken over (its will published, its node closes it).
    Connect {
        client_id: Arc<str>,
        conn: ConnId,
        /// Discard any session of `client_id` (Clean Session / Clean Start).
        clean_start: bool,
        /// Seconds the session outlives its connection: 0 ends it with the
        /// connection, [`NEVER_EXPIRES`] never.
        session_expiry: u32,
        will: Option<Message>,
        /// Seconds between the connection's loss and its will (MQTT 5).
        will_delay: u32,
        /// The most messages the session's queue holds; further ones are
        /// dropped. Carried here, not read from a node's configuration, so that
        /// every node applies the same limit.
        max_queued_messages: u32,
        /// The most payload bytes the session's queue holds; likewise.
        max_queued_bytes: u64,
        /// For the admin API.
        info: ConnInfo,
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
        /// A new Session Expiry Interval from an MQTT 5 DISCONNECT.
        session_expiry: Option<u32>,
        /// When the connection ended, on its node's clock (ms since the
        /// epoch): Session Expiry and Will Delay count from here, or from the
        /// replicated clock if that is later.
        at: u64,
        /// Seconds the client has to come back, when its node drains: the
        /// session is kept and its will held back at least this long, and a
        /// new connection for the client in that time discards the will
        /// (whatever its Clean Start). 0: an ordinary end.
        will_grace: u32,
    },
    /// Adds or replaces subscriptions (filters already validated).
    Subscribe {
        client_id: Arc<str>,
        conn: ConnId,
        filters: Vec<(String, Subscription)>,
    },
    Unsubscribe {
        client_id: Arc<str>,
        conn: ConnId,
        filters: Vec<String>,
    },
    /// A message that must be committed before it is acknowledged: it is
    /// retained, or reaches a persistent session at QoS 1/2, or is a QoS 2
    /// message of a persistent publisher.
    Publish {
        message: Message,
        /// The publishing connection; refused if it no longer owns its session.
        from: Owner,
        /// For a persistent publisher's QoS 2 message: its packet id, which
        /// awaits PUBREL in the session, so that a resend is not published twice.
        qos2_packet_id: Option<u16>,
        /// Every node hands the committed message to its own subscribers that
        /// read no queue. False when the publisher's node already sent them
        /// their copies (QoS 0, which never waits on a commit).
        deliver: bool,
        /// For a retained message: how many retained messages and bytes the
        /// cluster may hold, from the publisher's node's configuration, so
        /// that every node applies the same limit.
        retained_limit: Option<RetainedLimit>,
    },
    /// PUBREL from a persistent publisher: forget the inbound QoS 2 packet id.
    Release { from: Owner, packet_id: u16 },
    /// The subscriber acknowledged queued messages (PUBACK, or PUBCOMP for QoS 2):
    /// they leave its queue.
    Ack { from: Owner, seqs: Vec<u64> },
    /// PUBREC from the subscriber for a queued QoS 2 message: from now on only
    /// PUBREL is sent for it.
    Received { from: Owner, seq: u64 },
    /// The leader's clock, in milliseconds since the Unix epoch: the one clock
    /// apply reads. Sessions whose expiry passed end, delayed wills fall due,
    /// and expired retained and queued messages are dropped, on every node at
    /// the same point of the log. The clock never goes back.
    Tick { now: u64 },
    /// A node started with a new incarnation: connections it held in earlier
    /// incarnations are gone, as if each had been lost.
    NodeStarted { node: u64, incarnation: u64 },
    /// The leader declared incarnation `incarnation` of `node` down: every
    /// connection it held is lost (wills published once, here), and commands
    /// from its connections are refused from now on. Ignored when the node has
    /// started a newer incarnation meanwhile: a late declaration never fences a
    /// node that came back. Ignored too unless the entry carrying it is of
    /// `term`, the term in which its proposer led and found the node silent: a
    /// deposed leader that wakes up finds everybody silent, and its retries,
    /// appended by the next leader, must not fence the healthy majority.
    NodeDown {
        node: u64,
        incarnation: u64,
        term: u64,
    },
    /// Every node reads its password and ACL files again.
    ReloadAuth,
    /// An operator disconnects `client_id`: its node closes the connection
    /// (MQTT 5: DISCONNECT 0x98), as a lost one. Replies `Found`.
    Kick { client_id: Arc<str> },
    /// An operator removes the session of `client_id` and its queue. Replies
    /// `Found`, or `InUse` while a connection holds it.
    DeleteSession { client_id: Arc<str> },
    /// A message the broker itself publishes (the admin API): stored,
    /// queued and delivered as a client's committed message.
    BrokerPublish { message: Message },
    /// An operator removes the retained message of `topic`, delivering
    /// nothing. Replies `Found`.
    ClearRetained { topic: Arc<str> },
    /// An operator asks node `node` to drain and stop, as on SIGTERM. Only
    /// its incarnation current when this applies acts on it, so a restarted
    /// node replaying its log does not drain again.
    DrainNode { node: u64 },
    /// An operator asks node `node`, the leader when asked, to hand
    /// leadership to another voter. As for `DrainNode`, only its current
    /// incarnation acts on it. Replies `Found` (false: no such live node).
    StepDown { node: u64 },
}

/// The most retained messages, and bytes of them, the cluster keeps; 0: no
/// limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedLimit {
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Connected {
        session_present: bool,
        /// The connection that was taken over, if any.
        previous: Option<ConnId>,
    },
    Disconnected {
        /// How many wills the command published.
        wills: u32,
    },
    /// The command named a session that the connection no longer owns.
    NotOwner,
    /// The command came from, or named, a node incarnation that is not the
    /// current one (superseded or declared down).
    Fenced,
    Done,
    /// For each filter of a Subscribe or Unsubscribe: whether the session had
    /// a subscription to it before.
    Existed(Vec<bool>),
    Published {
        /// The message was a repeat of an inbound QoS 2 packet id still awaiting
        /// PUBREL: it was not published again.
        duplicate: bool,
    },
    /// Whether the client, session or retained message named existed.
    Found(bool),
    /// The session is held by a connection.
    InUse,
    /// The retained message would have taken the cluster's retained
    /// messages over their limit: it was neither stored nor published.
    RetainedFull,
}

/// What applying a command asks of each node, for its own clients: apply only
/// changes the replicated state; these are carried out afterwards by every node
/// from its own applied log, so nothing depends on one node's reply arriving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A committed message (a publish, or a will) for this node's subscribers
    /// that read no queue; `publisher` is not sent it where it subscribed
    /// with No Local.
    Deliver {
        message: Message,
        publisher: Option<Arc<str>>,
        /// The members of shared subscriptions chosen for it, by every node
        /// alike.
        shared: Vec<super::Target>,
    },
    /// `conn` now owns the session of `client_id`: the node holding `conn`
    /// routes the client's deliveries to it. Only a committed Connect makes a
    /// connection the way to reach a client, so a connection that loses a race
    /// for a client id can never displace or remove the winner.
    Attach { client_id: Arc<str>, conn: ConnId },
    /// The replicated queue of this client grew.
    Wake(Arc<str>),
    /// This connection lost its session to another one: its node closes it.
    Kick(ConnId),
    /// This incarnation of this node was declared down.
    NodeDown { node: u64, incarnation: u64 },
    /// Read the password and ACL files again.
    ReloadAuth,
    /// An operator disconnects this connection.
    AdminKick(ConnId),
    /// That incarnation of that node drains and stops.
    Drain { node: u64, incarnation: u64 },
    /// That incarnation of that node hands Raft leadership over, if it leads.
    StepDown { node: u64, incarnation: u64 },
}
