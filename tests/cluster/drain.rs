//! Draining for rolling restarts: SIGTERM (or the admin API's drain) makes a
//! node stop taking connections, tell its clients to go, and stop. Its clients
//! reconnect elsewhere with their sessions; a client that comes back within
//! `mqtt.drain_will_grace` has no will published, one that stays away has its
//! will published once, after the grace. Throughout, QoS 1 and QoS 2 traffic to
//! persistent subscribers loses nothing acknowledged.

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::{LastWill, QoS};

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::{http_request, Cluster};
use starling_testkit::subscribers::Subscriber;
use starling_testkit::traffic::{assert_delivered_in_order, wait_until, Live, Publisher};

/// Seconds a drained client has to come back.
const GRACE: u64 = 4;
const PROGRESS_DEADLINE: Duration = Duration::from_secs(15);
const DELIVERY_DEADLINE: Duration = Duration::from_secs(20);

/// A clean-session client on `port` whose will is "1" on `will/<name>`,
/// retrying as a real client does while the cluster elects a leader.
async fn with_will(port: u16, name: &str) -> Client {
    let mut options = client::options(port, &format!("d-{name}"));
    options.set_last_will(LastWill::new(
        format!("will/{name}"),
        "1",
        QoS::ExactlyOnce,
        false,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match Client::try_connect(options.clone()).await {
            Ok(client) => return client,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("d-{name}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("d-{name} cannot connect: {e}"),
        }
    }
}

#[tokio::test]
async fn draining_each_node_in_turn_loses_nothing_and_spares_the_wills_of_returning_clients() {
    let config = format!("[mqtt]\ndrain_will_grace = {GRACE}\ndrain_timeout = 10\n");
    let mut cluster = Cluster::start_with_config(3, &config).await;
    let everyone = Live::new(cluster.ids().into_iter().map(|id| (id, cluster.mqtt(id))));
    let wills = Subscriber::start(&everyone, 1, "d-wills", &[("will/#", 2)]).await;
    let sub1 = Subscriber::start(&everyone, 2, "d-sub1", &[("d/q1", 1)]).await;
    let sub2 = Subscriber::start(&everyone, 3, "d-sub2", &[("d/q2", 2)]).await;
    let mut p1 = Publisher::start_resending(&everyone, 1, "d-pub1", "d/q1", 1);
    let mut p2 = Publisher::start_resending(&everyone, 2, "d-pub2", "d/q2", 2);
    p1.wait_progress(20, PROGRESS_DEADLINE, "at the start")
        .await;
    p2.wait_progress(20, PROGRESS_DEADLINE, "at the start")
        .await;

    let mut returned: Vec<(String, u64, Client)> = Vec::new();
    for node in cluster.ids() {
        let back = with_will(cluster.mqtt(node), &format!("back-{node}")).await;
        let gone = with_will(cluster.mqtt(node), &format!("gone-{node}")).await;
        everyone.remove(node);
        let leader = cluster.leader().await;
        let drained_at = tokio::time::Instant::now();
        if node == 3 {
            // Asked through another node's admin API instead of a signal.
            let (status, body) = http_request(
                cluster.node(1).http,
                "POST",
                "/api/v1/nodes/3/drain",
                Duration::from_secs(10),
            )
            .await
            .expect("node 1 answers");
            assert_eq!(status, 200, "{body}");
            let status = cluster
                .wait_exit(3, Duration::from_secs(20))
                .await
                .expect("node 3 stops once drained");
            assert!(status.success(), "node 3 exits cleanly: {status}");
        } else {
            let status = cluster.sigterm(node).await;
            assert!(status.success(), "node {node} exits cleanly: {status}");
        }
        assert!(
            drained_at.elapsed() < Duration::from_secs(15),
            "node {node} drained within its timeout"
        );
        if leader == Some(node) {
            // The leader handed over before it stopped.
            let log = cluster.node(node).log_text();
            assert!(
                log.contains("stepped down: another node leads"),
                "node {node}, the leader, handed leadership over before stopping"
            );
        }
        assert!(
            back.ended().is_some() && gone.ended().is_some(),
            "clients told to go"
        );
        // One client comes back at once, elsewhere; the other stays away.
        // So do the clients that came back here after an earlier drain.
        let (other, port) = everyone.next_after(node).expect("a live node");
        for (name, at, client) in &mut returned {
            if *at == node {
                assert!(client.ended().is_some(), "{name} told to go");
                *client = with_will(port, name).await;
                *at = other;
            }
        }
        let name = format!("back-{node}");
        returned.push((name.clone(), other, with_will(port, &name).await));
        p1.wait_progress(
            20,
            PROGRESS_DEADLINE,
            &format!("after draining node {node}"),
        )
        .await;
        p2.wait_progress(
            20,
            PROGRESS_DEADLINE,
            &format!("after draining node {node}"),
        )
        .await;
        cluster.restart(node).await;
        everyone.add(node, cluster.mqtt(node));
    }

    // The wills of clients that stayed away are due after the grace.
    tokio::time::sleep(Duration::from_secs(GRACE + 3)).await;
    let acked1 = p1.finish().await;
    let acked2 = p2.finish().await;
    wait_until(DELIVERY_DEADLINE, || sub1.done_waiting("d/q1", &acked1)).await;
    wait_until(DELIVERY_DEADLINE, || sub2.done_waiting("d/q2", &acked2)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got1 = sub1.finish().await;
    let got2 = sub2.finish().await;
    assert_delivered_in_order("d-sub1", &got1, "d/q1", &acked1);
    assert_delivered_in_order("d-sub2", &got2, "d/q2", &acked2);
    assert!(
        got2.duplicates("d/q2").is_empty(),
        "QoS 2 duplicates: {:?}",
        got2.duplicates("d/q2")
    );

    let wills = wills.finish().await;
    let topics: BTreeSet<&str> = wills.order.keys().map(String::as_str).collect();
    assert_eq!(
        topics,
        BTreeSet::from(["will/gone-1", "will/gone-2", "will/gone-3"]),
        "only the clients that stayed away have wills: {wills:?}"
    );
    for node in cluster.ids() {
        let topic = format!("will/gone-{node}");
        assert_eq!(wills.order[&topic], [1], "{topic} once: {wills:?}");
    }
    for (_, _, client) in returned {
        client.assert_connected();
        client.disconnect().await;
    }
    for node in cluster.ids() {
        assert_eq!(cluster.readyz(node).await, Some(200), "node {node} ready");
    }
}
