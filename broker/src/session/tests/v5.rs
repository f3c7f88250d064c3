//! MQTT 5: what CONNACK announces, the limits both ways (Receive Maximum,
//! Maximum Packet Size, topic aliases), expiry, subscription options, reason
//! codes, and the server's DISCONNECT.

use super::*;
use crate::state::{MessageProps, Subscription};
use starling_proto::mqtt::{Disconnect, RetainHandling, SubOptions, UnsubAck, Unsubscribe};

fn delivery(message: Message, qos: QoS) -> Delivery {
    Delivery {
        message,
        qos,
        retain: false,
        ids: Vec::new(),
        shared: None,
    }
}

fn publish_with(id: u16, qos: QoS, topic: &str, properties: Properties) -> Packet {
    let Packet::Publish(p) = publish(id, qos) else {
        unreachable!()
    };
    Packet::Publish(Publish {
        topic: Arc::from(topic),
        properties: properties.into(),
        ..p
    })
}

/// The session's DISCONNECT, the last thing it sent.
fn disconnect_reason(c: &mut Client) -> Option<ReasonCode> {
    match c.received().pop() {
        Some(Packet::Disconnect(d)) => Some(d.reason),
        _ => None,
    }
}

#[test]
fn connack_announces_the_servers_limits() {
    let mut c = Client::v5();
    c.node.config.receive_maximum = 100;
    c.node.config.max_qos = 1;
    c.node.config.retain_available = false;
    let (_, p) = c.connect_with(false, 30, Properties::default());
    assert_eq!(p.receive_maximum, Some(100));
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.retain_available, Some(0));
    assert_eq!(p.topic_alias_maximum, Some(10));
    assert_eq!(p.maximum_packet_size, Some(1024 * 1024));
    assert_eq!(p.wildcard_subscription_available, Some(1));
    assert_eq!(p.subscription_identifier_available, Some(1));
    assert_eq!(p.server_keep_alive, None, "the keepalive asked for stands");
    assert_eq!(p.assigned_client_identifier, None);
}

#[test]
fn an_empty_client_id_is_assigned_one_even_for_a_session_that_outlives_it() {
    let mut c = Client::v5();
    c.send(Packet::Connect(Connect {
        protocol: ProtocolVersion::V5,
        clean_session: false,
        keep_alive: 0,
        client_id: String::new(),
        will: None,
        username: None,
        password: None,
        properties: Properties {
            session_expiry_interval: Some(60),
            ..Properties::default()
        }
        .into(),
    }));
    let (command, _) = c.commit(Ok(Reply::Connected {
        session_present: false,
        previous: None,
    }));
    let Command::Connect {
        client_id,
        session_expiry,
        ..
    } = command
    else {
        panic!("Connect expected");
    };
    assert_eq!(session_expiry, 60);
    let Some(Packet::ConnAck(connack)) = c.received().pop() else {
        panic!("CONNACK");
    };
    assert_eq!(connack.code, ReasonCode::Success);
    assert_eq!(
        connack.properties.assigned_client_identifier.as_deref(),
        Some(&*client_id)
    );
}

#[test]
fn a_keepalive_over_the_maximum_is_lowered_and_said_so() {
    let mut c = Client::v5();
    c.node.config.max_keepalive = 30;
    let (_, p) = c.connect_with(false, 600, Properties::default());
    assert_eq!(p.server_keep_alive, Some(30));
    assert!(c
        .actions()
        .iter()
        .any(|a| matches!(a, Action::KeepAlive(d) if *d == Duration::from_secs(45))));
}

#[test]
fn mqtt_3_3_4_9_one_publish_over_our_receive_maximum_is_disconnect_0x93() {
    let mut c = Client::v5();
    c.node.config.receive_maximum = 2;
    c.connect(false, 0);
    c.node.targets = vec![direct(QoS::AtLeastOnce)];
    c.send(publish(1, QoS::AtLeastOnce));
    c.send(publish(2, QoS::AtLeastOnce));
    // A resend of one not yet answered takes no more room.
    c.send(publish(2, QoS::AtLeastOnce));
    assert_eq!(c.session.end(), None);
    c.send(publish(3, QoS::AtLeastOnce));
    assert_eq!(
        disconnect_reason(&mut c),
        Some(ReasonCode::ReceiveMaximumExceeded)
    );
    assert_eq!(c.session.end(), Some(End::Lost));
}

#[test]
fn answered_publishes_give_their_room_back() {
    let mut c = Client::v5();
    c.node.config.receive_maximum = 1;
    c.connect(false, 0);
    c.node.targets = vec![direct(QoS::AtLeastOnce)];
    for id in 1..=3 {
        c.send(publish(id, QoS::AtLeastOnce));
        let Some(Action::RouteThenAnswer { answer, .. }) = c.actions().pop() else {
            panic!("routed");
        };
        c.event(Event::Routed {
            answer,
            accepted: true,
        });
        assert_eq!(c.received(), vec![Packet::PubAck(Ack::new(id))]);
    }
    assert_eq!(c.session.end(), None);
}

#[test]
fn we_never_have_more_in_flight_than_the_clients_receive_maximum() {
    let mut c = Client::v5();
    let asked = Properties {
        receive_maximum: Some(2),
        ..Properties::default()
    };
    c.connect_with(false, 0, asked);
    for _ in 0..5 {
        c.event(Event::Mail(delivery(
            message("t", QoS::AtLeastOnce),
            QoS::AtLeastOnce,
        )));
    }
    let sent = c.publishes();
    assert_eq!(sent.len(), 2, "[MQTT-3.3.4-7]");
    c.send(Packet::PubAck(Ack::new(sent[0].packet_id)));
    assert_eq!(c.publishes().len(), 1);
}

#[test]
fn inbound_topic_aliases_are_set_used_and_checked() {
    let mut c = Client::v5();
    c.connect(false, 0);
    let alias = |n| Properties {
        topic_alias: Some(n),
        ..Properties::default()
    };
    c.send(publish_with(0, QoS::AtMostOnce, "a/b", alias(1)));
    c.send(publish_with(0, QoS::AtMostOnce, "", alias(1)));
    let topics: Vec<Arc<str>> = c
        .actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::Route { message, .. } => Some(message.topic),
            _ => None,
        })
        .collect();
    assert_eq!(topics, vec![Arc::from("a/b"), Arc::from("a/b")]);
    // Never set: a Protocol Error.
    c.send(publish_with(0, QoS::AtMostOnce, "", alias(2)));
    assert_eq!(disconnect_reason(&mut c), Some(ReasonCode::ProtocolError));

    let mut c = Client::v5();
    c.connect(false, 0);
    c.send(publish_with(0, QoS::AtMostOnce, "x", alias(11)));
    assert_eq!(
        disconnect_reason(&mut c),
        Some(ReasonCode::TopicAliasInvalid),
        "over the maximum of 10 we announced [MQTT-3.3.2-9]"
    );
}

#[test]
fn outbound_topics_get_aliases_when_the_client_takes_them() {
    let mut c = Client::v5();
    let asked = Properties {
        topic_alias_maximum: Some(1),
        ..Properties::default()
    };
    c.connect_with(false, 0, asked);
    for topic in ["a", "a", "b"] {
        c.event(Event::Mail(delivery(
            message(topic, QoS::AtMostOnce),
            QoS::AtMostOnce,
        )));
    }
    let sent = c.publishes();
    let seen: Vec<(&str, Option<u16>)> = sent
        .iter()
        .map(|p| (&*p.topic, p.properties.topic_alias))
        .collect();
    assert_eq!(seen, vec![("a", Some(1)), ("", Some(1)), ("b", None)]);
}

#[test]
fn a_3_1_1_client_gets_no_alias_and_no_properties() {
    let mut c = Client::new();
    c.connect(false, 0);
    let mut m = message("a", QoS::AtMostOnce);
    m.props = Some(Arc::new(MessageProps {
        user_properties: vec![("k".into(), "v".into())],
        ..MessageProps::default()
    }));
    c.event(Event::Mail(delivery(m, QoS::AtMostOnce)));
    let sent = c.publishes();
    assert_eq!(&*sent[0].topic, "a");
    assert!(sent[0].properties.is_empty());
}

#[test]
fn message_expiry_counts_down_and_an_expired_message_is_not_sent() {
    let mut c = Client::v5();
    c.connect(false, 0);
    let now = c.node.now;
    let mut fresh = message("t", QoS::AtMostOnce);
    fresh.expires_at = Some(now + 1_500);
    let mut stale = message("t", QoS::AtLeastOnce);
    stale.expires_at = Some(now);
    c.event(Event::Mail(delivery(fresh, QoS::AtMostOnce)));
    c.event(Event::Mail(delivery(stale, QoS::AtLeastOnce)));
    let sent = c.publishes();
    assert_eq!(sent.len(), 1, "the expired one is dropped");
    assert_eq!(
        sent[0].properties.message_expiry_interval,
        Some(2),
        "what is left, rounded up [MQTT-3.3.2-6]"
    );
}

#[test]
fn an_expired_queued_message_leaves_the_queue_as_if_acknowledged() {
    let mut c = Client::v5();
    let mut expired = queued(QoS::AtLeastOnce, false);
    let mut m = (*expired.message).clone();
    m.expires_at = Some(1);
    expired.message = Arc::new(m);
    c.node.queue.insert(0, expired);
    c.node.queue.insert(1, queued(QoS::AtLeastOnce, false));
    c.connect(true, 0);
    let sent = c.publishes();
    assert_eq!(sent.len(), 1);
    c.session.flush();
    let acks: Vec<_> = c
        .actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::Commit(Command::Ack { seqs, .. }) => Some(seqs),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![vec![0]]);
}

#[test]
fn mqtt_3_1_2_24_a_packet_larger_than_the_client_takes_is_skipped() {
    let mut c = Client::v5();
    let asked = Properties {
        maximum_packet_size: Some(64),
        ..Properties::default()
    };
    c.connect_with(false, 0, asked);
    let mut big = message("t", QoS::AtLeastOnce);
    big.payload = Bytes::from(vec![0u8; 100]);
    c.event(Event::Mail(delivery(big, QoS::AtLeastOnce)));
    c.event(Event::Mail(delivery(
        message("t", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
    )));
    let sent = c.publishes();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].payload.len(), 7);
    let window = c.session.out.as_ref().expect("window");
    assert_eq!(window.inflight(), 1, "the skipped one holds no room");
}

#[test]
fn properties_travel_with_the_message_in_order() {
    let mut c = Client::v5();
    c.connect(false, 0);
    let sent_props = Properties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("b".into(), "1".into()), ("a".into(), "2".into())],
        ..Properties::default()
    };
    c.send(publish_with(0, QoS::AtMostOnce, "t", sent_props.clone()));
    let Some(Action::Route { message, .. }) = c.actions().pop() else {
        panic!("routed");
    };
    let mut d = Client::v5();
    d.connect(false, 0);
    d.event(Event::Mail(Delivery {
        ids: vec![3, 9],
        ..delivery(message, QoS::AtMostOnce)
    }));
    let got = &d.publishes()[0].properties;
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type, sent_props.content_type);
    assert_eq!(got.response_topic, sent_props.response_topic);
    assert_eq!(got.correlation_data, sent_props.correlation_data);
    assert_eq!(got.user_properties, sent_props.user_properties);
    assert_eq!(got.subscription_identifiers, vec![3, 9]);
}

#[test]
fn puback_reason_codes_no_subscribers_and_invalid_payload_format() {
    let mut c = Client::v5();
    c.connect(false, 0);
    c.send(publish(1, QoS::AtLeastOnce));
    let Some(Action::RouteThenAnswer { answer, .. }) = c.actions().pop() else {
        panic!("routed");
    };
    assert_eq!(
        answer,
        Packet::PubAck(Ack::with_reason(1, ReasonCode::NoMatchingSubscribers))
    );
    let bad_utf8 = Properties {
        payload_format_indicator: Some(1),
        ..Properties::default()
    };
    let Packet::Publish(mut p) = publish_with(2, QoS::AtLeastOnce, "t", bad_utf8) else {
        unreachable!()
    };
    p.payload = Bytes::from_static(b"\xff\xfe");
    c.send(Packet::Publish(p.clone()));
    let Some(Packet::PubAck(ack)) = c.received().pop() else {
        panic!("PUBACK");
    };
    assert_eq!(
        (ack.packet_id, ack.reason),
        (2, ReasonCode::PayloadFormatInvalid)
    );
    assert!(ack.properties.reason_string.is_some(), "says why");
    assert_eq!(c.session.end(), None);
    // A client that asked for no problem information gets the code alone
    // [MQTT-3.1.2-29].
    let mut quiet = Client::v5();
    let asked = Properties {
        request_problem_information: Some(0),
        ..Properties::default()
    };
    quiet.connect_with(false, 0, asked);
    quiet.send(Packet::Publish(p));
    assert_eq!(
        quiet.received(),
        vec![Packet::PubAck(Ack::with_reason(
            2,
            ReasonCode::PayloadFormatInvalid
        ))]
    );
}

#[test]
fn subscribe_codes_identifiers_and_retain_handling() {
    let mut c = Client::v5();
    c.node.config.shared_subscriptions = false;
    c.connect(false, 0);
    c.node.retained = vec![Message {
        retain: true,
        ..message("a/b", QoS::AtLeastOnce)
    }];
    let options = |retain_handling| SubOptions {
        retain_handling,
        ..SubOptions::from(QoS::AtLeastOnce)
    };
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 5,
        filters: vec![
            ("a/#".into(), options(RetainHandling::Always)),
            ("a/+".into(), options(RetainHandling::IfNew)),
            ("a/b".into(), options(RetainHandling::Never)),
            ("a/#/b".into(), options(RetainHandling::Always)),
            ("$share/g/a".into(), options(RetainHandling::Always)),
        ],
        properties: Properties {
            subscription_identifiers: vec![7],
            ..Properties::default()
        }
        .into(),
    }));
    let (command, _) = c.commit(Ok(Reply::Existed(vec![false, true, false])));
    let Command::Subscribe { filters, .. } = command else {
        panic!("Subscribe");
    };
    assert_eq!(filters.len(), 3);
    assert!(filters.iter().all(|(_, s)| s.id == Some(7)));
    let received = c.received();
    assert_eq!(
        received[0],
        Packet::SubAck(SubAck {
            packet_id: 5,
            codes: vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS1,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::SharedSubscriptionsNotSupported,
            ],
            properties: Properties::default().into(),
        })
    );
    // Only "a/#" sends the retained message: "a/+" existed, "a/b" never.
    assert_eq!(received.len(), 2);
    let Packet::Publish(retained) = &received[1] else {
        panic!("the retained message");
    };
    assert!(retained.retain);
    assert_eq!(retained.properties.subscription_identifiers, vec![7]);
}

#[test]
fn unsubscribe_says_which_filters_had_no_subscription() {
    let mut c = Client::v5();
    c.connect(false, 0);
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 6,
        filters: vec!["a".into(), "a/#/b".into(), "b".into()],
        properties: Properties::default().into(),
    }));
    let (command, _) = c.commit(Ok(Reply::Existed(vec![true, false])));
    assert!(matches!(command, Command::Unsubscribe { filters, .. } if filters.len() == 2));
    assert_eq!(
        c.received(),
        vec![Packet::UnsubAck(UnsubAck {
            packet_id: 6,
            codes: vec![
                ReasonCode::Success,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::NoSubscriptionExisted,
            ],
            properties: Properties::default().into(),
        })]
    );
}

#[test]
fn disconnect_with_will_publishes_it_and_may_change_the_session_expiry() {
    let mut c = Client::v5();
    c.connect(true, 0);
    c.send(Packet::Disconnect(Disconnect {
        reason: ReasonCode::DisconnectWithWillMessage,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        }
        .into(),
    }));
    let Some(Command::Disconnect {
        publish_will,
        session_expiry,
        ..
    }) = c.session.closing(0).disconnect
    else {
        panic!("Disconnect");
    };
    assert!(publish_will);
    assert_eq!(session_expiry, Some(0));
}

#[test]
fn mqtt_3_14_2_2_disconnect_may_not_give_expiry_to_a_session_without() {
    let mut c = Client::v5();
    c.connect(false, 0);
    c.send(Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Properties {
            session_expiry_interval: Some(30),
            ..Properties::default()
        }
        .into(),
    }));
    assert_eq!(disconnect_reason(&mut c), Some(ReasonCode::ProtocolError));
    assert_eq!(c.session.end(), Some(End::Lost));
}

#[test]
fn the_server_says_why_it_closes() {
    for (stop, reason) in [
        (Stop::TakenOver, ReasonCode::SessionTakenOver),
        (Stop::Expired, ReasonCode::KeepAliveTimeout),
        (Stop::NodeStopping, ReasonCode::ServerShuttingDown),
        (Stop::SlowSubscriber, ReasonCode::QuotaExceeded),
        (Stop::CutOff, ReasonCode::UseAnotherServer),
    ] {
        let mut c = Client::v5();
        c.connect(false, 0);
        c.event(Event::Stop(stop));
        assert_eq!(disconnect_reason(&mut c), Some(reason), "{stop:?}");
    }
    // A 3.1.1 client has no server DISCONNECT.
    let mut c = Client::new();
    c.connect(false, 0);
    c.event(Event::Stop(Stop::TakenOver));
    assert!(c.received().is_empty());
}

#[test]
fn bad_input_after_connack_gets_0x81_or_0x82() {
    // PUBACK with an unknown reason code: malformed.
    let mut c = Client::v5();
    c.connect(false, 0);
    c.send_bytes(BytesMut::from(&[0x40, 0x03, 0x00, 0x01, 0x03][..]));
    assert_eq!(disconnect_reason(&mut c), Some(ReasonCode::MalformedPacket));
    // PUBLISH with two Message Expiry Intervals: a Protocol Error.
    let mut c = Client::v5();
    c.connect(false, 0);
    #[rustfmt::skip]
    let twice = [
        0x30, 0x0F,
        0x00, 0x01, b't',
        0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2,
        b'x',
    ];
    c.send_bytes(BytesMut::from(&twice[..]));
    assert_eq!(disconnect_reason(&mut c), Some(ReasonCode::ProtocolError));
    // Over our maximum packet size.
    let mut c = Client::v5();
    c.connect(false, 0);
    c.node.config.max_packet_size = 16;
    let mut big = BytesMut::new();
    let Packet::Publish(mut p) = publish(0, QoS::AtMostOnce) else {
        unreachable!()
    };
    p.payload = Bytes::from(vec![1u8; 64]);
    mqtt::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut big).expect("encodable");
    c.send_bytes(big);
    assert_eq!(disconnect_reason(&mut c), Some(ReasonCode::PacketTooLarge));
}

#[test]
fn a_subscription_keeps_its_options_in_the_command() {
    let mut c = Client::v5();
    c.connect(false, 0);
    let options = SubOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::Never,
    };
    c.node.config.max_qos = 1;
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![("t".into(), options)],
        properties: Properties::default().into(),
    }));
    let (command, _) = c.commit(Ok(Reply::Existed(vec![false])));
    let Command::Subscribe { filters, .. } = command else {
        panic!("Subscribe");
    };
    let expected = Subscription {
        options: SubOptions {
            qos: QoS::AtLeastOnce,
            ..options
        },
        id: None,
    };
    assert_eq!(
        filters,
        vec![("t".to_string(), expected)],
        "QoS held to max_qos"
    );
}

#[test]
fn a_shared_subscription_is_granted_without_retained_messages_and_refuses_no_local() {
    let mut c = Client::v5();
    let (_, p) = c.connect_with(false, 0, Properties::default());
    assert_eq!(
        p.shared_subscription_available, None,
        "available: the default"
    );
    c.node.retained = vec![Message {
        retain: true,
        ..message("a/b", QoS::AtLeastOnce)
    }];
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 2,
        filters: vec![("$share/g/a/#".into(), SubOptions::from(QoS::AtLeastOnce))],
        properties: Properties::default().into(),
    }));
    c.commit(Ok(Reply::Existed(vec![false])));
    assert_eq!(
        c.received(),
        vec![Packet::SubAck(SubAck {
            packet_id: 2,
            codes: vec![ReasonCode::GrantedQoS1],
            properties: Properties::default().into(),
        })],
        "no retained message for a shared subscription"
    );
    let no_local = SubOptions {
        no_local: true,
        ..SubOptions::from(QoS::AtLeastOnce)
    };
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 3,
        filters: vec![("$share/g/a/#".into(), no_local)],
        properties: Properties::default().into(),
    }));
    assert_eq!(
        disconnect_reason(&mut c),
        Some(ReasonCode::ProtocolError),
        "[MQTT-3.8.3-4]"
    );
}

#[test]
fn the_acl_decides_publish_subscribe_and_every_delivery() {
    let acl = crate::auth::acl::AclFile::parse(
        "topic readwrite open/#\ntopic read feeds/#\ntopic write in/#\ntopic write will\n",
    )
    .expect("valid rules");
    // A will the client may not publish refuses the CONNECT.
    let mut refused = Client::v5();
    refused.node.acl = Some(Arc::new(
        crate::auth::acl::AclFile::parse("topic readwrite open/#\n").expect("valid"),
    ));
    refused.send(refused.connect_packet(false, 0, Properties::default()));
    assert_eq!(
        refused.received(),
        vec![Packet::ConnAck(ConnAck::new(
            false,
            ReasonCode::NotAuthorized
        ))]
    );
    let mut c = Client::v5();
    c.node.acl = Some(Arc::new(acl.clone()));
    c.connect(false, 0);
    c.node.targets = vec![direct(QoS::AtLeastOnce)];
    // Publishing where it may not: 0x87, nothing routed.
    c.send(publish_with(
        1,
        QoS::AtLeastOnce,
        "feeds/x",
        Properties::default(),
    ));
    assert_eq!(
        c.received(),
        vec![Packet::PubAck(Ack::with_reason(
            1,
            ReasonCode::NotAuthorized
        ))]
    );
    assert!(c.actions().is_empty(), "a denied message goes nowhere");
    c.send(publish_with(
        2,
        QoS::AtLeastOnce,
        "in/x",
        Properties::default(),
    ));
    assert!(matches!(
        c.actions().pop(),
        Some(Action::RouteThenAnswer { .. })
    ));
    // Subscribing: only what a read rule covers.
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 3,
        filters: vec![
            ("feeds/+".into(), SubOptions::from(QoS::AtLeastOnce)),
            ("in/#".into(), SubOptions::from(QoS::AtLeastOnce)),
        ],
        properties: Properties::default().into(),
    }));
    c.commit(Ok(Reply::Existed(vec![false])));
    let Some(Packet::SubAck(suback)) = c.received().pop() else {
        panic!("SUBACK");
    };
    assert_eq!(
        suback.codes,
        vec![ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized]
    );
    // Deliveries are checked one by one.
    for topic in ["feeds/a", "in/a", "open/a"] {
        c.event(Event::Mail(delivery(
            message(topic, QoS::AtMostOnce),
            QoS::AtMostOnce,
        )));
    }
    let topics: Vec<String> = c.publishes().iter().map(|p| p.topic.to_string()).collect();
    assert_eq!(topics, vec!["feeds/a".to_string(), "open/a".to_string()]);

    // 3.1.1: a denied PUBLISH is acknowledged as usual, and dropped.
    let mut old = Client::new();
    old.node.acl = Some(Arc::new(acl));
    old.connect(false, 0);
    old.send(publish_with(
        4,
        QoS::AtLeastOnce,
        "feeds/x",
        Properties::default(),
    ));
    assert_eq!(old.received(), vec![Packet::PubAck(Ack::new(4))]);
    assert!(old.actions().is_empty());
}

#[test]
fn clients_may_not_publish_to_sys_topics() {
    // MQTT 5: PUBACK 0x90 and nothing routed; a QoS 0 one closes the
    // connection, as any refused QoS 0 PUBLISH does.
    let mut c = Client::v5();
    c.connect(false, 0);
    c.node.targets = vec![direct(QoS::AtLeastOnce)];
    c.send(publish_with(
        1,
        QoS::AtLeastOnce,
        "$SYS/broker/uptime",
        Properties::default(),
    ));
    let Some(Packet::PubAck(ack)) = c.received().pop() else {
        panic!("PUBACK");
    };
    assert_eq!(ack.reason, ReasonCode::TopicNameInvalid);
    assert!(c.actions().is_empty(), "a refused message goes nowhere");
    // A topic that only begins like it is any other.
    c.send(publish_with(
        2,
        QoS::AtLeastOnce,
        "$SYSTEM/x",
        Properties::default(),
    ));
    assert!(matches!(
        c.actions().pop(),
        Some(Action::RouteThenAnswer { .. })
    ));

    // 3.1.1: acknowledged as usual and dropped, as a PUBLISH the ACL denies.
    let mut old = Client::new();
    old.connect(false, 0);
    old.node.targets = vec![direct(QoS::AtLeastOnce)];
    for (id, qos) in [(0, QoS::AtMostOnce), (3, QoS::AtLeastOnce)] {
        old.send(publish_with(
            id,
            qos,
            "$SYS/broker/uptime",
            Properties::default(),
        ));
        assert!(old.actions().is_empty(), "QoS {qos:?} goes nowhere");
    }
    assert_eq!(old.received(), vec![Packet::PubAck(Ack::new(3))]);
    old.send(publish_with(
        4,
        QoS::ExactlyOnce,
        "$SYS",
        Properties::default(),
    ));
    assert_eq!(old.received(), vec![Packet::PubRec(Ack::new(4))]);
    old.send(Packet::PubRel(Ack::new(4)));
    assert_eq!(old.received(), vec![Packet::PubComp(Ack::new(4))]);
    assert!(old.actions().is_empty());
    assert_eq!(old.session.end(), None, "the client stays connected");
}

#[test]
fn limits_each_with_its_reason_code() {
    // A client id over the limit: CONNACK 0x85.
    let mut c = Client::v5();
    c.node.config.max_client_id_len = 0;
    c.send(c.connect_packet(false, 0, Properties::default()));
    assert_eq!(
        c.received(),
        vec![Packet::ConnAck(ConnAck::new(
            false,
            ReasonCode::ClientIdentifierNotValid
        ))]
    );

    // Topics over the length or level limits: PUBACK 0x90, SUBACK 0x8F.
    let mut c = Client::v5();
    c.node.config.max_topic_levels = 2;
    c.connect(false, 0);
    c.send(publish_with(
        1,
        QoS::AtLeastOnce,
        "a/b/c",
        Properties::default(),
    ));
    let Some(Packet::PubAck(ack)) = c.received().pop() else {
        panic!("PUBACK");
    };
    assert_eq!(ack.reason, ReasonCode::TopicNameInvalid);
    c.node.config.max_subscriptions = 1;
    c.node.subscriptions = 0;
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 2,
        filters: vec![
            ("a/+/c".into(), SubOptions::from(QoS::AtMostOnce)),
            ("a/b".into(), SubOptions::from(QoS::AtMostOnce)),
            ("a/c".into(), SubOptions::from(QoS::AtMostOnce)),
        ],
        properties: Properties::default().into(),
    }));
    c.commit(Ok(Reply::Existed(vec![false])));
    let Some(Packet::SubAck(suback)) = c.received().pop() else {
        panic!("SUBACK");
    };
    assert_eq!(
        suback.codes,
        vec![
            ReasonCode::TopicFilterInvalid,
            ReasonCode::Success,
            ReasonCode::QuotaExceeded,
        ],
        "one subscription at most"
    );

    // More PUBLISH packets a second than allowed: DISCONNECT 0x96.
    let mut c = Client::v5();
    c.node.config.max_publish_rate = 3;
    c.connect(false, 0);
    for _ in 0..3 {
        c.send(publish(0, QoS::AtMostOnce));
    }
    assert_eq!(c.session.end(), None, "three within the burst");
    c.node.now += 400;
    c.send(publish(0, QoS::AtMostOnce));
    assert_eq!(c.session.end(), None, "refilled: 1.2 tokens after 400 ms");
    c.send(publish(0, QoS::AtMostOnce));
    assert_eq!(
        disconnect_reason(&mut c),
        Some(ReasonCode::MessageRateTooHigh)
    );
    assert_eq!(c.session.end(), Some(End::Lost));
}
