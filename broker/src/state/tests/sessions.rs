//! Sessions, their queues, wills, takeover and retained messages.

use super::*;

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
    assert!(!m
        .targets("t", QoS::AtLeastOnce, None, Pick::Local)
        .iter()
        .any(|t| t.queued));
    let targets = m.targets("t", QoS::ExactlyOnce, None, Pick::Local);
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
            session_expiry: None,
            at: 0,
            will_grace: 0,
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
            session_expiry: None,
            at: 0,
            will_grace: 0,
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
            Effect::Deliver {
                message: will,
                publisher: None,
                shared: Vec::new(),
            },
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
            session_expiry: None,
            at: 0,
            will_grace: 0,
        },
    );
    assert_eq!(stale, Reply::NotOwner);
    let stale_sub = apply(
        &m,
        Command::Subscribe {
            client_id: Arc::from("a"),
            conn: conn(1),
            filters: vec![("x".into(), QoS::AtMostOnce.into())],
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
            session_expiry: None,
            at: 0,
            will_grace: 0,
        },
    );
    assert!(m
        .targets("t", QoS::AtLeastOnce, None, Pick::Local)
        .is_empty());
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

fn publish_limited(m: &Machine, topic: &str, payload: &'static [u8], limit: (u64, u64)) -> Reply {
    let from = publisher(m);
    apply(
        m,
        Command::Publish {
            message: msg(topic, QoS::AtLeastOnce, true, payload),
            from,
            qos2_packet_id: None,
            deliver: true,
            retained_limit: Some(RetainedLimit {
                messages: limit.0,
                bytes: limit.1,
            }),
        },
    )
}

#[test]
fn retained_messages_are_bounded_in_count_but_may_be_replaced_or_cleared() {
    let m = machine(10);
    connect(&m, "sub", conn(1), false, None);
    subscribe(&m, "sub", conn(1), &[("r/#", QoS::AtLeastOnce)]);
    let limit = (2, 0);
    let published = Reply::Published { duplicate: false };
    assert_eq!(publish_limited(&m, "r/1", b"a", limit), published);
    assert_eq!(publish_limited(&m, "r/2", b"b", limit), published);
    assert_eq!(publish_limited(&m, "r/3", b"c", limit), Reply::RetainedFull);
    assert_eq!(m.retained_matching("r/#").len(), 2);
    assert_eq!(
        m.queued("sub", 0, 10).len(),
        2,
        "a refused message is not published either"
    );
    assert_eq!(publish_limited(&m, "r/1", b"new", limit), published);
    assert_eq!(publish_limited(&m, "r/2", b"", limit), published);
    assert_eq!(publish_limited(&m, "r/3", b"c", limit), published);
    let mut topics: Vec<_> = m
        .retained_matching("r/#")
        .into_iter()
        .map(|r| r.topic.to_string())
        .collect();
    topics.sort();
    assert_eq!(topics, ["r/1", "r/3"]);
    assert_eq!(m.retained_usage(), (2, 3 + 3 + 3 + 1));
}

#[test]
fn retained_messages_are_bounded_in_bytes_of_topic_and_payload() {
    let m = machine(10);
    let limit = (0, 10);
    let published = Reply::Published { duplicate: false };
    assert_eq!(publish_limited(&m, "r/1", b"abcd", limit), published);
    assert_eq!(m.retained_usage(), (1, 7));
    assert_eq!(publish_limited(&m, "r/2", b"x", limit), Reply::RetainedFull);
    assert_eq!(publish_limited(&m, "r/1", b"ab", limit), published);
    assert_eq!(publish_limited(&m, "r/2", b"x", limit), published);
    assert_eq!(m.retained_usage(), (2, 9));
    assert_eq!(publish_limited(&m, "r/2", b"xy", limit), published);
    assert_eq!(
        publish_limited(&m, "r/2", b"xyz", limit),
        Reply::RetainedFull
    );
    assert_eq!(m.retained_usage(), (2, 10));
    // Without a limit (a will, or an older node's command) nothing is refused.
    publish(&m, msg("r/3", QoS::AtLeastOnce, true, b"more"));
    assert_eq!(m.retained_usage(), (3, 17));
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
        retained_limit: None,
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
