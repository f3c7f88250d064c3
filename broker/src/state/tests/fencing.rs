//! Fencing by connection and node incarnation, what was sent before (DUP),
//! and the effects every node carries out.

use super::*;

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
        delivered[0].retain,
        "the effect carries the message as published: each direct copy's retain \
         flag is its subscription's to decide [MQTT-3.3.1-9] [MQTT-3.3.1-12]"
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
            retained_limit: None,
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
        retained_limit: None,
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
