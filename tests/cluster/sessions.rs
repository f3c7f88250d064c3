//! A persistent session belongs to the cluster, not to a node: it resumes on
//! any node with its subscriptions, its queued messages and its in-flight
//! ones, which are sent again with DUP and their packet ids [MQTT-4.4.0-1].

use std::time::Duration;

use rumqttc::QoS;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;
use starling_testkit::raw::{self, Connect, Raw};
use starling_testkit::traffic::{parse_seq, payload};

#[tokio::test]
async fn persistent_session_resumes_on_another_node_with_queued_messages() {
    let cluster = Cluster::start_fast(3).await;
    let connect = Connect::v311("g-roamer").clean_session(false);
    let (mut roamer, session_present) = Raw::connect(cluster.mqtt(1), &connect).await;
    assert!(!session_present, "a new session");
    roamer.subscribe(1, &[("g/roam", 1)]).await;

    let mut publisher = Client::connect(client::options(cluster.mqtt(2), "g-pub")).await;
    for seq in 0..2 {
        publisher
            .publish("g/roam", QoS::AtLeastOnce, false, payload(seq))
            .await;
    }
    // Received, never acknowledged.
    let mut in_flight = Vec::new();
    for seq in 0..2 {
        let publish = roamer.expect_publish(raw::WAIT).await;
        assert_eq!(parse_seq(&publish.payload), Some(seq));
        assert_eq!(publish.qos, 1);
        in_flight.push(publish);
    }
    roamer.send(&raw::DISCONNECT).await;
    roamer.expect_closed(raw::WAIT).await;

    // Queued while the session is offline.
    for seq in 2..4 {
        publisher
            .publish("g/roam", QoS::AtLeastOnce, false, payload(seq))
            .await;
    }

    let (mut roamer, session_present) = Raw::connect(cluster.mqtt(3), &connect).await;
    assert!(session_present, "the session resumes on node 3");
    for sent in &in_flight {
        let again = roamer.expect_publish(raw::WAIT).await;
        assert_eq!(
            again.payload, sent.payload,
            "in-flight messages first, in order"
        );
        assert!(again.dup, "sent again with DUP = 1 [MQTT-3.3.1-1]");
        assert_eq!(again.pkid, sent.pkid, "sent again with its packet id");
        roamer.send(&raw::puback(again.pkid)).await;
    }
    for seq in 2..4 {
        let queued = roamer.expect_publish(raw::WAIT).await;
        assert_eq!(
            parse_seq(&queued.payload),
            Some(seq),
            "queued messages in order"
        );
        assert_eq!(queued.qos, 1);
        assert!(
            in_flight.iter().all(|sent| sent.pkid != queued.pkid),
            "packet id {} of a queued message is still in use",
            queued.pkid
        );
        roamer.send(&raw::puback(queued.pkid)).await;
    }
    roamer.expect_silence(Duration::from_millis(500)).await;

    // The subscription is in force on the new node, for publishes from any node.
    let mut elsewhere = Client::connect(client::options(cluster.mqtt(1), "g-pub-1")).await;
    elsewhere
        .publish("g/roam", QoS::AtLeastOnce, false, payload(4))
        .await;
    let live = roamer.expect_publish(raw::WAIT).await;
    assert_eq!(parse_seq(&live.payload), Some(4));
    assert!(!live.dup, "a first delivery");
    roamer.send(&raw::puback(live.pkid)).await;
    roamer.expect_silence(Duration::from_millis(500)).await;
}

/// A QoS 2 message in flight to a subscriber whose node dies is sent again by
/// the node the session resumes on, with its packet id and DUP = 1
/// [MQTT-4.4.0-1] [MQTT-3.3.1-1]: never as a new message reusing an id the
/// subscriber still holds [MQTT-2.3.1-2]. Both nodes are followers, where the
/// leader's reply to CONNECT may arrive before the node applied it itself.
#[tokio::test]
async fn qos2_in_flight_is_sent_again_with_dup_after_its_node_dies() {
    let mut cluster = Cluster::start_fast(3).await;
    let leader = cluster.leader().await.unwrap_or(1);
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let (doomed, survivor) = (followers[0], followers[1]);
    eprintln!("leader {leader}, subscriber on {doomed}, then on {survivor}");

    let connect = Connect::v311("h-holder").clean_session(false);
    let (mut holder, _) = Raw::connect(cluster.mqtt(doomed), &connect).await;
    holder.subscribe(1, &[("h/q2", 2)]).await;
    let mut publisher = Client::connect(client::options(cluster.mqtt(leader), "h-pub")).await;
    for seq in 0..2 {
        publisher
            .publish("h/q2", QoS::ExactlyOnce, false, payload(seq))
            .await;
    }
    // Received; the node dies before PUBREC could be sent.
    let mut in_flight = Vec::new();
    for seq in 0..2 {
        let publish = holder.expect_publish(raw::WAIT).await;
        assert_eq!(parse_seq(&publish.payload), Some(seq));
        assert!(!publish.dup, "a first delivery");
        in_flight.push(publish);
    }
    cluster.kill9(doomed);
    drop(holder);

    // At once, before the node is declared down: a takeover.
    let (mut holder, session_present) = Raw::connect(cluster.mqtt(survivor), &connect).await;
    assert!(session_present, "the session resumes on node {survivor}");
    for sent in &in_flight {
        let again = holder.expect_publish(raw::WAIT).await;
        assert_eq!(again.payload, sent.payload, "in order");
        assert_eq!(again.pkid, sent.pkid, "with its packet id [MQTT-4.4.0-1]");
        assert!(
            again.dup,
            "packet id {} sent again without DUP [MQTT-3.3.1-1]",
            again.pkid
        );
        holder.send(&raw::pubrec(again.pkid)).await;
    }
    for sent in &in_flight {
        let pubrel = holder.expect(raw::WAIT).await;
        assert_eq!(pubrel.kind(), raw::kind::PUBREL);
        assert_eq!(pubrel.pkid(), sent.pkid);
        holder.send(&raw::pubcomp(sent.pkid)).await;
    }

    // A message queued after the resume is new: no DUP.
    publisher
        .publish("h/q2", QoS::ExactlyOnce, false, payload(2))
        .await;
    let fresh = holder.expect_publish(raw::WAIT).await;
    assert_eq!(parse_seq(&fresh.payload), Some(2));
    assert!(!fresh.dup, "a first delivery");
    holder.send(&raw::pubrec(fresh.pkid)).await;
    let pubrel = holder.expect(raw::WAIT).await;
    assert_eq!(pubrel.kind(), raw::kind::PUBREL);
    holder.send(&raw::pubcomp(fresh.pkid)).await;
    holder.expect_silence(Duration::from_millis(500)).await;
}
