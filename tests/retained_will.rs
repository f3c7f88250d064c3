//! Retained messages (MQTT 3.1.1 section 3.3.1.3) and wills (section 3.1.2.5),
//! checked against a real broker process.

use std::time::Duration;

use rumqttc::QoS;
use starling_testkit::client::{self, Client};
use starling_testkit::raw::{self, Connect, Raw};
use starling_testkit::Broker;

#[tokio::test]
async fn mqtt_3_3_1_6_retained_message_sent_to_new_subscriber_with_retain_1() {
    let broker = Broker::start().await;
    let mut publisher = Client::connect(client::options(broker.port, "ret-pub")).await;
    publisher
        .publish("ret/state", QoS::AtLeastOnce, true, "on")
        .await;

    let mut sub = Client::connect(client::options(broker.port, "ret-sub")).await;
    sub.subscribe_ok("ret/#", QoS::AtLeastOnce).await;
    let got = sub.recv_publish(raw::WAIT).await;
    assert_eq!(got.topic, "ret/state");
    assert_eq!(&got.payload[..], b"on");
    assert!(
        got.retain,
        "sent because of a new subscription: RETAIN = 1 [MQTT-3.3.1-8]"
    );
    assert_eq!(got.qos, QoS::AtLeastOnce);
    sub.assert_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn mqtt_3_3_1_5_newer_retained_message_replaces_older() {
    let broker = Broker::start().await;
    let mut publisher = Client::connect(client::options(broker.port, "ret-pub")).await;
    publisher
        .publish("ret/state", QoS::AtLeastOnce, true, "v1")
        .await;
    publisher
        .publish("ret/state", QoS::AtLeastOnce, true, "v2")
        .await;

    let mut sub = Client::connect(client::options(broker.port, "ret-sub")).await;
    sub.subscribe_ok("ret/state", QoS::AtLeastOnce).await;
    let got = sub.recv_publish(raw::WAIT).await;
    assert_eq!(&got.payload[..], b"v2");
    assert!(got.retain);
    sub.assert_no_publish(Duration::from_millis(700)).await;
}

#[tokio::test]
async fn mqtt_3_3_1_10_empty_retained_payload_clears_retained_message() {
    let broker = Broker::start().await;
    let mut publisher = Client::connect(client::options(broker.port, "ret-pub")).await;
    publisher
        .publish("ret/state", QoS::AtLeastOnce, true, "v1")
        .await;
    publisher
        .publish("ret/state", QoS::AtLeastOnce, true, Vec::new())
        .await;

    let mut sub = Client::connect(client::options(broker.port, "ret-sub")).await;
    sub.subscribe_ok("ret/#", QoS::AtLeastOnce).await;
    sub.assert_no_publish(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn mqtt_3_3_1_9_forwarded_to_existing_subscriber_with_retain_0() {
    let broker = Broker::start().await;
    let mut sub = Client::connect(client::options(broker.port, "ret-sub")).await;
    sub.subscribe_ok("ret/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(client::options(broker.port, "ret-pub")).await;
    publisher
        .publish("ret/state", QoS::AtLeastOnce, true, "live")
        .await;

    let got = sub.recv_publish(raw::WAIT).await;
    assert_eq!(&got.payload[..], b"live");
    assert!(!got.retain, "normal forwarding: RETAIN = 0 [MQTT-3.3.1-9]");
}

/// A watcher subscribed to `wills/#` before anything else happens.
async fn will_watcher(broker: &Broker) -> Client {
    let mut watcher = Client::connect(client::options(broker.port, "watcher")).await;
    watcher.subscribe_ok("wills/#", QoS::AtLeastOnce).await;
    watcher
}

async fn assert_will(watcher: &mut Client, topic: &str, payload: &[u8]) {
    let got = watcher.recv_publish(raw::WAIT).await;
    assert_eq!(got.topic, topic);
    assert_eq!(&got.payload[..], payload);
    assert_eq!(got.qos, QoS::AtLeastOnce);
    watcher.assert_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_published_when_socket_closes_without_disconnect() {
    let broker = Broker::start().await;
    let mut watcher = will_watcher(&broker).await;
    let connect = Connect::v311("dies").will("wills/dies", b"bye", 1, false);
    let (conn, _) = Raw::connect(broker.port, &connect).await;
    drop(conn);
    assert_will(&mut watcher, "wills/dies", b"bye").await;
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_published_on_keepalive_expiry() {
    let broker = Broker::start().await;
    let mut watcher = will_watcher(&broker).await;
    let connect =
        Connect::v311("silent")
            .keep_alive(1)
            .will("wills/silent", b"timed out", 1, false);
    // Connected, then silent: the socket stays open, only the keepalive can end it.
    let (_conn, _) = Raw::connect(broker.port, &connect).await;
    assert_will(&mut watcher, "wills/silent", b"timed out").await;
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_published_on_protocol_violation() {
    let broker = Broker::start().await;
    let mut watcher = will_watcher(&broker).await;
    let connect = Connect::v311("violator").will("wills/violator", b"broke the rules", 1, false);
    let (mut conn, _) = Raw::connect(broker.port, &connect).await;
    let _ = conn.try_send(&connect.encode()).await;
    conn.expect_closed(raw::WAIT).await;
    assert_will(&mut watcher, "wills/violator", b"broke the rules").await;
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_published_on_takeover() {
    let broker = Broker::start().await;
    let mut watcher = will_watcher(&broker).await;
    let connect = Connect::v311("twin").will("wills/twin", b"replaced", 1, false);
    let (mut old, _) = Raw::connect(broker.port, &connect).await;
    let (_new, _) = Raw::connect(broker.port, &Connect::v311("twin")).await;
    old.expect_closed(raw::WAIT).await;
    assert_will(&mut watcher, "wills/twin", b"replaced").await;
}

#[tokio::test]
async fn mqtt_3_1_2_10_will_not_published_after_disconnect() {
    let broker = Broker::start().await;
    let mut watcher = will_watcher(&broker).await;
    let connect = Connect::v311("polite").will("wills/polite", b"should not appear", 1, false);
    let (mut conn, _) = Raw::connect(broker.port, &connect).await;
    conn.send(&raw::DISCONNECT).await;
    conn.expect_closed(raw::WAIT).await;
    watcher.assert_no_publish(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn mqtt_3_1_2_17_retained_will_kept_for_new_subscribers() {
    let broker = Broker::start().await;
    let connect = Connect::v311("status").will("status/device", b"offline", 1, true);
    let (conn, _) = Raw::connect(broker.port, &connect).await;
    drop(conn);

    // The will is due once the broker has seen the socket close; wait for it as
    // a new subscriber would, by subscribing until it shows up.
    let deadline = tokio::time::Instant::now() + raw::WAIT;
    loop {
        let mut sub = Client::connect(client::options(broker.port, "late")).await;
        sub.subscribe_ok("status/#", QoS::AtLeastOnce).await;
        if let Some(got) = sub.try_recv_publish(Duration::from_millis(300)).await {
            assert_eq!(&got.payload[..], b"offline");
            assert!(got.retain, "retained will [MQTT-3.1.2-17]");
            break;
        }
        sub.disconnect().await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "retained will never appeared"
        );
    }
}
