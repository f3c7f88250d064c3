//! Dynamic membership: a node joins a running cluster through any member and
//! serves clients with the cluster's state; a node that leaves no longer
//! counts towards the quorum.

use std::time::Duration;

use rumqttc::QoS;
use tokio::time::Instant;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;
use starling_testkit::raw;
use starling_testkit::traffic::connect_retry;

#[tokio::test]
async fn join_and_leave() {
    let mut cluster = Cluster::start_fast(3).await;
    // Written before the join: the new node must get it from the cluster.
    let mut setter = Client::connect(client::options(cluster.mqtt(1), "h-setter")).await;
    setter
        .publish("h/retained", QoS::AtLeastOnce, true, "before the join")
        .await;

    let joined = cluster.add_joining_node(2).await;
    let mut sub_new = Client::connect(client::options(cluster.mqtt(joined), "h-sub-new")).await;
    sub_new.subscribe_ok("h/#", QoS::AtLeastOnce).await;
    let retained = sub_new.recv_publish(raw::WAIT).await;
    assert_eq!(&retained.payload[..], b"before the join");
    assert!(retained.retain);
    setter
        .publish("h/live", QoS::AtLeastOnce, false, "from node 1")
        .await;
    assert_eq!(
        &sub_new.recv_publish(raw::WAIT).await.payload[..],
        b"from node 1"
    );
    let mut sub3 = Client::connect(client::options(cluster.mqtt(3), "h-sub-3")).await;
    sub3.subscribe_ok("h/to-3", QoS::AtLeastOnce).await;
    let mut pub_new = Client::connect(client::options(cluster.mqtt(joined), "h-pub-new")).await;
    pub_new
        .publish("h/to-3", QoS::AtLeastOnce, false, "from the new node")
        .await;
    assert_eq!(
        &sub3.recv_publish(raw::WAIT).await.payload[..],
        b"from the new node"
    );
    drop((sub_new, pub_new));

    let series = format!("peer=\"{joined}\"");
    cluster
        .wait_metrics(1, Duration::from_secs(5), "series of the new member", |m| {
            m.contains(&series)
        })
        .await;
    let (status, body) = cluster
        .leave(joined)
        .await
        .expect("leave answered within its deadline");
    assert_eq!(status, 200, "POST /api/v1/cluster/leave: {body}");
    assert!(
        body.contains("stops"),
        "the answer says what happens next: {body}"
    );
    let exit = cluster
        .wait_exit(joined, Duration::from_secs(40))
        .await
        .expect("a node that left drains and stops");
    assert!(exit.success(), "it exits cleanly: {exit}");
    // The others drop the metric series they had for it.
    cluster
        .wait_metrics(
            1,
            Duration::from_secs(10),
            "no series of the departed member",
            |m| !m.contains(&series),
        )
        .await;

    // The other three keep serving.
    for id in 1..=3 {
        assert_eq!(cluster.readyz(id).await, Some(200), "node {id} ready");
    }
    let mut sub2 = Client::connect(client::options(cluster.mqtt(2), "h-sub-2")).await;
    sub2.subscribe_ok("h/after", QoS::AtLeastOnce).await;
    setter
        .publish("h/after", QoS::AtLeastOnce, false, "after the leave")
        .await;
    assert_eq!(
        &sub2.recv_publish(raw::WAIT).await.payload[..],
        b"after the leave"
    );

    // Had it stayed a member, losing it and one more node would leave two of
    // four, no quorum; having left, two of three remain.
    cluster.kill9(1);
    drop(setter);
    // Long enough for the survivors to have declared node 1 down, or to have
    // lost their quorum if the leave had changed nothing.
    tokio::time::sleep(cluster.down_after() + Duration::from_secs(1)).await;
    for id in [2, 3] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster.readyz(id).await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "node {id} has no quorum with nodes 1 and {joined} gone: \
                 did node {joined} really leave?"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut sub2 = connect_retry(|| client::options(cluster.mqtt(2), "h-sub-2b")).await;
    sub2.subscribe_ok("h/two-of-three", QoS::AtLeastOnce).await;
    let mut pub3 = connect_retry(|| client::options(cluster.mqtt(3), "h-pub-3")).await;
    pub3.publish("h/two-of-three", QoS::AtLeastOnce, false, "quorum")
        .await;
    assert_eq!(&sub2.recv_publish(raw::WAIT).await.payload[..], b"quorum");
}

#[tokio::test]
async fn a_second_node_with_a_members_id_is_refused_and_says_why() {
    let cluster = Cluster::start(3).await;
    let mut impostor = cluster.spawn_impostor(1, 2);
    let status = impostor
        .wait_exit(Duration::from_secs(40))
        .await
        .expect("the impostor gives up");
    assert!(!status.success(), "it fails: {status}");
    let log = impostor.log_text();
    assert!(log.contains("node id 2 is already a member"), "{log}");
    // The real node 2 is untouched.
    for id in cluster.ids() {
        assert_eq!(cluster.readyz(id).await, Some(200), "node {id} ready");
    }
    let members = cluster.node(1).log_text();
    assert!(
        members.contains("refused a node that claims a member's id")
            || cluster
                .node(2)
                .log_text()
                .contains("refused a node that claims")
            || cluster
                .node(3)
                .log_text()
                .contains("refused a node that claims"),
        "the leader says whom it refused"
    );
}

/// The term node `id` reports in its metrics.
async fn term(cluster: &Cluster, id: u64) -> u64 {
    cluster
        .metrics(id)
        .await
        .lines()
        .find_map(|l| l.strip_prefix("starling_raft_state{what=\"term\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a term gauge")
}

#[tokio::test]
async fn a_removed_node_restarted_with_its_old_data_does_not_disturb_the_leader() {
    let mut cluster = Cluster::start(3).await;
    let (status, body) = cluster.leave(3).await.expect("leave answered");
    assert_eq!(status, 200, "{body}");
    cluster
        .wait_exit(3, Duration::from_secs(40))
        .await
        .expect("node 3 stops after leaving");
    let leader = cluster.leader().await.expect("a leader");
    let before = term(&cluster, 1).await;
    // Restarted as it was, with its old log and peer list: it is no member,
    // and whatever it asks for must not move the term of the two others.
    cluster.respawn(3);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        cluster.wait_exit(3, Duration::ZERO).await.is_none(),
        "node 3 runs all along"
    );
    for id in [1, 2] {
        assert_eq!(term(&cluster, id).await, before, "node {id}'s term moved");
        assert_eq!(cluster.readyz(id).await, Some(200), "node {id} ready");
    }
    assert_eq!(cluster.leader().await, Some(leader), "the leader stayed");
}
