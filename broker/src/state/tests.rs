//! The state machine driven by commands alone: no Raft, no sockets.

use std::sync::Arc;

use bytes::Bytes;
use starling_proto::mqtt::QoS;
use starling_storage::StateMachine;

use super::*;

const NODE: u64 = 1;

fn conn(local: u64) -> ConnId {
    ConnId {
        node: NODE,
        incarnation: 1,
        local,
    }
}

fn machine(max_queued: usize) -> MqttMachine {
    let registry = Arc::new(Registry::new(NODE, 1));
    MqttMachine::new(registry, Arc::new(Metrics::unregistered()), max_queued)
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
    let (_, reply): (u64, Reply) = postcard::from_bytes(&m.apply(&bytes)).expect("decode");
    reply
}

fn connect(m: &MqttMachine, id: &str, c: ConnId, clean: bool, will: Option<Message>) -> Reply {
    apply(
        m,
        Command::Connect {
            client_id: Arc::from(id),
            conn: c,
            clean_session: clean,
            will,
        },
    )
}

fn subscribe(m: &MqttMachine, id: &str, c: ConnId, filters: &[(&str, QoS)]) {
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

fn publish(m: &MqttMachine, message: Message) -> Reply {
    apply(
        m,
        Command::Publish {
            message,
            inbound: None,
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
            client_id: Arc::from("sub"),
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
    assert_eq!(
        reply,
        Reply::Disconnected {
            wills: vec![will.clone()]
        }
    );
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
    assert_eq!(reply, Reply::Disconnected { wills: vec![] });
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
    connect(&m, "a", conn(1), false, Some(will.clone()));
    match connect(&m, "a", conn(2), false, None) {
        Reply::Connected {
            previous, wills, ..
        } => {
            assert_eq!(previous, Some(conn(1)));
            assert_eq!(wills, vec![will]);
        }
        other => panic!("{other:?}"),
    }
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
        inbound: Some((Arc::from("pub"), 7)),
    };
    assert_eq!(apply(&m, command()), Reply::Published { duplicate: false });
    assert_eq!(apply(&m, command()), Reply::Published { duplicate: true });
    assert_eq!(m.queued("sub", 0, 10).len(), 1);
    apply(
        &m,
        Command::Release {
            client_id: Arc::from("pub"),
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
    match reply {
        Reply::Disconnected { wills } => assert_eq!(wills.len(), 1),
        other => panic!("{other:?}"),
    }
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
    let snapshot = m.snapshot();

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
    assert_eq!(m.applied(), 2);
    assert!(m.wait_applied(2, std::time::Duration::from_millis(1)));
    assert!(!m.wait_applied(3, std::time::Duration::from_millis(20)));
    let restored = machine(10);
    restored.restore(&m.snapshot()).expect("restore");
    assert_eq!(restored.applied(), 2);
}

fn disconnect(m: &MqttMachine, id: &str, c: ConnId, sent_below: Option<u64>) -> Reply {
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
fn qos2_subscriber_with_queue(m: &MqttMachine, id: &str, c: ConnId, n: usize) {
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
            client_id: Arc::from("s"),
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
    apply(&m, Command::NodeDown { node: 2 });
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
    assert!(!m.applied_reached(3, Duration::from_millis(20)).await);
    let restored = machine(10);
    restored.restore(&m.snapshot()).expect("restore");
    assert!(restored.applied_reached(2, Duration::ZERO).await);
}
