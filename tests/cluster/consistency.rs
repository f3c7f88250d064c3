//! What one node commits, every other node acts on at once: a subscription is
//! in force cluster-wide when its SUBACK is sent, a retained message is
//! served everywhere when its PUBACK is sent.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::QoS;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;
use starling_testkit::raw;

/// Each ordered pair of distinct nodes of a three-node cluster.
const PAIRS: [(u64, u64); 6] = [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)];

#[tokio::test]
async fn subscription_on_a_receives_publish_on_b_right_after_suback() {
    let cluster = Cluster::start_fast(3).await;
    let mut subscribers = BTreeMap::new();
    let mut publishers = BTreeMap::new();
    for id in cluster.ids() {
        let port = cluster.mqtt(id);
        subscribers.insert(
            id,
            Client::connect(client::options(port, &format!("d-sub-{id}"))).await,
        );
        publishers.insert(
            id,
            Client::connect(client::options(port, &format!("d-pub-{id}"))).await,
        );
    }

    for level in 0..=2u8 {
        for (a, b) in PAIRS {
            // A topic of its own, so that only this subscription can match.
            let topic = format!("d/q{level}/{a}-{b}");
            let body = format!("QoS {level} from node {b} to node {a}");
            let subscriber = subscribers.get_mut(&a).expect("subscriber");
            subscriber.subscribe_ok(&topic, client::qos(level)).await;
            // No pause: the SUBACK promises the subscription is in force.
            publishers
                .get_mut(&b)
                .expect("publisher")
                .publish(&topic, client::qos(level), false, body.clone())
                .await;
            let got = subscriber.recv_publish(raw::WAIT).await;
            assert_eq!(got.topic, topic);
            assert_eq!(&got.payload[..], body.as_bytes());
            assert_eq!(client::level(got.qos), level, "delivered at QoS {level}");
            assert!(!got.retain);
        }
    }
    for subscriber in subscribers.values_mut() {
        subscriber
            .assert_no_publish(Duration::from_millis(300))
            .await;
    }
}

#[tokio::test]
async fn retained_set_on_a_is_served_by_b_right_after_puback() {
    let cluster = Cluster::start_fast(3).await;
    for (a, b) in [(1, 2), (2, 3), (3, 1)] {
        let topic = format!("c/retained/{a}-{b}");
        let mut setter =
            Client::connect(client::options(cluster.mqtt(a), &format!("c-set-{a}-{b}"))).await;
        // Readers connected beforehand, so that only the SUBSCRIBE separates
        // the PUBACK from the answer.
        let mut readers = Vec::new();
        for n in 0..3 {
            readers.push(
                Client::connect(client::options(
                    cluster.mqtt(b),
                    &format!("c-get-{a}-{b}-{n}"),
                ))
                .await,
            );
        }
        let mut readers = readers.into_iter();
        let mut next_reader = || readers.next().expect("a reader per check");

        // Set (QoS 1: PUBACK), then replace (QoS 2: PUBCOMP): B must never
        // serve a value older than the last acknowledged one.
        for (value, qos) in [("v1", QoS::AtLeastOnce), ("v2", QoS::ExactlyOnce)] {
            setter.publish(&topic, qos, true, value).await;
            let mut reader = next_reader();
            reader.subscribe_ok(&topic, QoS::ExactlyOnce).await;
            let got = reader.recv_publish(raw::WAIT).await;
            assert_eq!(got.topic, topic);
            assert_eq!(
                String::from_utf8_lossy(&got.payload),
                value,
                "node {b} serves the value set through node {a}"
            );
            assert!(got.retain, "sent because of a new subscription: RETAIN = 1");
            assert_eq!(got.qos, qos, "min(publish QoS, subscription QoS)");
            reader.assert_no_publish(Duration::from_millis(300)).await;
        }

        // Clear it: B must stop serving it as soon as the clear is acknowledged.
        setter
            .publish(&topic, QoS::AtLeastOnce, true, Vec::new())
            .await;
        let mut reader = next_reader();
        reader.subscribe_ok(&topic, QoS::AtLeastOnce).await;
        reader.assert_no_publish(Duration::from_millis(500)).await;
    }
}
