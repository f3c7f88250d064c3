//! The session driven directly: bytes in, bytes and actions out, with no
//! socket, no process and no cluster. The node it runs on is a [`Fake`] view.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use starling_proto::mqtt::{
    self, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, ProtocolVersion, Publish, QoS,
    SubAck, SubAckCode, Subscribe,
};

use super::{Action, End, Event, Session, View, Wait};
use crate::config::MqttConfig;
use crate::metrics::Metrics;
use crate::registry::{Delivery, Stop};
use crate::state::{Command, ConnId, Message, Queued, Reply, Target};

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
    fn targets(&self, _topic: &str, qos: QoS) -> Vec<Target> {
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
}

/// A session on a [`Fake`] node, seen from its client.
struct Client {
    session: Session,
    node: Fake,
    /// Received and not yet looked at.
    inbox: Vec<Packet>,
}

fn conn() -> ConnId {
    ConnId {
        node: 1,
        incarnation: 1,
        local: 7,
    }
}

fn message(topic: &str, qos: QoS) -> Message {
    Message {
        topic: Arc::from(topic),
        payload: Bytes::from_static(b"payload"),
        qos,
        retain: false,
    }
}

fn publish(id: u16, qos: QoS) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Arc::from("t"),
        packet_id: id,
        payload: Bytes::from_static(b"payload"),
    })
}

fn queued(qos: QoS, released: bool) -> Queued {
    Queued {
        message: Arc::new(message("t", qos)),
        qos,
        released,
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
            },
            inbox: Vec::new(),
        }
    }

    /// The client sends `packet`, encoded as the client's library would.
    fn send(&mut self, packet: Packet) {
        let mut bytes = BytesMut::new();
        mqtt::encode(&packet, V311, &mut bytes).expect("encodable");
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
        while let Some(packet) = mqtt::decode(&mut bytes, usize::MAX, Some(V311)).expect("valid") {
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
        self.send(Packet::Connect(Connect {
            protocol: V311,
            clean_session: !persistent,
            keep_alive,
            client_id: "c".into(),
            will: Some(LastWill {
                topic: Arc::from("will"),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: false,
            }),
            username: None,
            password: None,
        }));
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
            code: ConnectReturnCode::Accepted,
        }) = received.remove(0)
        else {
            panic!("CONNACK expected");
        };
        self.inbox = received;
        session_present
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
    }
}

fn persistent_subscriber() -> Target {
    Target {
        client_id: Arc::from("sub"),
        qos: QoS::ExactlyOnce,
        queued: true,
    }
}

// ---- QoS 1 and 2 from the client ----

#[test]
fn qos1_is_acknowledged_once_every_node_took_it() {
    let mut c = Client::new();
    c.connect(false, 0);
    c.node.targets = vec![direct(QoS::AtLeastOnce)];
    c.send(publish(7, QoS::AtLeastOnce));
    assert!(
        c.received().is_empty(),
        "no PUBACK before the message is taken"
    );
    let mut actions = c.actions();
    let Some(Action::RouteThenAnswer {
        answer, targets, ..
    }) = actions.pop()
    else {
        panic!("the message is routed first: {actions:?}");
    };
    assert_eq!(targets.len(), 1);
    assert_eq!(answer, Packet::PubAck(7));
    c.event(Event::Routed {
        answer,
        accepted: true,
    });
    assert_eq!(c.received(), vec![Packet::PubAck(7)]);
}

#[test]
fn qos1_a_node_did_not_take_gets_no_puback_and_the_connection_ends_with_its_will() {
    let mut c = Client::new();
    c.connect(false, 0);
    c.node.targets = vec![direct(QoS::AtLeastOnce)];
    c.send(publish(7, QoS::AtLeastOnce));
    let Some(Action::RouteThenAnswer { answer, .. }) = c.actions().pop() else {
        panic!("routed");
    };
    c.event(Event::Routed {
        answer,
        accepted: false,
    });
    assert!(c.received().is_empty(), "nothing acknowledged");
    assert_eq!(c.session.end(), Some(End::Lost));
    let Some(Command::Disconnect { publish_will, .. }) = c.session.closing().disconnect else {
        panic!("the connection ends in the replicated state");
    };
    assert!(publish_will, "the client did not say goodbye");
}

#[test]
fn qos1_to_a_persistent_subscriber_is_acknowledged_only_after_its_commit() {
    let mut c = Client::new();
    c.connect(false, 0);
    c.node.targets = vec![persistent_subscriber()];
    c.send(publish(3, QoS::AtLeastOnce));
    assert!(c.received().is_empty());
    let (command, wait) = c.commit(Ok(Reply::Published { duplicate: false }));
    assert!(matches!(
        command,
        Command::Publish {
            deliver: true,
            qos2_packet_id: None,
            ..
        }
    ));
    assert_eq!(wait, Wait::Committed);
    assert_eq!(c.received(), vec![Packet::PubAck(3)]);
}

#[test]
fn a_publish_committed_after_its_session_was_taken_over_is_not_acknowledged() {
    let mut c = Client::new();
    c.connect(true, 0);
    c.node.targets = vec![persistent_subscriber()];
    c.send(publish(3, QoS::AtLeastOnce));
    c.commit(Ok(Reply::NotOwner));
    assert!(c.received().is_empty(), "no PUBACK for a refused publish");
    assert_eq!(c.session.end(), Some(End::TakenOver));
    assert!(
        c.session.closing().disconnect.is_none(),
        "the new owner's session is not ended by the old connection"
    );
}

#[test]
fn qos2_from_a_clean_client_is_published_once_until_released() {
    let mut c = Client::new();
    c.connect(false, 0);
    c.node.targets = vec![direct(QoS::ExactlyOnce)];
    c.send(publish(9, QoS::ExactlyOnce));
    let Some(Action::RouteThenAnswer { answer, .. }) = c.actions().pop() else {
        panic!("routed");
    };
    c.event(Event::Routed {
        answer,
        accepted: true,
    });
    assert_eq!(c.received(), vec![Packet::PubRec(9)]);
    // The client did not see the PUBREC and sends again, with DUP.
    c.send(publish(9, QoS::ExactlyOnce));
    assert!(c.actions().is_empty(), "not routed a second time");
    assert_eq!(c.received(), vec![Packet::PubRec(9)]);
    c.send(Packet::PubRel(9));
    assert_eq!(c.received(), vec![Packet::PubComp(9)]);
    // Released: the id now names a new message.
    c.send(publish(9, QoS::ExactlyOnce));
    assert!(matches!(
        c.actions().pop(),
        Some(Action::RouteThenAnswer { .. })
    ));
}

#[test]
fn qos2_from_a_persistent_client_keeps_its_packet_id_in_the_replicated_state() {
    let mut c = Client::new();
    c.connect(true, 0);
    c.send(publish(9, QoS::ExactlyOnce));
    let (command, _) = c.commit(Ok(Reply::Published { duplicate: false }));
    assert!(matches!(
        command,
        Command::Publish {
            qos2_packet_id: Some(9),
            ..
        }
    ));
    assert_eq!(c.received(), vec![Packet::PubRec(9)]);
    c.send(Packet::PubRel(9));
    assert!(
        c.received().is_empty(),
        "PUBCOMP only once the release commits"
    );
    let (command, _) = c.commit(Ok(Reply::Done));
    assert!(matches!(command, Command::Release { packet_id: 9, .. }));
    assert_eq!(c.received(), vec![Packet::PubComp(9)]);
}

// ---- QoS 1 and 2 to the client ----

#[test]
fn qos1_to_the_client_keeps_to_the_window_and_an_ack_frees_it() {
    let mut c = Client::new();
    c.node.config.max_inflight = 2;
    c.connect(false, 0);
    assert!(c.session.wants_mail());
    for _ in 0..3 {
        c.event(Event::Mail(Delivery {
            message: message("t", QoS::AtLeastOnce),
            qos: QoS::AtLeastOnce,
        }));
    }
    let sent = c.publishes();
    assert_eq!(sent.len(), 2, "a window of two");
    assert!(sent.iter().all(|p| p.qos == QoS::AtLeastOnce && !p.dup));
    assert_ne!(sent[0].packet_id, sent[1].packet_id);
    c.send(Packet::PubAck(sent[0].packet_id));
    let third = c.publishes();
    assert_eq!(third.len(), 1, "the ack made room for the third");
    assert!(![sent[1].packet_id, 0].contains(&third[0].packet_id));
    // An ack of nothing in flight changes nothing.
    c.send(Packet::PubAck(sent[0].packet_id));
    assert!(c.received().is_empty());
}

#[test]
fn qos2_to_the_client_goes_publish_pubrec_pubrel_pubcomp() {
    let mut c = Client::new();
    c.connect(false, 0);
    c.event(Event::Mail(Delivery {
        message: message("t", QoS::ExactlyOnce),
        qos: QoS::ExactlyOnce,
    }));
    let id = c.publishes()[0].packet_id;
    c.send(Packet::PubRec(id));
    assert_eq!(c.received(), vec![Packet::PubRel(id)]);
    c.send(Packet::PubComp(id));
    assert!(c.received().is_empty());
    assert!(c.actions().is_empty(), "a direct message commits nothing");
}

#[test]
fn queued_qos2_is_released_only_after_its_pubrec_commits_and_acked_once_complete() {
    let mut c = Client::new();
    c.node.queue.insert(0, queued(QoS::ExactlyOnce, false));
    assert!(c.connect(true, 0), "session present");
    let sent = c.publishes();
    assert_eq!(sent.len(), 1);
    let id = sent[0].packet_id;
    assert!(!sent[0].dup, "never sent before");
    c.send(Packet::PubRec(id));
    assert!(
        c.received().is_empty(),
        "no PUBREL before the PUBREC commits"
    );
    let (command, _) = c.commit(Ok(Reply::Done));
    assert!(matches!(command, Command::Received { seq: 0, .. }));
    assert_eq!(c.received(), vec![Packet::PubRel(id)]);
    c.send(Packet::PubComp(id));
    c.session.flush();
    let actions = c.actions();
    assert!(
        matches!(&actions[..], [Action::Commit(Command::Ack { seqs, .. })] if seqs == &[0]),
        "the completed message leaves the queue: {actions:?}"
    );
}

#[test]
fn a_resumed_session_resends_what_an_earlier_connection_sent_with_dup() {
    let mut c = Client::new();
    c.node.queue.insert(3, queued(QoS::AtLeastOnce, false));
    c.node.queue.insert(4, queued(QoS::ExactlyOnce, true));
    c.node.queue.insert(5, queued(QoS::AtLeastOnce, false));
    c.node.sent_below = 5;
    c.connect(true, 0);
    let received = c.received();
    assert_eq!(received.len(), 3, "{received:?}");
    let Packet::Publish(first) = &received[0] else {
        panic!("PUBLISH first");
    };
    assert!(first.dup, "sent by the earlier connection [MQTT-3.3.1-1]");
    let first_id = first.packet_id;
    assert_eq!(
        received[1],
        Packet::PubRel(first_id + 1),
        "a released message only gets its PUBREL again"
    );
    let Packet::Publish(last) = &received[2] else {
        panic!("PUBLISH last");
    };
    assert!(!last.dup, "never sent before");
    assert_eq!(last.packet_id, first_id + 2, "ids follow the queue");
}

// ---- takeover and keepalive ----

#[test]
fn a_taken_over_session_sends_nothing_more_and_keeps_its_acks() {
    let mut c = Client::new();
    c.node.queue.insert(0, queued(QoS::AtLeastOnce, false));
    c.connect(true, 0);
    let id = c.publishes()[0].packet_id;
    c.send(Packet::PubAck(id));
    c.event(Event::Stop(Stop::TakenOver));
    assert_eq!(c.session.end(), Some(End::TakenOver));
    assert!(!c.session.wants_mail());
    c.node.queue.insert(1, queued(QoS::AtLeastOnce, false));
    c.event(Event::QueueGrew);
    assert!(c.received().is_empty(), "the queue is the new connection's");
    let closing = c.session.closing();
    assert!(
        matches!(closing.acks, Some(Command::Ack { ref seqs, .. }) if seqs == &[0]),
        "acks made before the takeover are still committed (and refused if stale)"
    );
    assert!(
        closing.disconnect.is_none(),
        "no will: the session lives on"
    );
}

#[test]
fn keepalive_is_one_and_a_half_times_the_clients_and_renewed_by_each_packet() {
    let mut c = Client::new();
    c.connect(false, 10);
    let expect = Duration::from_secs(15);
    assert!(matches!(c.actions()[..], [Action::KeepAlive(d)] if d == expect));
    c.send(Packet::PingReq);
    assert_eq!(c.received(), vec![Packet::PingResp]);
    assert!(matches!(c.actions()[..], [Action::KeepAlive(d)] if d == expect));
    c.event(Event::Stop(Stop::Expired));
    assert_eq!(c.session.end(), Some(End::Lost));
    assert!(matches!(
        c.session.closing().disconnect,
        Some(Command::Disconnect {
            publish_will: true,
            ..
        })
    ));
}

#[test]
fn keepalive_zero_never_expires() {
    let mut c = Client::new();
    c.connect(false, 0);
    c.send(Packet::PingReq);
    assert!(c.actions().is_empty(), "no deadline for keepalive 0");
}

#[test]
fn disconnect_discards_the_will() {
    let mut c = Client::new();
    c.connect(false, 0);
    c.send(Packet::Disconnect);
    assert_eq!(c.session.end(), Some(End::Graceful));
    assert!(matches!(
        c.session.closing().disconnect,
        Some(Command::Disconnect {
            publish_will: false,
            ..
        })
    ));
}

// ---- a node without quorum ----

#[test]
fn without_quorum_connect_is_refused_as_server_unavailable() {
    let mut c = Client::new();
    c.node.quorum = false;
    c.send(Packet::Connect(Connect {
        protocol: V311,
        clean_session: true,
        keep_alive: 30,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
    }));
    assert_eq!(
        c.received(),
        vec![Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::ServerUnavailable,
        })]
    );
    assert!(c.actions().is_empty(), "nothing proposed");
    assert_eq!(c.session.end(), Some(End::Lost));
}

#[test]
fn without_quorum_subscribe_fails_and_qos1_is_not_acknowledged_but_qos0_flows() {
    let mut c = Client::new();
    c.connect(false, 0);
    c.node.quorum = false;
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 4,
        filters: vec![
            ("a/#".into(), QoS::AtLeastOnce),
            ("b".into(), QoS::AtMostOnce),
        ],
    }));
    assert_eq!(
        c.received(),
        vec![Packet::SubAck(SubAck {
            packet_id: 4,
            codes: vec![SubAckCode::Failure; 2],
        })]
    );
    assert!(c.actions().is_empty(), "nothing proposed");
    assert_eq!(c.session.end(), None, "the client may stay");
    c.send(publish(0, QoS::AtMostOnce));
    assert!(matches!(c.actions()[..], [Action::Route { .. }]));
    c.send(publish(5, QoS::AtLeastOnce));
    assert!(c.received().is_empty(), "no PUBACK");
    assert!(c.actions().is_empty());
    assert_eq!(
        c.session.end(),
        Some(End::Lost),
        "the client resends elsewhere"
    );
}

// ---- subscriptions ----

#[test]
fn suback_comes_after_the_sync_then_the_retained_messages() {
    let mut c = Client::new();
    c.connect(false, 0);
    c.node.retained = vec![Message {
        retain: true,
        ..message("a/b", QoS::AtLeastOnce)
    }];
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 4,
        filters: vec![("a/#".into(), QoS::AtMostOnce)],
    }));
    assert!(c.received().is_empty(), "no SUBACK before the sync");
    let (command, wait) = c.commit(Ok(Reply::Done));
    assert_eq!(wait, Wait::Synced, "every node serves it once acknowledged");
    assert!(matches!(command, Command::Subscribe { ref filters, .. } if filters.len() == 1));
    let received = c.received();
    assert_eq!(
        received[0],
        Packet::SubAck(SubAck {
            packet_id: 4,
            codes: vec![SubAckCode::Granted(QoS::AtMostOnce)],
        })
    );
    let Packet::Publish(retained) = &received[1] else {
        panic!("the retained message follows");
    };
    assert!(retained.retain, "[MQTT-3.3.1-6]");
    assert_eq!(retained.qos, QoS::AtMostOnce, "at the granted QoS");
}

#[test]
fn a_subscription_that_cannot_commit_fails_every_filter_and_the_client_stays() {
    let mut c = Client::new();
    c.connect(false, 0);
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 4,
        filters: vec![("a".into(), QoS::AtLeastOnce)],
    }));
    c.commit(Err("no leader".into()));
    assert_eq!(
        c.received(),
        vec![Packet::SubAck(SubAck {
            packet_id: 4,
            codes: vec![SubAckCode::Failure],
        })]
    );
    assert_eq!(c.session.end(), None);
}

// ---- bad input ----

#[test]
fn the_first_packet_must_be_connect() {
    let mut c = Client::new();
    c.send(Packet::PingReq);
    assert_eq!(c.session.end(), Some(End::Lost));
    assert!(c.received().is_empty());
    assert!(
        c.session.closing().disconnect.is_none(),
        "no session to end"
    );
}

#[test]
fn an_unsupported_protocol_level_gets_connack_1() {
    let mut c = Client::new();
    let mut bytes = BytesMut::new();
    let connect = Packet::Connect(Connect {
        protocol: V311,
        clean_session: true,
        keep_alive: 30,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
    });
    mqtt::encode(&connect, V311, &mut bytes).expect("encodable");
    // Fixed header (2), protocol name (2 + 4), then the level.
    assert_eq!(bytes[8], 4);
    bytes[8] = 9;
    c.send_bytes(bytes);
    assert_eq!(
        c.received(),
        vec![Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::UnacceptableProtocolVersion,
        })]
    );
    assert_eq!(c.session.end(), Some(End::Lost));
}

#[test]
fn no_mail_is_taken_before_connack() {
    let mut c = Client::new();
    assert!(!c.session.wants_mail());
    c.send(Packet::Connect(Connect {
        protocol: V311,
        clean_session: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
    }));
    assert!(!c.session.wants_mail(), "CONNECT not yet committed");
    c.commit(Ok(Reply::Connected {
        session_present: false,
        previous: None,
    }));
    assert!(c.session.wants_mail());
}

#[test]
fn a_failed_connect_commit_answers_server_unavailable() {
    let mut c = Client::new();
    c.send(Packet::Connect(Connect {
        protocol: V311,
        clean_session: false,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
    }));
    let (_, _) = c.commit(Err("no leader".into()));
    assert_eq!(
        c.received(),
        vec![Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::ServerUnavailable,
        })]
    );
    assert_eq!(c.session.end(), Some(End::Lost));
}
