//! Nodes die (kill -9) while clients publish and subscribe: whatever a
//! publisher got an acknowledgement for is delivered (QoS 1 at least once,
//! QoS 2 exactly once, in order), persistent sessions survive on the other
//! nodes, and a whole cluster restarted from disk has lost nothing.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use rumqttc::QoS;
use tokio::time::Instant;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;
use starling_testkit::raw::{self, kind, Connect, Raw};
use starling_testkit::subscribers::Subscriber;
use starling_testkit::traffic::{
    self, assert_delivered_in_order, connect_retry, parse_seq, payload, summary, wait_until, Live,
    Publisher,
};

/// Longest wait for a publisher to get a given number of new acks.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(15);
/// Longest wait, once publishing stopped, for every acknowledged message.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(20);

const Q1: &str = "a/q1";
const Q2: &str = "a/q2";

/// Kills `victim` while the publishers go on, and restarts it; the
/// publishers must make progress while it is down and after it is back.
async fn kill_and_restart(
    cluster: &mut Cluster,
    live: &Live,
    victim: u64,
    publishers: &mut [&mut Publisher],
) {
    live.remove(victim);
    cluster.kill9(victim);
    for publisher in publishers.iter_mut() {
        publisher
            .wait_progress(20, PROGRESS_DEADLINE, &format!("with node {victim} killed"))
            .await;
    }
    cluster.restart(victim).await;
    live.add(victim, cluster.mqtt(victim));
    for publisher in publishers.iter_mut() {
        publisher
            .wait_progress(
                20,
                PROGRESS_DEADLINE,
                &format!("after node {victim} came back"),
            )
            .await;
    }
}

#[tokio::test]
async fn acknowledged_messages_survive_repeated_node_kills() {
    let mut cluster = Cluster::start_fast(3).await;
    let live = Live::new(cluster.ids().into_iter().map(|id| (id, cluster.mqtt(id))));

    // Subscribers first: a message published before their SUBACK reaches no one.
    let q1_sub = Subscriber::start(&live, 3, "a-sub-q1", &[(Q1, 1)]).await;
    let q2_sub = Subscriber::start(&live, 1, "a-sub-q2", &[(Q2, 2)]).await;
    // Gets the QoS 2 messages at QoS 1 too.
    let all_sub = Subscriber::start(&live, 2, "a-sub-all", &[("a/#", 1)]).await;
    let mut q1_pub = Publisher::start(&live, 1, "a-pub-q1", Q1, 1);
    let mut q2_pub = Publisher::start(&live, 2, "a-pub-q2", Q2, 2);
    for publisher in [&mut q1_pub, &mut q2_pub] {
        publisher
            .wait_progress(30, PROGRESS_DEADLINE, "before any kill")
            .await;
    }

    // The QoS 1 subscriber's node, then the QoS 1 publisher's (and the QoS 2
    // subscriber's), then the leader; each is back before the next kill.
    kill_and_restart(&mut cluster, &live, 3, &mut [&mut q1_pub, &mut q2_pub]).await;
    kill_and_restart(&mut cluster, &live, 1, &mut [&mut q1_pub, &mut q2_pub]).await;
    let leader = cluster.leader().await;
    eprintln!("leader before the third kill: {leader:?}");
    kill_and_restart(
        &mut cluster,
        &live,
        leader.unwrap_or(2),
        &mut [&mut q1_pub, &mut q2_pub],
    )
    .await;

    let q1_acked = q1_pub.finish().await;
    let q2_acked = q2_pub.finish().await;
    let all_delivered = wait_until(DELIVERY_DEADLINE, || {
        q1_sub.done_waiting(Q1, &q1_acked)
            && q2_sub.done_waiting(Q2, &q2_acked)
            && all_sub.done_waiting(Q1, &q1_acked)
            && all_sub.done_waiting(Q2, &q2_acked)
    })
    .await;
    eprintln!("every acknowledged message delivered in time: {all_delivered}");
    // Give late duplicates a chance to show up before judging.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let q1 = q1_sub.finish().await;
    let q2 = q2_sub.finish().await;
    let all = all_sub.finish().await;
    assert_delivered_in_order("a-sub-q1", &q1, Q1, &q1_acked);
    assert_delivered_in_order("a-sub-q2", &q2, Q2, &q2_acked);
    assert_delivered_in_order("a-sub-all", &all, Q1, &q1_acked);
    assert_delivered_in_order("a-sub-all", &all, Q2, &q2_acked);
    let duplicates = q2.duplicates(Q2);
    assert!(
        duplicates.is_empty(),
        "QoS 2 messages delivered more than once (sequence number -> times): {duplicates:?}"
    );
    // Their nodes were killed in the first two rounds; where a-sub-all is
    // depends on which node leads.
    for (name, deliveries) in [("a-sub-q1", &q1), ("a-sub-q2", &q2)] {
        assert!(
            deliveries.connections > 1,
            "{name} never had to move: the kills did not exercise it"
        );
    }
}

/// Runs the subscriber's side of QoS 2 on `conn` until `count` distinct
/// messages were delivered and completed; returns their sequence numbers in
/// delivery order. A PUBLISH whose id awaits PUBREL is not delivered twice.
async fn receive_qos2(conn: &mut Raw, count: usize) -> Vec<u32> {
    let mut awaiting_pubrel = HashSet::new();
    let mut delivered = Vec::new();
    while delivered.len() < count || !awaiting_pubrel.is_empty() {
        let packet = conn.expect(raw::WAIT).await;
        match packet.kind() {
            kind::PUBLISH => {
                let publish = packet.publish();
                assert_eq!(publish.qos, 2);
                if awaiting_pubrel.insert(publish.pkid) {
                    delivered.push(parse_seq(&publish.payload).expect("numbered payload"));
                }
                conn.send(&raw::pubrec(publish.pkid)).await;
            }
            kind::PUBREL => {
                awaiting_pubrel.remove(&packet.pkid());
                conn.send(&raw::pubcomp(packet.pkid())).await;
            }
            _ => panic!("unexpected {packet:?}"),
        }
    }
    delivered
}

#[tokio::test]
async fn full_cluster_restart_keeps_everything() {
    let mut cluster = Cluster::start_fast(3).await;

    // Persistent sessions on different nodes: two offline, one online.
    let mut keeper = Client::connect(client::persistent(cluster.mqtt(1), "f-keeper")).await;
    keeper.subscribe_ok("keep/#", QoS::AtLeastOnce).await;
    keeper.disconnect().await;
    let keeper2 = Connect::v311("f-keeper2").clean_session(false);
    let (mut conn, _) = Raw::connect(cluster.mqtt(3), &keeper2).await;
    conn.subscribe(1, &[("keep/#", 2)]).await;
    conn.send(&raw::DISCONNECT).await;
    conn.expect_closed(raw::WAIT).await;
    let mut online = Client::connect(client::persistent(cluster.mqtt(2), "f-online")).await;
    online.subscribe_ok("keep/#", QoS::AtLeastOnce).await;

    let mut publisher = Client::connect(client::options(cluster.mqtt(2), "f-pub")).await;
    for seq in 0..5 {
        publisher
            .publish("keep/queued", QoS::ExactlyOnce, false, payload(seq))
            .await;
    }
    publisher
        .publish("retained/config", QoS::AtLeastOnce, true, "retained")
        .await;
    for _ in 0..5 {
        online.recv_publish(raw::WAIT).await;
    }

    cluster.kill9_all();
    drop((publisher, online));
    cluster.restart_all().await;

    // Each session resumes on a node other than the one it was on.
    let mut keeper = connect_retry(|| client::persistent(cluster.mqtt(2), "f-keeper")).await;
    assert!(keeper.session_present, "f-keeper's session survived");
    let mut queued = Vec::new();
    for _ in 0..5 {
        let got = keeper.recv_publish(raw::WAIT).await;
        assert_eq!(got.topic, "keep/queued");
        assert_eq!(got.qos, QoS::AtLeastOnce, "min(QoS 2, subscription QoS 1)");
        queued.push(parse_seq(&got.payload).expect("numbered payload"));
    }
    assert_eq!(queued, vec![0, 1, 2, 3, 4], "f-keeper's queue, in order");

    let (mut conn, session_present) = traffic::raw_connect_retry(cluster.mqtt(1), &keeper2).await;
    assert!(session_present, "f-keeper2's session survived");
    let delivered = receive_qos2(&mut conn, 5).await;
    assert_eq!(
        delivered,
        vec![0, 1, 2, 3, 4],
        "f-keeper2's queue, in order, once"
    );
    conn.expect_silence(Duration::from_millis(500)).await;

    let mut online = connect_retry(|| client::persistent(cluster.mqtt(3), "f-online")).await;
    assert!(online.session_present, "f-online's session survived");

    // Subscriptions are in force without subscribing again.
    let mut publisher = connect_retry(|| client::options(cluster.mqtt(3), "f-pub")).await;
    publisher
        .publish("keep/live", QoS::AtLeastOnce, false, payload(99))
        .await;
    for (name, client) in [("f-keeper", &mut keeper), ("f-online", &mut online)] {
        // f-online may get some of the old messages again (its acks may not
        // have been committed before the crash); the new one must come.
        let deadline = Instant::now() + raw::WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = client.recv_publish(left).await;
            if got.topic == "keep/live" {
                assert_eq!(parse_seq(&got.payload), Some(99), "{name}");
                break;
            }
            assert!(
                name == "f-online" && got.topic == "keep/queued",
                "{name} got unexpected {got:?}"
            );
        }
    }
    let live = conn.expect_publish(raw::WAIT).await;
    assert_eq!(live.topic, "keep/live");
    assert_eq!(live.qos, 1);

    let mut newcomer = connect_retry(|| client::options(cluster.mqtt(1), "f-newcomer")).await;
    newcomer.subscribe_ok("retained/#", QoS::AtLeastOnce).await;
    let retained = newcomer.recv_publish(raw::WAIT).await;
    assert_eq!(&retained.payload[..], b"retained");
    assert!(retained.retain, "sent as a retained message");
}

#[tokio::test]
async fn five_node_cluster_survives_two_killed_nodes() {
    let mut cluster = Cluster::start_fast(5).await;
    // The leader among the victims if the metrics name it.
    let first = cluster.leader().await.unwrap_or(4);
    let second = if first == 5 { 4 } else { 5 };
    let victims = [first, second];
    let survivors: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| !victims.contains(id))
        .collect();
    eprintln!("victims {victims:?}, survivors {survivors:?}");

    let mut sub = Client::connect(client::persistent(cluster.mqtt(victims[0]), "i-sub")).await;
    sub.subscribe_ok("i/data", QoS::AtLeastOnce).await;
    let mut wills = Vec::new();
    for victim in victims {
        let id = format!("i-will-{victim}");
        let connect = Connect::v311(&id).will(&format!("wills/{id}"), id.as_bytes(), 1, false);
        wills.push(Raw::connect(cluster.mqtt(victim), &connect).await.0);
    }
    let mut watcher = traffic::watcher(cluster.mqtt(survivors[1]), "i-watcher", "wills/#").await;
    let mut publisher = Client::connect(client::options(cluster.mqtt(survivors[0]), "i-pub")).await;
    let mut received = BTreeSet::new();
    for seq in 0..5 {
        publisher
            .publish("i/data", QoS::AtLeastOnce, false, payload(seq))
            .await;
    }
    for _ in 0..5 {
        let got = sub.recv_publish(raw::WAIT).await;
        received.insert(parse_seq(&got.payload).expect("numbered payload"));
    }

    for victim in victims {
        cluster.kill9(victim);
    }
    drop(sub);

    // Both nodes' wills, once each.
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + cluster.down_after() + Duration::from_secs(5);
    while seen.len() < victims.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = watcher.recv_publish(left).await;
        assert!(seen.insert(got.topic.clone()), "will {} twice", got.topic);
    }
    let expected: BTreeSet<String> = victims
        .iter()
        .map(|v| format!("wills/i-will-{v}"))
        .collect();
    assert_eq!(seen, expected);
    watcher.assert_no_publish(Duration::from_secs(1)).await;
    drop(wills);

    for id in &survivors {
        assert_eq!(cluster.readyz(*id).await, Some(200), "node {id} ready");
    }
    for seq in 5..15 {
        publisher
            .publish("i/data", QoS::AtLeastOnce, false, payload(seq))
            .await;
    }
    let acked: BTreeSet<u32> = (0..15).collect();
    let mut sub = connect_retry(|| client::persistent(cluster.mqtt(survivors[2]), "i-sub")).await;
    assert!(sub.session_present, "i-sub's session survived its node");
    while !acked.is_subset(&received) {
        match sub.try_recv_publish(raw::WAIT).await {
            Some(got) => {
                received.insert(parse_seq(&got.payload).expect("numbered payload"));
            }
            None => {
                let missing: BTreeSet<u32> = acked.difference(&received).copied().collect();
                panic!("acknowledged but not delivered: {}", summary(&missing));
            }
        }
    }

    // New work on the survivors: a subscription (a commit) and a publish.
    let mut fresh = connect_retry(|| client::options(cluster.mqtt(survivors[1]), "i-fresh")).await;
    fresh.subscribe_ok("i/fresh", QoS::ExactlyOnce).await;
    publisher
        .publish("i/fresh", QoS::ExactlyOnce, false, "fresh")
        .await;
    assert_eq!(&fresh.recv_publish(raw::WAIT).await.payload[..], b"fresh");

    // Both come back and serve.
    for victim in victims {
        cluster.restart(victim).await;
    }
    let mut back = Client::connect(client::options(cluster.mqtt(victims[1]), "i-back")).await;
    back.subscribe_ok("i/back", QoS::AtLeastOnce).await;
    publisher
        .publish("i/back", QoS::AtLeastOnce, false, "back")
        .await;
    assert_eq!(&back.recv_publish(raw::WAIT).await.payload[..], b"back");
}
