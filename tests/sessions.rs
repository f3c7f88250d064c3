//! Clean and persistent sessions, offline queues, SUBSCRIBE and UNSUBSCRIBE
//! (MQTT 3.1.1 sections 3.1.2.4, 3.8 to 3.11), checked against a real broker
//! process.

use std::time::Duration;

use rumqttc::QoS;
use starling_testkit::client::{self, Client};
use starling_testkit::raw::{self, Connect, Raw};
use starling_testkit::Broker;

#[tokio::test]
async fn mqtt_3_1_2_6_clean_session_subscriptions_gone_after_reconnect() {
    let broker = Broker::start().await;
    let mut sub = Client::connect(client::options(broker.port, "clean")).await;
    sub.subscribe_ok("clean/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut sub = Client::connect(client::options(broker.port, "clean")).await;
    assert!(!sub.session_present);
    let mut publisher = Client::connect(client::options(broker.port, "clean-pub")).await;
    publisher
        .publish("clean/x", QoS::AtLeastOnce, false, "lost")
        .await;
    sub.assert_no_publish(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn mqtt_3_1_2_4_persistent_session_keeps_subscriptions() {
    let broker = Broker::start().await;
    let mut sub = Client::connect(client::persistent(broker.port, "keeper")).await;
    sub.subscribe_ok("keep/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut sub = Client::connect(client::persistent(broker.port, "keeper")).await;
    assert!(sub.session_present);
    let mut publisher = Client::connect(client::options(broker.port, "keeper-pub")).await;
    publisher
        .publish("keep/x", QoS::AtLeastOnce, false, "kept")
        .await;
    let got = sub.recv_publish(raw::WAIT).await;
    assert_eq!(&got.payload[..], b"kept");
}

#[tokio::test]
async fn mqtt_3_1_2_5_qos1_and_qos2_published_while_offline_delivered_on_reconnect() {
    let broker = Broker::start().await;
    let mut sub = Client::connect(client::persistent(broker.port, "offline")).await;
    sub.subscribe_ok("offline/#", QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publisher = Client::connect(client::options(broker.port, "offline-pub")).await;
    publisher
        .publish("offline/1", QoS::AtLeastOnce, false, "one")
        .await;
    publisher
        .publish("offline/2", QoS::ExactlyOnce, false, "two")
        .await;

    let mut sub = Client::connect(client::persistent(broker.port, "offline")).await;
    assert!(sub.session_present);
    let first = sub.recv_publish(raw::WAIT).await;
    assert_eq!(
        (first.topic.as_str(), &first.payload[..]),
        ("offline/1", &b"one"[..])
    );
    assert_eq!(first.qos, QoS::AtLeastOnce);
    let second = sub.recv_publish(raw::WAIT).await;
    assert_eq!(
        (second.topic.as_str(), &second.payload[..]),
        ("offline/2", &b"two"[..])
    );
    assert_eq!(second.qos, QoS::ExactlyOnce);
    sub.assert_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn max_queued_messages_keeps_the_oldest_and_drops_new_arrivals() {
    let broker = Broker::start_with("[mqtt]\nmax_queued_messages = 5\n").await;
    let mut sub = Client::connect(client::persistent(broker.port, "queue")).await;
    sub.subscribe_ok("queue/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = Client::connect(client::options(broker.port, "queue-pub")).await;
    for i in 0..10 {
        publisher
            .publish("queue/x", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }

    let mut sub = Client::connect(client::persistent(broker.port, "queue")).await;
    assert!(sub.session_present);
    let mut got = Vec::new();
    while let Some(publish) = sub.try_recv_publish(Duration::from_secs(1)).await {
        got.push(String::from_utf8_lossy(&publish.payload).into_owned());
        assert!(
            got.len() <= 10,
            "more messages than were published: {got:?}"
        );
    }
    assert_eq!(got, ["0", "1", "2", "3", "4"], "the oldest five, in order");
}

#[tokio::test]
async fn mqtt_3_9_3_1_suback_has_one_return_code_per_filter_in_order() {
    let broker = Broker::start().await;
    let (mut conn, _) = Raw::connect(broker.port, &Connect::v311("suback")).await;
    conn.send(&raw::subscribe(
        77,
        &[("a/b", 0), ("c/+", 1), ("d/#", 2), ("e/f", 1)],
    ))
    .await;
    let (pkid, codes) = conn.expect(raw::WAIT).await.suback();
    assert_eq!(pkid, 77, "SUBACK packet id [MQTT-3.8.4-2]");
    assert_eq!(
        codes,
        [0, 1, 2, 1],
        "one return code per filter, in order [MQTT-3.9.3-1]"
    );

    // The subscriptions are in force.
    let mut publisher = Client::connect(client::options(broker.port, "suback-pub")).await;
    publisher
        .publish("e/f", QoS::AtLeastOnce, false, "ok")
        .await;
    let got = conn.expect_publish(raw::WAIT).await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("e/f", &b"ok"[..])
    );
}

/// A filter with a misplaced wildcard makes SUBSCRIBE malformed: in MQTT 3.1.1
/// that is a protocol violation, and the connection is closed [MQTT-4.8.0-1].
#[tokio::test]
async fn mqtt_4_7_1_2_misplaced_wildcard_in_filter_closes_connection() {
    let broker = Broker::start().await;
    let (mut conn, _) = Raw::connect(broker.port, &Connect::v311("badfilter")).await;
    conn.send(&raw::subscribe(5, &[("a/b", 0), ("a/#/b", 1)]))
        .await;
    conn.expect_closed(raw::WAIT).await;
}

#[tokio::test]
async fn mqtt_3_10_4_unsubscribe_stops_delivery() {
    let broker = Broker::start().await;
    let (mut conn, _) = Raw::connect(broker.port, &Connect::v311("unsub")).await;
    conn.subscribe(1, &[("unsub/#", 0)]).await;
    let mut publisher = Client::connect(client::options(broker.port, "unsub-pub")).await;
    publisher
        .publish("unsub/x", QoS::AtLeastOnce, false, "before")
        .await;
    assert_eq!(conn.expect_publish(raw::WAIT).await.payload, b"before");

    conn.send(&raw::unsubscribe(9, &["unsub/#"])).await;
    let unsuback = conn.expect(raw::WAIT).await;
    assert_eq!(unsuback.first_byte, 0xB0, "UNSUBACK");
    assert_eq!(unsuback.pkid(), 9, "UNSUBACK packet id [MQTT-3.10.4-4]");

    publisher
        .publish("unsub/x", QoS::AtLeastOnce, false, "after")
        .await;
    conn.expect_silence(Duration::from_secs(1)).await;
}
