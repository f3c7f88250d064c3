//! What the session sends: QoS 1 and 2 deliveries through the window, a
//! resumed session's DUP, takeover, keepalive, and the end of a session.

use super::*;

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
            ids: Vec::new(),
            retain: false,
            shared: None,
        }));
    }
    let sent = c.publishes();
    assert_eq!(sent.len(), 2, "a window of two");
    assert!(sent.iter().all(|p| p.qos == QoS::AtLeastOnce && !p.dup));
    assert_ne!(sent[0].packet_id, sent[1].packet_id);
    c.send(Packet::PubAck(Ack::new(sent[0].packet_id)));
    let third = c.publishes();
    assert_eq!(third.len(), 1, "the ack made room for the third");
    assert!(![sent[1].packet_id, 0].contains(&third[0].packet_id));
    // An ack of nothing in flight changes nothing.
    c.send(Packet::PubAck(Ack::new(sent[0].packet_id)));
    assert!(c.received().is_empty());
}

#[test]
fn qos2_to_the_client_goes_publish_pubrec_pubrel_pubcomp() {
    let mut c = Client::new();
    c.connect(false, 0);
    c.event(Event::Mail(Delivery {
        message: message("t", QoS::ExactlyOnce),
        qos: QoS::ExactlyOnce,
        ids: Vec::new(),
        retain: false,
        shared: None,
    }));
    let id = c.publishes()[0].packet_id;
    c.send(Packet::PubRec(Ack::new(id)));
    assert_eq!(c.received(), vec![Packet::PubRel(Ack::new(id))]);
    c.send(Packet::PubComp(Ack::new(id)));
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
    c.send(Packet::PubRec(Ack::new(id)));
    assert!(
        c.received().is_empty(),
        "no PUBREL before the PUBREC commits"
    );
    let (command, _) = c.commit(Ok(Reply::Done));
    assert!(matches!(command, Command::Received { seq: 0, .. }));
    assert_eq!(c.received(), vec![Packet::PubRel(Ack::new(id))]);
    c.send(Packet::PubComp(Ack::new(id)));
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
        Packet::PubRel(Ack::new(first_id + 1)),
        "a released message only gets its PUBREL again"
    );
    let Packet::Publish(last) = &received[2] else {
        panic!("PUBLISH last");
    };
    assert!(!last.dup, "never sent before");
    assert_eq!(last.packet_id, first_id + 2, "ids follow the queue");
}

#[test]
fn a_taken_over_session_sends_nothing_more_and_keeps_its_acks() {
    let mut c = Client::new();
    c.node.queue.insert(0, queued(QoS::AtLeastOnce, false));
    c.connect(true, 0);
    let id = c.publishes()[0].packet_id;
    c.send(Packet::PubAck(Ack::new(id)));
    c.event(Event::Stop(Stop::TakenOver));
    assert_eq!(c.session.end(), Some(End::TakenOver));
    assert!(!c.session.wants_mail());
    c.node.queue.insert(1, queued(QoS::AtLeastOnce, false));
    c.event(Event::QueueGrew);
    assert!(c.received().is_empty(), "the queue is the new connection's");
    let closing = c.session.closing(0);
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
        c.session.closing(0).disconnect,
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
    c.send(Packet::Disconnect(Default::default()));
    assert_eq!(c.session.end(), Some(End::Graceful));
    assert!(matches!(
        c.session.closing(0).disconnect,
        Some(Command::Disconnect {
            publish_will: false,
            ..
        })
    ));
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
        properties: Default::default(),
    }));
    assert!(!c.session.wants_mail(), "CONNECT not yet committed");
    c.commit(Ok(Reply::Connected {
        session_present: false,
        previous: None,
    }));
    assert!(c.session.wants_mail());
}
