//! `$SYS` in a cluster: each node publishes its own tree to its own
//! clients, with the cluster's members and leader, cluster-wide counts of
//! clients and retained messages, and its own message counters.

use std::time::Duration;

use rumqttc::QoS;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;

/// Long enough for several publications at `sys_interval = 1`.
const WAIT: Duration = Duration::from_secs(15);

/// Reads `client`'s messages until one on `topic` whose payload `wanted`
/// accepts, and returns that payload; panics after `WAIT`.
async fn wait_for(client: &mut Client, topic: &str, wanted: impl Fn(&str) -> bool) -> String {
    client.wait_for_text(topic, WAIT, wanted).await
}

#[tokio::test]
async fn a_node_publishes_the_cluster_and_its_own_counters() {
    let cluster = Cluster::start_with_config(3, "[mqtt]\nsys_interval = 1\n").await;
    let mut sys = Client::connect(client::options(cluster.mqtt(2), "sys-on-2")).await;
    sys.subscribe_ok("$SYS/#", QoS::AtMostOnce).await;
    let mut elsewhere = Client::connect(client::options(cluster.mqtt(3), "pub-on-3")).await;

    wait_for(&mut sys, "$SYS/broker/cluster/members", |m| m == "1,2,3").await;
    wait_for(&mut sys, "$SYS/broker/cluster/node", |n| n == "2").await;
    let leader = wait_for(&mut sys, "$SYS/broker/cluster/leader", |l| l != "none").await;
    let leader: u64 = leader.parse().expect("a node id");
    assert!((1..=3).contains(&leader), "leader {leader}");
    // The client on node 3 counts, from the replicated sessions.
    wait_for(&mut sys, "$SYS/broker/clients/connected", |n| n == "2").await;

    // A retained message published on node 3 counts on node 2; the PUBLISH
    // packets it received do not, since node 3 received them.
    elsewhere
        .publish("state/x", QoS::AtLeastOnce, true, "on")
        .await;
    for n in 0..3 {
        elsewhere
            .publish("plain/t", QoS::AtLeastOnce, false, format!("m{n}"))
            .await;
    }
    wait_for(&mut sys, "$SYS/broker/retained messages/count", |n| {
        n == "1"
    })
    .await;
    // Two publications later node 2 still has received no PUBLISH itself.
    for _ in 0..2 {
        wait_for(&mut sys, "$SYS/broker/uptime", |_| true).await;
    }
    let received = wait_for(&mut sys, "$SYS/broker/messages/received", |_| true).await;
    assert_eq!(received, "0", "node 2's own count");

    // Once the client on node 3 has gone, node 2 counts one client.
    elsewhere.disconnect().await;
    wait_for(&mut sys, "$SYS/broker/clients/connected", |n| n == "1").await;
}
