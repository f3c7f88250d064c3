//! The state machine driven by commands alone: no Raft, no sockets.

use std::sync::Arc;

use bytes::Bytes;
use starling_proto::mqtt::QoS;
use starling_storage::StateMachine;

use super::*;

const NODE: u64 = 1;
/// The Raft term every command of these tests is applied in.
const TERM: u64 = 1;

fn conn(local: u64) -> ConnId {
    ConnId {
        node: NODE,
        incarnation: 1,
        local,
    }
}

/// Keeps the effects of every command, in order.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<Effect>>);

impl Dispatch for Recorder {
    fn dispatch(&self, _: &MqttMachine, effects: Vec<Effect>) {
        self.0.lock().expect("recorder").extend(effects);
    }
}

/// A machine whose connections ask for queues of `max_queued` messages.
struct Machine {
    machine: MqttMachine,
    max_queued: u32,
    max_queued_bytes: u64,
    effects: Arc<Recorder>,
}

impl std::ops::Deref for Machine {
    type Target = MqttMachine;
    fn deref(&self) -> &MqttMachine {
        &self.machine
    }
}

impl Machine {
    /// The effects since the last call.
    fn effects(&self) -> Vec<Effect> {
        std::mem::take(&mut *self.effects.0.lock().expect("recorder"))
    }

    /// The messages the effects since the last call deliver directly.
    fn delivered(&self) -> Vec<Message> {
        self.effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Deliver(m) => Some(m),
                _ => None,
            })
            .collect()
    }
}

fn machine(max_queued: u32) -> Machine {
    let effects = Arc::new(Recorder::default());
    Machine {
        machine: MqttMachine::new(effects.clone()),
        max_queued,
        max_queued_bytes: 1 << 30,
        effects,
    }
}

fn owner(id: &str, c: ConnId) -> Owner {
    Owner {
        client_id: Arc::from(id),
        conn: c,
    }
}

fn msg(topic: &str, qos: QoS, retain: bool, payload: &'static [u8]) -> Message {
    Message {
        topic: Arc::from(topic),
        payload: Bytes::from_static(payload),
        qos,
        retain,
    }
}

fn apply(m: &MqttMachine, command: Command) -> Reply {
    let bytes = postcard::to_allocvec(&command).expect("encode");
    let (_, _, reply): Envelope = postcard::from_bytes(&m.apply(TERM, &bytes)).expect("decode");
    reply
}

fn connect(m: &Machine, id: &str, c: ConnId, clean: bool, will: Option<Message>) -> Reply {
    apply(
        m,
        Command::Connect {
            client_id: Arc::from(id),
            conn: c,
            clean_session: clean,
            will,
            max_queued_messages: m.max_queued,
            max_queued_bytes: m.max_queued_bytes,
        },
    )
}

fn subscribe(m: &Machine, id: &str, c: ConnId, filters: &[(&str, QoS)]) {
    let filters = filters.iter().map(|(f, q)| (f.to_string(), *q)).collect();
    let reply = apply(
        m,
        Command::Subscribe {
            client_id: Arc::from(id),
            conn: c,
            filters,
        },
    );
    assert_eq!(reply, Reply::Done);
}

/// The client that publishes in these tests, connected on first use.
const PUBLISHER: &str = "publisher";

fn publisher(m: &Machine) -> Owner {
    let c = conn(999);
    if m.location(PUBLISHER).is_none() {
        connect(m, PUBLISHER, c, true, None);
    }
    owner(PUBLISHER, c)
}

fn publish(m: &Machine, message: Message) -> Reply {
    let from = publisher(m);
    apply(
        m,
        Command::Publish {
            message,
            from,
            qos2_packet_id: None,
            deliver: true,
        },
    )
}

fn session_present(reply: Reply) -> bool {
    match reply {
        Reply::Connected {
            session_present, ..
        } => session_present,
        other => panic!("not a Connected reply: {other:?}"),
    }
}

#[test]
fn mqtt_3_2_2_session_present_only_for_resumed_persistent_sessions() {
    let m = machine(10);
    assert!(!session_present(connect(&m, "a", conn(1), false, None)));
    assert!(session_present(connect(&m, "a", conn(2), false, None)));
    // Clean session discards the stored one [MQTT-3.1.2-6].
    assert!(!session_present(connect(&m, "a", conn(3), true, None)));
    assert!(!session_present(connect(&m, "a", conn(4), false, None)));
}

#[test]
fn persistent_subscriber_gets_one_queued_copy_at_highest_qos() {
    let m = machine(10);
    connect(&m, "sub", conn(1), false, None);
    subscribe(
        &m,
        "sub",
        conn(1),
        &[("a/+", QoS::AtLeastOnce), ("a/#", QoS::ExactlyOnce)],
    );
    publish(&m, msg("a/b", QoS::ExactlyOnce, false, b"x"));
    let queued = m.queued("sub", 0, 10);
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].1.qos, QoS::ExactlyOnce);
    // QoS 0 is never queued.
    publish(&m, msg("a/b", QoS::AtMostOnce, false, b"y"));
    assert_eq!(m.queued("sub", 0, 10).len(), 1);
}

#[test]
fn clean_subscribers_are_targets_but_not_queued() {
    let m = machine(10);
    connect(&m, "clean", conn(1), true, None);
    subscribe(&m, "clean", conn(1), &[("t", QoS::AtLeastOnce)]);
    assert!(!m.targets("t", QoS::AtLeastOnce).iter().any(|t| t.queued));
    let targets = m.targets("t", QoS::ExactlyOnce);
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].qos, QoS::AtLeastOnce);
    assert!(!targets[0].queued);
}

#[test]
fn queue_is_bounded_and_keeps_the_oldest() {
    let m = machine(3);
    connect(&m, "sub", conn(1), false, None);
    subscribe(&m, "sub", conn(1), &[("t", QoS::AtLeastOnce)]);
    for payload in [b"1", b"2", b"3", b"4", b"5"] {
        publish(&m, msg("t", QoS::AtLeastOnce, false, payload));
    }
    let payloads: Vec<Bytes> = m
        .queued("sub", 0, 10)
        .into_iter()
        .map(|(_, q)| q.message.payload.clone())
        .collect();
    assert_eq!(payloads, vec!["1", "2", "3"]);
}

#[test]
fn acked_messages_leave_the_queue() {
    let m = machine(10);
    connect(&m, "sub", conn(1), false, None);
    subscribe(&m, "sub", conn(1), &[("t", QoS::AtLeastOnce)]);
    publish(&m, msg("t", QoS::AtLeastOnce, false, b"1"));
    publish(&m, msg("t", QoS::AtLeastOnce, false, b"2"));
    apply(
        &m,
        Command::Ack {
            from: owner("sub", conn(1)),
            seqs: vec![0],
        },
    );
    let left = m.queued("sub", 0, 10);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, 1);
    assert_eq!(m.queue_head("sub"), Some(1));
}

#[test]
fn mqtt_3_1_2_8_will_published_on_lost_connection_not_after_disconnect() {
    let m = machine(10);
    connect(&m, "watcher", conn(1), false, None);
    subscribe(&m, "watcher", conn(1), &[("will/#", QoS::AtLeastOnce)]);
    let will = msg("will/a", QoS::AtLeastOnce, false, b"gone");
    connect(&m, "a", conn(2), true, Some(will.clone()));
    let reply = apply(
        &m,
        Command::Disconnect {
            client_id: Arc::from("a"),
            conn: conn(2),
            publish_will: true,
            sent_below: None,
        },
    );
    assert_eq!(reply, Reply::Disconnected { wills: 1 });
    assert_eq!(m.queued("watcher", 0, 10).len(), 1);

    connect(
        &m,
        "b",
        conn(3),
        true,
        Some(msg("will/b", QoS::AtLeastOnce, false, b"x")),
    );
    let reply = apply(
        &m,
        Command::Disconnect {
            client_id: Arc::from("b"),
            conn: conn(3),
            publish_will: false,
            sent_below: None,
        },
    );
    assert_eq!(reply, Reply::Disconnected { wills: 0 });
    assert_eq!(
        m.queued("watcher", 0, 10).len(),
        1,
        "no will after DISCONNECT"
    );
}

#[test]
fn mqtt_3_1_4_2_takeover_publishes_old_will_and_fences_old_connection() {
    let m = machine(10);
    let will = msg("w", QoS::AtMostOnce, false, b"bye");
    connect(&m, "watcher", conn(5), true, None);
    subscribe(&m, "watcher", conn(5), &[("w", QoS::AtMostOnce)]);
    connect(&m, "a", conn(1), false, Some(will.clone()));
    m.effects();
    match connect(&m, "a", conn(2), false, None) {
        Reply::Connected { previous, .. } => assert_eq!(previous, Some(conn(1))),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        m.effects(),
        vec![
            Effect::Attach {
                client_id: Arc::from("a"),
                conn: conn(2)
            },
            Effect::Deliver(will),
            Effect::Kick(conn(1))
        ],
        "every node delivers the old will and the old node closes its connection"
    );
    // The old connection no longer owns the session.
    let stale = apply(
        &m,
        Command::Disconnect {
            client_id: Arc::from("a"),
            conn: conn(1),
            publish_will: true,
            sent_below: None,
        },
    );
    assert_eq!(stale, Reply::NotOwner);
    let stale_sub = apply(
        &m,
        Command::Subscribe {
            client_id: Arc::from("a"),
            conn: conn(1),
            filters: vec![("x".into(), QoS::AtMostOnce)],
        },
    );
    assert_eq!(stale_sub, Reply::NotOwner);
}

#[test]
fn clean_session_ends_with_its_connection() {
    let m = machine(10);
    connect(&m, "c", conn(1), true, None);
    subscribe(&m, "c", conn(1), &[("t", QoS::AtLeastOnce)]);
    apply(
        &m,
        Command::Disconnect {
            client_id: Arc::from("c"),
            conn: conn(1),
            publish_will: false,
            sent_below: None,
        },
    );
    assert!(m.targets("t", QoS::AtLeastOnce).is_empty());
    assert_eq!(m.summary().sessions, 0);
}

#[test]
fn retained_set_replace_clear() {
    let m = machine(10);
    publish(&m, msg("r/1", QoS::AtLeastOnce, true, b"a"));
    publish(&m, msg("r/1", QoS::AtLeastOnce, true, b"b"));
    let retained = m.retained_matching("r/#");
    assert_eq!(retained.len(), 1);
    assert_eq!(retained[0].payload, Bytes::from_static(b"b"));
    assert!(retained[0].retain);
    publish(&m, msg("r/1", QoS::AtLeastOnce, true, b""));
    assert!(m.retained_matching("r/#").is_empty());
}

#[test]
fn mqtt_4_3_3_inbound_qos2_duplicate_is_not_published_twice() {
    let m = machine(10);
    connect(&m, "pub", conn(1), false, None);
    connect(&m, "sub", conn(2), false, None);
    subscribe(&m, "sub", conn(2), &[("t", QoS::ExactlyOnce)]);
    let command = || Command::Publish {
        message: msg("t", QoS::ExactlyOnce, false, b"once"),
        from: owner("pub", conn(1)),
        qos2_packet_id: Some(7),
        deliver: true,
    };
    assert_eq!(apply(&m, command()), Reply::Published { duplicate: false });
    assert_eq!(apply(&m, command()), Reply::Published { duplicate: true });
    assert_eq!(m.queued("sub", 0, 10).len(), 1);
    apply(
        &m,
        Command::Release {
            from: owner("pub", conn(1)),
            packet_id: 7,
        },
    );
    assert_eq!(apply(&m, command()), Reply::Published { duplicate: false });
}

#[test]
fn node_restart_ends_connections_of_earlier_incarnations() {
    let m = machine(10);
    connect(&m, "watcher", conn(1), false, None);
    subscribe(&m, "watcher", conn(1), &[("w", QoS::AtLeastOnce)]);
    connect(
        &m,
        "c",
        conn(2),
        true,
        Some(msg("w", QoS::AtLeastOnce, false, b"x")),
    );
    let reply = apply(
        &m,
        Command::NodeStarted {
            node: NODE,
            incarnation: 2,
        },
    );
    assert_eq!(reply, Reply::Disconnected { wills: 1 });
    let summary = m.summary();
    assert_eq!(
        summary.sessions, 1,
        "the clean session ended, the persistent one stays"
    );
    assert_eq!(summary.queued_messages, 1);
}

#[test]
fn snapshot_restore_round_trip_rebuilds_routes() {
    let m = machine(10);
    connect(&m, "sub", conn(1), false, None);
    subscribe(&m, "sub", conn(1), &[("a/#", QoS::AtLeastOnce)]);
    publish(&m, msg("a/b", QoS::AtLeastOnce, false, b"q"));
    publish(&m, msg("r", QoS::AtMostOnce, true, b"kept"));
    let snapshot = m.snapshot()().expect("snapshot");

    let restored = machine(10);
    restored.restore(&snapshot).expect("restore");
    assert_eq!(restored.summary(), m.summary());
    assert!(restored
        .targets("a/x", QoS::AtLeastOnce)
        .iter()
        .any(|t| t.queued));
    assert_eq!(restored.retained_matching("r").len(), 1);
    assert!(session_present(connect(
        &restored,
        "sub",
        conn(2),
        false,
        None
    )));
}

#[test]
fn applied_count_grows_with_every_command_and_survives_a_snapshot() {
    let m = machine(10);
    assert_eq!(m.applied(), 0);
    connect(&m, "a", conn(1), true, None);
    publish(&m, msg("t", QoS::AtMostOnce, false, b"x"));
    // The publisher's own Connect counts too.
    assert_eq!(m.applied(), 3);
    let restored = machine(10);
    restored
        .restore(&m.snapshot()().expect("snapshot"))
        .expect("restore");
    assert_eq!(restored.applied(), 3);
}

fn disconnect(m: &Machine, id: &str, c: ConnId, sent_below: Option<u64>) -> Reply {
    apply(
        m,
        Command::Disconnect {
            client_id: Arc::from(id),
            conn: c,
            publish_will: false,
            sent_below,
        },
    )
}

/// A persistent QoS 2 subscriber `id` on `c` with `n` messages queued.
fn qos2_subscriber_with_queue(m: &Machine, id: &str, c: ConnId, n: usize) {
    connect(m, id, c, false, None);
    subscribe(m, id, c, &[("t", QoS::ExactlyOnce)]);
    for _ in 0..n {
        publish(m, msg("t", QoS::ExactlyOnce, false, b"x"));
    }
}

#[test]
fn mqtt_3_3_1_1_a_clean_disconnect_records_what_was_sent_for_dup() {
    let m = machine(10);
    connect(&m, "s", conn(1), false, None);
    assert_eq!(m.sent_below("s"), 0, "a new session has sent nothing");
    disconnect(&m, "s", conn(1), Some(3));
    assert_eq!(m.sent_below("s"), 3);
}

#[test]
fn mqtt_3_3_1_1_a_connection_that_sent_less_does_not_lower_what_was_sent() {
    let m = machine(100);
    qos2_subscriber_with_queue(&m, "s", conn(1), 50);
    disconnect(&m, "s", conn(1), Some(40));
    // Resumed, and gone before it re-sent more than the first few.
    connect(&m, "s", conn(2), false, None);
    disconnect(&m, "s", conn(2), Some(5));
    assert_eq!(m.sent_below("s"), 40, "messages 5..40 were sent before");
    // Gone before CONNACK: it sent nothing.
    connect(&m, "s", conn(3), false, None);
    disconnect(&m, "s", conn(3), None);
    assert_eq!(m.sent_below("s"), 40);
}

/// The cluster test `acknowledged_messages_survive_repeated_node_kills` saw a
/// QoS 2 subscriber get, after its node was killed, packet ids it had PUBREC'd
/// sent again without DUP. A connection that vanished may have sent every
/// message queued before it ended, however far past "head + one window".
#[test]
fn mqtt_2_3_1_2_takeover_marks_everything_queued_as_maybe_sent() {
    let m = machine(1000);
    qos2_subscriber_with_queue(&m, "s", conn(1), 300);
    // Acknowledged out of order and committed: gaps below what was sent.
    apply(
        &m,
        Command::Ack {
            from: owner("s", conn(1)),
            seqs: (1..200).collect(),
        },
    );
    assert_eq!(m.queue_head("s"), Some(0));
    connect(&m, "s", conn(2), false, None);
    assert_eq!(m.sent_below("s"), 300, "conn 1 may have sent all 300");
    publish(&m, msg("t", QoS::ExactlyOnce, false, b"new"));
    assert_eq!(m.sent_below("s"), 300, "queued after the takeover: new");
    // The connection that took over reports what it sent; the record stays.
    disconnect(&m, "s", conn(2), Some(250));
    assert_eq!(m.sent_below("s"), 300);
}

#[test]
fn mqtt_2_3_1_2_node_down_marks_everything_queued_as_maybe_sent() {
    let m = machine(1000);
    let remote = ConnId {
        node: 2,
        incarnation: 1,
        local: 7,
    };
    qos2_subscriber_with_queue(&m, "s", remote, 100);
    apply(
        &m,
        Command::NodeStarted {
            node: 2,
            incarnation: 1,
        },
    );
    apply(
        &m,
        Command::NodeDown {
            node: 2,
            incarnation: 1,
            term: TERM,
        },
    );
    assert_eq!(m.sent_below("s"), 100);
    publish(&m, msg("t", QoS::ExactlyOnce, false, b"new"));
    assert_eq!(m.sent_below("s"), 100, "queued after its node died: new");

    // The same when the node comes back before it is declared down.
    connect(&m, "r", conn(1), false, None);
    subscribe(&m, "r", conn(1), &[("t", QoS::ExactlyOnce)]);
    publish(&m, msg("t", QoS::ExactlyOnce, false, b"x"));
    apply(
        &m,
        Command::NodeStarted {
            node: NODE,
            incarnation: 2,
        },
    );
    assert_eq!(m.sent_below("r"), 1);
}

#[tokio::test]
async fn applied_reached_waits_for_this_node_to_apply() {
    let m = Arc::new(machine(10));
    assert!(m.applied_reached(0, Duration::ZERO).await);
    let waiter = {
        let m = m.clone();
        tokio::spawn(async move { m.applied_reached(2, Duration::from_secs(30)).await })
    };
    connect(&m, "a", conn(1), true, None);
    publish(&m, msg("t", QoS::AtMostOnce, false, b"x"));
    assert!(waiter.await.expect("waiter"), "woken by the second apply");
    // The publisher's Connect was the second; its message the third.
    assert!(!m.applied_reached(4, Duration::from_millis(20)).await);
    let restored = machine(10);
    restored
        .restore(&m.snapshot()().expect("snapshot"))
        .expect("restore");
    assert!(restored.applied_reached(3, Duration::ZERO).await);
}

/// A log of every kind of command, as a cluster of two nodes might commit it.
fn mixed_log() -> Vec<Command> {
    let remote = |local| ConnId {
        node: 2,
        incarnation: 1,
        local,
    };
    let will = |t: &str| Some(msg(t, QoS::AtLeastOnce, false, b"gone"));
    let mut log = vec![
        Command::NodeStarted {
            node: NODE,
            incarnation: 1,
        },
        Command::NodeStarted {
            node: 2,
            incarnation: 1,
        },
    ];
    for (id, c, clean) in [
        ("p", conn(1), false),
        ("s", remote(1), false),
        ("c", remote(2), true),
    ] {
        log.push(Command::Connect {
            client_id: Arc::from(id),
            conn: c,
            clean_session: clean,
            will: will(&format!("w/{id}")),
            max_queued_messages: 4,
            max_queued_bytes: 1 << 20,
        });
    }
    for (id, c) in [("s", remote(1)), ("c", remote(2))] {
        log.push(Command::Subscribe {
            client_id: Arc::from(id),
            conn: c,
            filters: vec![
                ("t/#".into(), QoS::ExactlyOnce),
                ("w/#".into(), QoS::AtLeastOnce),
            ],
        });
    }
    for i in 0..6u16 {
        log.push(Command::Publish {
            message: msg("t/x", QoS::ExactlyOnce, i % 2 == 0, b"payload"),
            from: owner("p", conn(1)),
            qos2_packet_id: Some(i),
            deliver: true,
        });
    }
    log.push(Command::Release {
        from: owner("p", conn(1)),
        packet_id: 0,
    });
    log.push(Command::Received {
        from: owner("s", remote(1)),
        seq: 1,
    });
    log.push(Command::Ack {
        from: owner("s", remote(1)),
        seqs: vec![0],
    });
    log.push(Command::NodeDown {
        node: 2,
        incarnation: 1,
        term: TERM,
    });
    log.push(Command::Disconnect {
        client_id: Arc::from("p"),
        conn: conn(1),
        publish_will: true,
        sent_below: Some(0),
    });
    log
}

fn run(m: &MqttMachine, log: &[Command]) -> Vec<Vec<u8>> {
    log.iter()
        .map(|c| m.apply(TERM, &postcard::to_allocvec(c).expect("encode")))
        .collect()
}

/// Apply reads no node's configuration and no clock: the same log gives the
/// same state, to the byte, on nodes configured differently.
#[test]
fn the_same_log_gives_byte_identical_snapshots_on_every_node() {
    let log = mixed_log();
    let a = machine(1);
    let b = machine(100_000);
    let replies_a = run(&a, &log);
    let replies_b = run(&b, &log);
    assert_eq!(replies_a, replies_b, "same replies");
    assert_eq!(a.effects(), b.effects(), "same effects");
    let snapshot = a.snapshot()().expect("snapshot");
    assert_eq!(snapshot, b.snapshot()().expect("snapshot"));
    // The queue limit that applied is the one the Connect carried (4), on both.
    // 4 of 6 queued, 1 acked, then p's will.
    assert_eq!(a.queued("s", 0, 100).len(), 4);
    // And a third node restored from the snapshot continues identically.
    let c = machine(7);
    c.restore(&snapshot).expect("restore");
    let more = [Command::Connect {
        client_id: Arc::from("s"),
        conn: conn(9),
        clean_session: false,
        will: None,
        max_queued_messages: 4,
        max_queued_bytes: 1 << 20,
    }];
    run(&a, &more);
    run(&c, &more);
    assert_eq!(
        a.snapshot()().expect("snapshot"),
        c.snapshot()().expect("snapshot")
    );
}

#[test]
fn committed_messages_and_wills_reach_direct_subscribers_through_effects() {
    let m = machine(10);
    connect(&m, "clean", conn(1), true, None);
    subscribe(
        &m,
        "clean",
        conn(1),
        &[("t", QoS::AtLeastOnce), ("w", QoS::AtMostOnce)],
    );
    publish(&m, msg("t", QoS::AtLeastOnce, true, b"committed"));
    let delivered = m.delivered();
    assert_eq!(delivered.len(), 1);
    assert!(
        !delivered[0].retain,
        "direct copies carry retain 0 [MQTT-3.3.1-9]"
    );
    // QoS 0: the publisher's node already sent the direct copies.
    let from = publisher(&m);
    apply(
        &m,
        Command::Publish {
            message: msg("t", QoS::AtMostOnce, true, b"qos0"),
            from,
            qos2_packet_id: None,
            deliver: false,
        },
    );
    assert!(m.delivered().is_empty());
    // A will published by a command on any node reaches them too.
    let remote = ConnId {
        node: 3,
        incarnation: 1,
        local: 1,
    };
    apply(
        &m,
        Command::NodeStarted {
            node: 3,
            incarnation: 1,
        },
    );
    connect(
        &m,
        "dying",
        remote,
        true,
        Some(msg("w", QoS::AtLeastOnce, false, b"bye")),
    );
    m.effects();
    apply(
        &m,
        Command::NodeStarted {
            node: 3,
            incarnation: 2,
        },
    );
    let delivered = m.delivered();
    assert_eq!(
        delivered.len(),
        1,
        "the will of the restarted node's client"
    );
    assert_eq!(delivered[0].payload, Bytes::from_static(b"bye"));
}

/// A persistent QoS 2 publisher moves to another node and resends; the old
/// node's proposal of the same packet id commits only after the new one was
/// released. Without the owner check it was published a second time.
#[test]
fn mqtt_4_3_3_a_stale_connection_cannot_publish_ack_or_release() {
    let m = machine(10);
    connect(&m, "sub", conn(1), false, None);
    subscribe(&m, "sub", conn(1), &[("t", QoS::ExactlyOnce)]);
    connect(&m, "pub", conn(2), false, None);
    let old = ConnId {
        node: 2,
        incarnation: 1,
        local: 5,
    };
    let publish_from = |c: ConnId| Command::Publish {
        message: msg("t", QoS::ExactlyOnce, false, b"once"),
        from: owner("pub", c),
        qos2_packet_id: Some(5),
        deliver: true,
    };
    // "pub" was on `old` before: its late proposal is refused.
    connect(&m, "pub", old, false, None);
    connect(&m, "pub", conn(3), false, None);
    assert_eq!(
        apply(&m, publish_from(conn(3))),
        Reply::Published { duplicate: false }
    );
    apply(
        &m,
        Command::Release {
            from: owner("pub", conn(3)),
            packet_id: 5,
        },
    );
    assert_eq!(apply(&m, publish_from(old)), Reply::NotOwner);
    assert_eq!(m.queued("sub", 0, 10).len(), 1, "published exactly once");
    // Nor can it acknowledge or release for the new owner.
    connect(&m, "sub", conn(4), false, None);
    let stale_ack = Command::Ack {
        from: owner("sub", conn(1)),
        seqs: vec![0],
    };
    assert_eq!(apply(&m, stale_ack), Reply::NotOwner);
    let stale_rec = Command::Received {
        from: owner("sub", conn(1)),
        seq: 0,
    };
    assert_eq!(apply(&m, stale_rec), Reply::NotOwner);
    assert!(!m.queued("sub", 0, 10)[0].1.released);
    let stale_rel = Command::Release {
        from: owner("pub", old),
        packet_id: 5,
    };
    assert_eq!(apply(&m, stale_rel), Reply::NotOwner);
}

/// A node killed and restarted before it was declared down: the late
/// `NodeDown` names the old incarnation and harms nothing of the new one.
#[test]
fn a_late_node_down_never_fences_a_restarted_node() {
    let m = machine(10);
    let on = |incarnation, local| ConnId {
        node: 2,
        incarnation,
        local,
    };
    connect(&m, "watcher", conn(1), false, None);
    subscribe(&m, "watcher", conn(1), &[("w/#", QoS::AtLeastOnce)]);
    apply(
        &m,
        Command::NodeStarted {
            node: 2,
            incarnation: 1,
        },
    );
    connect(
        &m,
        "old",
        on(1, 1),
        false,
        Some(msg("w/old", QoS::AtLeastOnce, false, b"x")),
    );
    // Restarted: the old incarnation's clients are gone, their wills published.
    apply(
        &m,
        Command::NodeStarted {
            node: 2,
            incarnation: 2,
        },
    );
    assert_eq!(m.queued("watcher", 0, 10).len(), 1);
    connect(
        &m,
        "new",
        on(2, 1),
        false,
        Some(msg("w/new", QoS::AtLeastOnce, false, b"y")),
    );
    m.effects();
    // The leader looked before the restart committed.
    let late = apply(
        &m,
        Command::NodeDown {
            node: 2,
            incarnation: 1,
            term: TERM,
        },
    );
    assert_eq!(late, Reply::Fenced);
    assert!(m.effects().is_empty(), "no fencing, no will");
    assert_eq!(m.queued("watcher", 0, 10).len(), 1, "no spurious will");
    assert_eq!(m.location("new"), Some(2));
    assert_eq!(m.live_incarnation(2), Some(2));
    assert_ne!(connect(&m, "another", on(2, 2), true, None), Reply::Fenced);
    // Declared down for real: once, with its will.
    let down = apply(
        &m,
        Command::NodeDown {
            node: 2,
            incarnation: 2,
            term: TERM,
        },
    );
    assert_eq!(down, Reply::Disconnected { wills: 1 });
    assert!(m.effects().contains(&Effect::NodeDown {
        node: 2,
        incarnation: 2
    }));
    assert_eq!(m.live_incarnation(2), None);
    assert_eq!(
        apply(
            &m,
            Command::NodeDown {
                node: 2,
                incarnation: 2,
                term: TERM,
            }
        ),
        Reply::Fenced
    );
    assert_eq!(m.queued("watcher", 0, 10).len(), 2);
    assert_eq!(connect(&m, "late", on(2, 3), true, None), Reply::Fenced);
}

#[test]
fn restore_refuses_a_snapshot_of_another_format_with_a_clear_error() {
    let m = machine(10);
    connect(&m, "a", conn(1), false, None);
    let current = m.snapshot()().expect("snapshot");
    // What the first version wrote: the state alone, with no header.
    let previous = current[14..].to_vec();
    let err = machine(10).restore(&previous).expect_err("refused");
    assert!(err.contains("older version"), "{err}");
    let mut future = current.clone();
    future[4..6].copy_from_slice(&(snapshot::FORMAT + 1).to_be_bytes());
    let err = machine(10).restore(&future).expect_err("refused");
    assert!(
        err.contains(&format!("format {}", snapshot::FORMAT + 1)),
        "{err}"
    );
    // Nothing was replaced by a refused snapshot.
    let m2 = machine(10);
    m2.restore(&current).expect("restore");
    assert_eq!(m2.summary().sessions, 1);
}

#[test]
fn queue_is_bounded_in_bytes_and_acks_give_room_back() {
    let mut m = machine(100);
    m.max_queued_bytes = 10;
    connect(&m, "sub", conn(1), false, None);
    subscribe(&m, "sub", conn(1), &[("t", QoS::AtLeastOnce)]);
    for payload in [b"1234", b"5678", b"abcd"] {
        publish(&m, msg("t", QoS::AtLeastOnce, false, payload));
    }
    assert_eq!(
        m.queued("sub", 0, 10).len(),
        2,
        "the third would pass 10 bytes"
    );
    apply(
        &m,
        Command::Ack {
            from: owner("sub", conn(1)),
            seqs: vec![0],
        },
    );
    publish(&m, msg("t", QoS::AtLeastOnce, false, b"efgh"));
    let payloads: Vec<Bytes> = m
        .queued("sub", 0, 10)
        .into_iter()
        .map(|(_, q)| q.message.payload.clone())
        .collect();
    assert_eq!(payloads, vec!["5678", "efgh"]);
}

/// A message queued for many persistent sessions is stored once in a
/// snapshot, and shared again once restored.
#[test]
fn a_payload_queued_for_many_sessions_is_stored_once() {
    const SESSIONS: usize = 100;
    const PAYLOAD: usize = 10_000;
    let m = machine(10);
    for i in 0..SESSIONS {
        let id = format!("s{i}");
        let c = conn(u64::try_from(i).expect("small"));
        connect(&m, &id, c, false, None);
        subscribe(&m, &id, c, &[("t", QoS::AtLeastOnce)]);
    }
    let payload: &'static [u8] = Box::leak(vec![7u8; PAYLOAD].into_boxed_slice());
    publish(&m, msg("t", QoS::AtLeastOnce, false, payload));
    let snapshot = m.snapshot()().expect("snapshot");
    assert!(
        snapshot.len() < 2 * PAYLOAD,
        "{} bytes for one payload of {PAYLOAD} queued {SESSIONS} times",
        snapshot.len()
    );
    let restored = machine(10);
    restored.restore(&snapshot).expect("restore");
    assert_eq!(restored.summary().queued_messages, SESSIONS);
    let first = restored.queued("s0", 0, 1);
    let last = restored.queued(&format!("s{}", SESSIONS - 1), 0, 1);
    assert!(Arc::ptr_eq(&first[0].1.message, &last[0].1.message));
    assert_eq!(restored.snapshot()().expect("snapshot"), snapshot);
}

/// A leader deposed while it was cut off finds every peer silent when it wakes
/// up. Its NodeDown, retried after the next leader was elected and appended by
/// that leader in a later term, must fence nobody.
#[test]
fn a_node_down_appended_in_another_term_than_proposed_is_void() {
    let m = machine(10);
    apply(
        &m,
        Command::NodeStarted {
            node: 2,
            incarnation: 1,
        },
    );
    let on2 = ConnId {
        node: 2,
        incarnation: 1,
        local: 1,
    };
    connect(
        &m,
        "healthy",
        on2,
        false,
        Some(msg("w", QoS::AtLeastOnce, false, b"x")),
    );
    m.effects();
    let stale = Command::NodeDown {
        node: 2,
        incarnation: 1,
        term: TERM,
    };
    let bytes = postcard::to_allocvec(&stale).expect("encode");
    let (_, _, reply): Envelope = postcard::from_bytes(&m.apply(TERM + 1, &bytes)).expect("decode");
    assert_eq!(reply, Reply::Fenced);
    assert!(m.effects().is_empty(), "no fencing, no will");
    assert_eq!(m.live_incarnation(2), Some(1));
    assert_eq!(m.location("healthy"), Some(2));
}
