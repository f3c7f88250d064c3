//! The session driven directly: bytes in, bytes and actions out, with no
//! socket, no process and no cluster. The node it runs on is a [`Fake`] view.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use starling_proto::mqtt::{
    self, Ack, ConnAck, Connect, LastWill, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, SubAck, Subscribe,
};

use super::{Action, End, Event, Session, View, Wait};
use crate::config::MqttConfig;
use crate::metrics::Metrics;
use crate::registry::{Delivery, Stop};
use crate::state::{Command, ConnId, Message, Queued, Reply, Target};

mod auth;
mod from_client;
mod identity;
mod to_client;
mod v5;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// The node a session runs on, as the session sees it.
struct Fake {
    quorum: bool,
    fenced: bool,
    config: MqttConfig,
    metrics: Metrics,
    /// Whom every publish reaches.
    targets: Vec<Target>,
    /// The queue of the (one) persistent client.
    queue: BTreeMap<u64, Queued>,
    sent_below: u64,
    retained: Vec<Message>,
    /// The wall clock, in ms since the epoch.
    now: u64,
    authenticators: crate::auth::Authenticators,
    /// The password file, if the node has one.
    passwords: Option<Arc<crate::auth::PasswordFile>>,
    allow_anonymous: bool,
    acl: Option<Arc<crate::auth::acl::AclFile>>,
    /// How many subscriptions the client's session holds already.
    subscriptions: usize,
}

impl View for Fake {
    fn has_quorum(&self) -> bool {
        self.quorum
    }
    fn is_fenced(&self) -> bool {
        self.fenced
    }
    fn config(&self) -> &MqttConfig {
        &self.config
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn targets(&self, _topic: &str, qos: QoS, _publisher: Option<&str>) -> Vec<Target> {
        self.targets
            .iter()
            .map(|t| Target {
                qos: t.qos.min(qos),
                ..t.clone()
            })
            .collect()
    }
    fn queue_head(&self, _client_id: &str) -> Option<u64> {
        self.queue.keys().next().copied()
    }
    fn sent_below(&self, _client_id: &str) -> u64 {
        self.sent_below
    }
    fn queued(&self, _client_id: &str, from: u64, max: usize) -> Vec<(u64, Queued)> {
        self.queue
            .range(from..)
            .take(max)
            .map(|(seq, q)| (*seq, q.clone()))
            .collect()
    }
    fn retained_matching(&self, _filter: &str) -> Vec<Message> {
        self.retained.clone()
    }
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn authenticator(&self, method: &str) -> Option<&dyn crate::auth::Authenticator> {
        self.authenticators.find(method)
    }
    fn passwords(&self) -> Option<Arc<crate::auth::PasswordFile>> {
        self.passwords.clone()
    }
    fn allow_anonymous(&self) -> bool {
        self.allow_anonymous
    }
    fn subscription_count(&self, _client_id: &str) -> usize {
        self.subscriptions
    }
    fn has_subscription(&self, _client_id: &str, _filter: &str) -> bool {
        false
    }
    fn acl(&self) -> Option<Arc<crate::auth::acl::AclFile>> {
        self.acl.clone()
    }
}

/// A session on a [`Fake`] node, seen from its client.
struct Client {
    session: Session,
    node: Fake,
    /// Received and not yet looked at.
    inbox: Vec<Packet>,
    /// The protocol the client speaks.
    version: ProtocolVersion,
}

fn conn() -> ConnId {
    ConnId {
        node: 1,
        incarnation: 1,
        local: 7,
    }
}

fn message(topic: &str, qos: QoS) -> Message {
    Message::new(Arc::from(topic), Bytes::from_static(b"payload"), qos, false)
}

fn publish(id: u16, qos: QoS) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Arc::from("t"),
        packet_id: id,
        payload: Bytes::from_static(b"payload"),
        properties: Properties::default().into(),
    })
}

fn queued(qos: QoS, released: bool) -> Queued {
    Queued {
        message: Arc::new(message("t", qos)),
        qos,
        released,
        retain: false,
        ids: Vec::new(),
    }
}

impl Client {
    fn new() -> Client {
        Client {
            session: Session::new(conn(), SocketAddr::from(([127, 0, 0, 1], 50000))),
            node: Fake {
                quorum: true,
                fenced: false,
                config: MqttConfig::default(),
                metrics: Metrics::unregistered(),
                targets: Vec::new(),
                queue: BTreeMap::new(),
                sent_below: 0,
                retained: Vec::new(),
                now: 1_000_000,
                authenticators: crate::auth::Authenticators::new(),
                passwords: None,
                allow_anonymous: true,
                acl: None,
                subscriptions: 0,
            },
            inbox: Vec::new(),
            version: V311,
        }
    }

    /// A client that speaks MQTT 5.
    fn v5() -> Client {
        Client {
            version: ProtocolVersion::V5,
            ..Client::new()
        }
    }

    /// The client sends `packet`, encoded as the client's library would.
    fn send(&mut self, packet: Packet) {
        let mut bytes = BytesMut::new();
        mqtt::encode(&packet, self.version, &mut bytes).expect("encodable");
        self.send_bytes(bytes);
    }

    fn send_bytes(&mut self, mut bytes: BytesMut) {
        self.session.input(&mut bytes, &self.node);
        assert!(
            bytes.is_empty() || self.session.end().is_some(),
            "a whole packet is consumed"
        );
    }

    fn event(&mut self, event: Event) {
        self.session.handle(event, &self.node);
    }

    /// What the client receives, decoded.
    fn received(&mut self) -> Vec<Packet> {
        let mut bytes = BytesMut::from(self.session.transmit());
        self.session.transmitted();
        let mut packets = std::mem::take(&mut self.inbox);
        while let Some(packet) =
            mqtt::decode(&mut bytes, usize::MAX, Some(self.version)).expect("valid")
        {
            packets.push(packet);
        }
        assert!(bytes.is_empty(), "only whole packets are sent");
        packets
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.session.poll_action()).collect()
    }

    /// The one proposal the session asked for, with its reply handed back.
    fn commit(&mut self, reply: Result<Reply, String>) -> (Command, Wait) {
        let mut actions = self.actions();
        assert_eq!(actions.len(), 1, "one proposal expected: {actions:?}");
        let Action::Propose {
            command,
            wait,
            then,
        } = actions.remove(0)
        else {
            panic!("a proposal expected: {actions:?}");
        };
        self.event(Event::Committed { then, reply });
        (command, wait)
    }

    /// CONNECT, committed; returns CONNACK's session present.
    fn connect(&mut self, persistent: bool, keep_alive: u16) -> bool {
        let mut properties = Properties::default();
        if persistent && self.version.is_v5() {
            properties.session_expiry_interval = Some(60);
        }
        self.connect_with(persistent, keep_alive, properties).0
    }

    /// The CONNECT of client "c", with a will on "will", as `connect_with`
    /// sends it.
    fn connect_packet(&self, persistent: bool, keep_alive: u16, properties: Properties) -> Packet {
        Packet::Connect(Connect {
            protocol: self.version,
            clean_session: !persistent,
            keep_alive,
            client_id: "c".into(),
            will: Some(LastWill {
                topic: Arc::from("will"),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
            }),
            username: None,
            password: None,
            properties: properties.into(),
        })
    }

    /// CONNECT with `properties`, committed; returns CONNACK's session
    /// present and properties.
    fn connect_with(
        &mut self,
        persistent: bool,
        keep_alive: u16,
        properties: Properties,
    ) -> (bool, Properties) {
        self.send(self.connect_packet(persistent, keep_alive, properties));
        assert!(self.received().is_empty(), "no CONNACK before the commit");
        let (command, wait) = self.commit(Ok(Reply::Connected {
            session_present: true,
            previous: None,
        }));
        assert!(matches!(command, Command::Connect { conn: c, .. } if c == conn()));
        assert_eq!(wait, Wait::Applied, "CONNACK reads the state it committed");
        let mut received = self.received();
        let Packet::ConnAck(ConnAck {
            session_present,
            code: ReasonCode::Success,
            properties,
        }) = received.remove(0)
        else {
            panic!("CONNACK expected");
        };
        self.inbox = received;
        (session_present, (*properties).clone())
    }

    fn publishes(&mut self) -> Vec<Publish> {
        self.received()
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p,
                other => panic!("PUBLISH expected, got {other:?}"),
            })
            .collect()
    }
}

fn direct(qos: QoS) -> Target {
    Target {
        client_id: Arc::from("sub"),
        qos,
        queued: false,
        retain_as_published: false,
        ids: Vec::new(),
        shared: None,
    }
}

fn persistent_subscriber() -> Target {
    Target {
        client_id: Arc::from("sub"),
        qos: QoS::ExactlyOnce,
        queued: true,
        retain_as_published: false,
        ids: Vec::new(),
        shared: None,
    }
}

/// The CONNECT was taken: its `Connect` is proposed, and CONNACK 0 follows.
fn assert_accepted(c: &mut Client) {
    let (command, _) = c.commit(Ok(Reply::Connected {
        session_present: false,
        previous: None,
    }));
    assert!(matches!(command, Command::Connect { .. }), "{command:?}");
    let received = c.received();
    assert!(
        matches!(
            received.as_slice(),
            [Packet::ConnAck(ConnAck {
                code: ReasonCode::Success,
                ..
            })]
        ),
        "{received:?}"
    );
}
