//! PUBLISH and its acknowledgement flows at QoS 0, 1 and 2 (MQTT 3.1.1 sections
//! 3.3 to 3.7 and 4.3 to 4.6), checked against a real broker process.

use std::time::Duration;

use rumqttc::QoS;
use starling_testkit::client::{self, Client};
use starling_testkit::raw::{self, kind, Connect, Raw};
use starling_testkit::Broker;

#[tokio::test]
async fn mqtt_3_8_4_6_delivered_at_the_minimum_of_publish_and_subscription_qos() {
    let broker = Broker::start().await;
    let mut subscribers = Vec::new();
    for sub in 0..=2u8 {
        let mut subscriber =
            Client::connect(client::options(broker.port, &format!("sub-q{sub}"))).await;
        subscriber
            .subscribe_ok(&format!("qos/s{sub}/#"), client::qos(sub))
            .await;
        subscribers.push(subscriber);
    }
    let mut publisher = Client::connect(client::options(broker.port, "pub")).await;
    for sub in 0..=2u8 {
        for publ in 0..=2u8 {
            let topic = format!("qos/s{sub}/p{publ}");
            // Returns once PUBACK / PUBCOMP arrived for QoS 1 / 2.
            publisher
                .publish(&topic, client::qos(publ), false, topic.clone())
                .await;
            let got = subscribers[usize::from(sub)].recv_publish(raw::WAIT).await;
            assert_eq!(got.topic, topic);
            assert_eq!(&got.payload[..], topic.as_bytes());
            assert_eq!(
                client::level(got.qos),
                publ.min(sub),
                "published at QoS {publ}, subscribed at QoS {sub}"
            );
            assert!(!got.retain);
        }
    }
    for subscriber in &mut subscribers {
        subscriber
            .assert_no_publish(Duration::from_millis(300))
            .await;
    }
}

#[tokio::test]
async fn mqtt_4_3_3_qos2_flow_completes_on_both_sides() {
    let broker = Broker::start().await;
    let (mut sub, _) = Raw::connect(broker.port, &Connect::v311("q2-sub")).await;
    sub.subscribe(1, &[("q2/#", 2)]).await;
    let (mut publ, _) = Raw::connect(broker.port, &Connect::v311("q2-pub")).await;

    // Publisher side: PUBLISH -> PUBREC, PUBREL -> PUBCOMP.
    publ.send(&raw::publish(b"q2/x", 2, false, false, 42, b"exactly once"))
        .await;
    let pubrec = publ.expect(raw::WAIT).await;
    assert_eq!(pubrec.first_byte, 0x50, "PUBREC");
    assert_eq!(pubrec.pkid(), 42);
    publ.send(&raw::pubrel(42)).await;
    let pubcomp = publ.expect(raw::WAIT).await;
    assert_eq!(pubcomp.first_byte, 0x70, "PUBCOMP");
    assert_eq!(pubcomp.pkid(), 42);

    // Subscriber side: PUBLISH <- , PUBREC ->, PUBREL <-, PUBCOMP ->.
    let publish = sub.expect_publish(raw::WAIT).await;
    assert_eq!(publish.qos, 2);
    assert_eq!(publish.payload, b"exactly once");
    assert!(!publish.dup);
    assert_ne!(
        publish.pkid, 0,
        "QoS 2 needs a non-zero packet id [MQTT-2.3.1-1]"
    );
    sub.send(&raw::pubrec(publish.pkid)).await;
    let pubrel = sub.expect(raw::WAIT).await;
    assert_eq!(
        pubrel.first_byte, 0x62,
        "PUBREL with flags 0010 [MQTT-3.6.1-1]"
    );
    assert_eq!(pubrel.pkid(), publish.pkid);
    sub.send(&raw::pubcomp(publish.pkid)).await;
    sub.expect_silence(Duration::from_millis(500)).await;
    publ.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn mqtt_4_3_3_2_qos2_resent_publish_before_pubrel_delivered_once() {
    let broker = Broker::start().await;
    let mut sub = Client::connect(client::options(broker.port, "dedup-sub")).await;
    sub.subscribe_ok("dedup/#", QoS::ExactlyOnce).await;
    let (mut publ, _) = Raw::connect(broker.port, &Connect::v311("dedup-pub")).await;

    publ.send(&raw::publish(b"dedup/x", 2, false, false, 5, b"once"))
        .await;
    assert_eq!(publ.expect(raw::WAIT).await.first_byte, 0x50, "PUBREC");
    // The publisher did not see the PUBREC in time and sends the PUBLISH again.
    publ.send(&raw::publish(b"dedup/x", 2, false, true, 5, b"once"))
        .await;
    assert_eq!(
        publ.expect(raw::WAIT).await.first_byte,
        0x50,
        "PUBREC again"
    );
    publ.send(&raw::pubrel(5)).await;
    let pubcomp = publ.expect(raw::WAIT).await;
    assert_eq!((pubcomp.first_byte, pubcomp.pkid()), (0x70, 5), "PUBCOMP");

    let got = sub.recv_publish(raw::WAIT).await;
    assert_eq!(&got.payload[..], b"once");
    sub.assert_no_publish(Duration::from_millis(700)).await;
}

#[tokio::test]
async fn max_inflight_limits_unacknowledged_qos1_deliveries() {
    let broker = Broker::start_with("[mqtt]\nmax_inflight = 2\n").await;
    let (mut sub, _) = Raw::connect(broker.port, &Connect::v311("slow-sub")).await;
    sub.subscribe(1, &[("window/#", 1)]).await;
    let mut publisher = Client::connect(client::options(broker.port, "fast-pub")).await;
    for i in 0..5 {
        publisher
            .publish("window/x", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }

    let first = sub.expect_publish(raw::WAIT).await;
    let second = sub.expect_publish(raw::WAIT).await;
    assert_eq!(
        (first.payload.as_slice(), second.payload.as_slice()),
        (&b"m0"[..], &b"m1"[..])
    );
    // Two unacknowledged: the window is full.
    sub.expect_silence(Duration::from_secs(1)).await;

    sub.send(&raw::puback(first.pkid)).await;
    let third = sub.expect_publish(raw::WAIT).await;
    assert_eq!(third.payload, b"m2", "one ack opens one slot");
    sub.expect_silence(Duration::from_millis(500)).await;

    sub.send(&raw::puback(second.pkid)).await;
    sub.send(&raw::puback(third.pkid)).await;
    for want in ["m3", "m4"] {
        let publish = sub.expect_publish(raw::WAIT).await;
        assert_eq!(publish.payload, want.as_bytes());
        sub.send(&raw::puback(publish.pkid)).await;
    }
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn mqtt_4_4_0_1_unacknowledged_qos1_resent_with_dup_on_reconnect() {
    let broker = Broker::start().await;
    let connect = Connect::v311("redeliver").clean_session(false);
    let (mut sub, _) = Raw::connect(broker.port, &connect).await;
    sub.subscribe(1, &[("redeliver/#", 1)]).await;

    let mut publisher = Client::connect(client::options(broker.port, "redeliver-pub")).await;
    publisher
        .publish("redeliver/x", QoS::AtLeastOnce, false, "payload-1")
        .await;
    let first = sub.expect_publish(raw::WAIT).await;
    assert_eq!(first.payload, b"payload-1");
    assert!(!first.dup, "first delivery has DUP = 0 [MQTT-3.3.1-3]");
    // Drop the connection without acknowledging.
    drop(sub);

    let (mut sub, session_present) = Raw::connect(broker.port, &connect).await;
    assert!(session_present);
    let again = sub.expect_publish(raw::WAIT).await;
    assert!(again.dup, "a re-sent PUBLISH has DUP = 1 [MQTT-3.3.1-1]");
    assert_eq!(again.payload, b"payload-1");
    assert_eq!(again.qos, 1);
    assert_eq!(again.topic, "redeliver/x");
    assert_eq!(again.pkid, first.pkid, "original packet id [MQTT-4.4.0-1]");
    sub.send(&raw::puback(again.pkid)).await;
    sub.expect_silence(Duration::from_millis(500)).await;

    // Acknowledged now: a third connection gets nothing.
    drop(sub);
    let (mut sub, _) = Raw::connect(broker.port, &connect).await;
    sub.expect_silence(Duration::from_millis(700)).await;
}

#[tokio::test]
async fn mqtt_3_3_5_1_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let broker = Broker::start().await;
    let (mut sub, _) = Raw::connect(broker.port, &Connect::v311("overlap")).await;
    sub.subscribe(1, &[("a/+", 1), ("a/#", 2)]).await;
    let mut publisher = Client::connect(client::options(broker.port, "overlap-pub")).await;
    publisher
        .publish("a/b", QoS::ExactlyOnce, false, "both")
        .await;

    let publish = sub.expect_publish(raw::WAIT).await;
    assert_eq!(publish.payload, b"both");
    assert_eq!(publish.qos, 2, "the higher of the matching subscriptions");
    sub.send(&raw::pubrec(publish.pkid)).await;
    let pubrel = sub.expect(raw::WAIT).await;
    assert_eq!(
        pubrel.kind(),
        kind::PUBREL,
        "expected PUBREL, not a second copy"
    );
    sub.send(&raw::pubcomp(publish.pkid)).await;
    sub.expect_silence(Duration::from_millis(700)).await;
}
