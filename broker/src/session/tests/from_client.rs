//! What the client sends: QoS 1 and 2 publishes, subscriptions, refusals on
//! a node without quorum, bad input.

use super::*;

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
    assert_eq!(answer, Packet::PubAck(Ack::new(7)));
    c.event(Event::Routed {
        answer,
        accepted: true,
    });
    assert_eq!(c.received(), vec![Packet::PubAck(Ack::new(7))]);
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
    let Some(Command::Disconnect { publish_will, .. }) = c.session.closing(0).disconnect else {
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
    assert_eq!(c.received(), vec![Packet::PubAck(Ack::new(3))]);
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
        c.session.closing(0).disconnect.is_none(),
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
    assert_eq!(c.received(), vec![Packet::PubRec(Ack::new(9))]);
    // The client did not see the PUBREC and sends again, with DUP.
    c.send(publish(9, QoS::ExactlyOnce));
    assert!(c.actions().is_empty(), "not routed a second time");
    assert_eq!(c.received(), vec![Packet::PubRec(Ack::new(9))]);
    c.send(Packet::PubRel(Ack::new(9)));
    assert_eq!(c.received(), vec![Packet::PubComp(Ack::new(9))]);
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
    assert_eq!(c.received(), vec![Packet::PubRec(Ack::new(9))]);
    c.send(Packet::PubRel(Ack::new(9)));
    assert!(
        c.received().is_empty(),
        "PUBCOMP only once the release commits"
    );
    let (command, _) = c.commit(Ok(Reply::Done));
    assert!(matches!(command, Command::Release { packet_id: 9, .. }));
    assert_eq!(c.received(), vec![Packet::PubComp(Ack::new(9))]);
}

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
        properties: Default::default(),
    }));
    assert_eq!(
        c.received(),
        vec![Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::ServerUnavailable,
            properties: Default::default(),
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
            ("a/#".into(), QoS::AtLeastOnce.into()),
            ("b".into(), QoS::AtMostOnce.into()),
        ],
        properties: Default::default(),
    }));
    assert_eq!(
        c.received(),
        vec![Packet::SubAck(SubAck {
            packet_id: 4,
            codes: vec![ReasonCode::UnspecifiedError; 2],
            properties: Default::default(),
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
        filters: vec![("a/#".into(), QoS::AtMostOnce.into())],
        properties: Default::default(),
    }));
    assert!(c.received().is_empty(), "no SUBACK before the sync");
    let (command, wait) = c.commit(Ok(Reply::Existed(vec![false])));
    assert_eq!(wait, Wait::Synced, "every node serves it once acknowledged");
    assert!(matches!(command, Command::Subscribe { ref filters, .. } if filters.len() == 1));
    let received = c.received();
    assert_eq!(
        received[0],
        Packet::SubAck(SubAck {
            packet_id: 4,
            codes: vec![ReasonCode::granted(QoS::AtMostOnce)],
            properties: Default::default(),
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
        filters: vec![("a".into(), QoS::AtLeastOnce.into())],
        properties: Default::default(),
    }));
    c.commit(Err("no leader".into()));
    assert_eq!(
        c.received(),
        vec![Packet::SubAck(SubAck {
            packet_id: 4,
            codes: vec![ReasonCode::UnspecifiedError],
            properties: Default::default(),
        })]
    );
    assert_eq!(c.session.end(), None);
}

#[test]
fn the_first_packet_must_be_connect() {
    let mut c = Client::new();
    c.send(Packet::PingReq);
    assert_eq!(c.session.end(), Some(End::Lost));
    assert!(c.received().is_empty());
    assert!(
        c.session.closing(0).disconnect.is_none(),
        "no session to end"
    );
}

#[test]
fn an_unsupported_protocol_level_gets_connack_1() {
    let mut bytes = BytesMut::new();
    let connect = Packet::Connect(Connect {
        protocol: V311,
        clean_session: true,
        keep_alive: 30,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    });
    mqtt::encode(&connect, V311, &mut bytes).expect("encodable");
    // Fixed header (2), protocol name (2 + 4), then the level.
    assert_eq!(bytes[8], 4);
    for level in [2, 9] {
        let mut c = Client::new();
        let mut bytes = bytes.clone();
        bytes[8] = level;
        c.send_bytes(bytes);
        // The 3.1.1 CONNACK, return code 0x01 [MQTT-3.1.2-2].
        assert_eq!(c.session.transmit(), &[0x20, 0x02, 0x00, 0x01], "{level}");
        assert_eq!(c.session.end(), Some(End::Lost));
    }
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
        properties: Default::default(),
    }));
    let (_, _) = c.commit(Err("no leader".into()));
    assert_eq!(
        c.received(),
        vec![Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::ServerUnavailable,
            properties: Default::default(),
        })]
    );
    assert_eq!(c.session.end(), Some(End::Lost));
}
