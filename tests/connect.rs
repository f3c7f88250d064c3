//! CONNECT, CONNACK, session takeover and keepalive (MQTT 3.1.1 sections 3.1, 3.2,
//! 3.12, 3.13), checked against a real broker process.

use std::time::{Duration, Instant};

use rumqttc::QoS;
use starling_testkit::client::{self, Client};
use starling_testkit::raw::{self, kind, Connect, Raw, Read};
use starling_testkit::Broker;

#[tokio::test]
async fn mqtt_3_1_2_1_protocol_level_3_mqisdp_accepted() {
    let broker = Broker::start().await;
    let mut connect = Connect::v311("old-client");
    connect.protocol_name = b"MQIsdp".to_vec();
    connect.level = 3;
    let (mut conn, session_present, code) = Raw::connect_with(broker.port, &connect).await;
    assert_eq!(code, 0, "CONNACK return code for MQTT 3.1");
    assert!(!session_present);
    // The connection is usable afterwards.
    conn.send(&raw::PINGREQ).await;
    assert_eq!(conn.expect(raw::WAIT).await.kind(), kind::PINGRESP);
}

#[tokio::test]
async fn mqtt_3_1_2_2_protocol_level_4_accepted() {
    let broker = Broker::start().await;
    let (_conn, session_present, code) =
        Raw::connect_with(broker.port, &Connect::v311("new-client")).await;
    assert_eq!(code, 0, "CONNACK return code for MQTT 3.1.1");
    assert!(!session_present);
}

#[tokio::test]
async fn mqtt_3_1_2_2_unknown_protocol_level_refused_with_0x01_and_closed() {
    let broker = Broker::start().await;
    let mut connect = Connect::v311("future-client");
    connect.level = 9;
    let (mut conn, session_present, code) = Raw::connect_with(broker.port, &connect).await;
    assert_eq!(code, 0x01, "unacceptable protocol version");
    assert!(
        !session_present,
        "session present must be 0 with a non-zero code [MQTT-3.2.2-4]"
    );
    conn.expect_closed(raw::WAIT).await;
}

#[tokio::test]
async fn mqtt_3_1_3_6_empty_client_id_with_clean_session_accepted() {
    let broker = Broker::start().await;
    let (mut conn, session_present) = Raw::connect(broker.port, &Connect::v311("")).await;
    assert!(!session_present);
    // The server assigned an id and the session works.
    conn.subscribe(1, &[("anon/#", 1)]).await;
    conn.send(&raw::publish(b"anon/x", 1, false, false, 7, b"hello"))
        .await;
    let mut got_puback = false;
    let mut got_publish = false;
    while !(got_puback && got_publish) {
        let packet = conn.expect(raw::WAIT).await;
        match packet.kind() {
            kind::PUBACK => {
                assert_eq!(packet.pkid(), 7);
                got_puback = true;
            }
            kind::PUBLISH => {
                let publish = packet.publish();
                assert_eq!(publish.payload, b"hello");
                conn.send(&raw::puback(publish.pkid)).await;
                got_publish = true;
            }
            _ => panic!("unexpected {packet:?}"),
        }
    }
}

#[tokio::test]
async fn mqtt_3_1_3_8_empty_client_id_without_clean_session_refused_with_0x02() {
    let broker = Broker::start().await;
    let connect = Connect::v311("").clean_session(false);
    let (mut conn, session_present, code) = Raw::connect_with(broker.port, &connect).await;
    assert_eq!(code, 0x02, "identifier rejected");
    assert!(!session_present);
    conn.expect_closed(raw::WAIT).await;
}

#[tokio::test]
async fn mqtt_3_2_2_1_session_present_0_for_clean_session() {
    let broker = Broker::start().await;
    // A persistent session exists for the id...
    let mut first = Client::connect(client::persistent(broker.port, "sp-clean")).await;
    assert!(!first.session_present, "new session [MQTT-3.2.2-3]");
    first.subscribe_ok("sp/#", QoS::AtLeastOnce).await;
    first.disconnect().await;
    // ...and a clean-session CONNECT discards it and reports no session.
    let second = Client::connect(client::options(broker.port, "sp-clean")).await;
    assert!(!second.session_present, "clean session [MQTT-3.2.2-1]");
    second.disconnect().await;
    // The persistent session is gone too.
    let third = Client::connect(client::persistent(broker.port, "sp-clean")).await;
    assert!(
        !third.session_present,
        "the clean session discarded the old one"
    );
}

#[tokio::test]
async fn mqtt_3_2_2_2_session_present_1_when_resuming_persistent_session() {
    let broker = Broker::start().await;
    let mut first = Client::connect(client::persistent(broker.port, "sp-resume")).await;
    assert!(!first.session_present, "new session [MQTT-3.2.2-3]");
    first.subscribe_ok("sp/#", QoS::AtLeastOnce).await;
    first.disconnect().await;
    let second = Client::connect(client::persistent(broker.port, "sp-resume")).await;
    assert!(second.session_present, "resumed session [MQTT-3.2.2-2]");
}

#[tokio::test]
async fn mqtt_3_1_0_2_second_connect_closes_connection() {
    let broker = Broker::start().await;
    let (mut conn, _) = Raw::connect(broker.port, &Connect::v311("twice")).await;
    // Whatever the broker thinks of the send, it must close the connection.
    let _ = conn.try_send(&Connect::v311("twice").encode()).await;
    conn.expect_closed(raw::WAIT).await;
}

#[tokio::test]
async fn mqtt_3_1_4_2_takeover_closes_old_connection_and_publishes_its_will() {
    let broker = Broker::start().await;
    let mut watcher = Client::connect(client::options(broker.port, "watcher")).await;
    watcher.subscribe_ok("wills/#", QoS::AtLeastOnce).await;

    let connect = Connect::v311("taken-over").will("wills/taken-over", b"gone", 1, false);
    let (mut old, _) = Raw::connect(broker.port, &connect).await;

    let new = Client::connect(client::options(broker.port, "taken-over")).await;
    old.expect_closed(raw::WAIT).await;

    let will = watcher.recv_publish(raw::WAIT).await;
    assert_eq!(will.topic, "wills/taken-over");
    assert_eq!(&will.payload[..], b"gone");
    assert_eq!(will.qos, QoS::AtLeastOnce);
    // The new connection is the one that lives on.
    new.assert_connected();
    watcher.assert_no_publish(Duration::from_millis(500)).await;
    new.assert_connected();
}

#[tokio::test]
async fn mqtt_3_1_2_24_keepalive_expiry_closes() {
    let broker = Broker::start().await;
    let (mut conn, _) = Raw::connect(broker.port, &Connect::v311("sleepy").keep_alive(1)).await;
    let connected = Instant::now();
    // Not before the keepalive itself has passed...
    match conn.read(Duration::from_secs(1)).await {
        Read::Timeout => {}
        Read::Closed => panic!(
            "closed after {:?}, before the 1 s keepalive",
            connected.elapsed()
        ),
        Read::Packet(packet) => panic!("unexpected {packet:?}"),
    }
    // ...and within one and a half times it, with some slack for a busy machine.
    conn.expect_closed(Duration::from_secs(2)).await;
    let after = connected.elapsed();
    assert!(
        after <= Duration::from_secs(3),
        "closed only after {after:?}"
    );
}

#[tokio::test]
async fn mqtt_3_12_4_1_pingreq_gets_pingresp_and_keeps_connection_alive() {
    let broker = Broker::start().await;
    let (mut conn, _) = Raw::connect(broker.port, &Connect::v311("pinger").keep_alive(1)).await;
    // Three seconds of pings every half second: twice the 1.5 s grace period.
    for _ in 0..6 {
        conn.send(&raw::PINGREQ).await;
        let packet = conn.expect(raw::WAIT).await;
        assert_eq!(packet.first_byte, raw::PINGRESP[0]);
        assert!(packet.body.is_empty(), "PINGRESP has no body");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
