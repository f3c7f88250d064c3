//! Shared subscriptions across the cluster: each message reaches one member
//! of the group wherever the members are connected, and what a member left
//! unacknowledged goes to another member.

use std::collections::HashSet;
use std::time::Duration;

use rumqttc::QoS;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;
use starling_testkit::raw::{self, kind, Connect, Raw};

/// Every payload `member` receives until it stays quiet for `quiet`.
async fn drain(member: &mut Client, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(publish) = member.try_recv_publish(quiet).await {
        got.push(String::from_utf8_lossy(&publish.payload).into_owned());
    }
    got
}

#[tokio::test]
async fn each_message_reaches_exactly_one_member_of_the_group_across_nodes() {
    let cluster = Cluster::start(3).await;
    let mut members = Vec::new();
    for id in cluster.ids() {
        let mut member =
            Client::connect(client::options(cluster.mqtt(id), &format!("m{id}"))).await;
        member
            .subscribe_ok("$share/workers/jobs/+", QoS::AtLeastOnce)
            .await;
        members.push(member);
    }
    // An ordinary subscriber beside the group gets every message.
    let mut everyone = Client::connect(client::options(cluster.mqtt(2), "everyone")).await;
    everyone.subscribe_ok("jobs/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(client::options(cluster.mqtt(1), "boss")).await;
    const N: usize = 60;
    for i in 0..N {
        publisher
            .publish(
                &format!("jobs/{}", i % 3),
                QoS::AtLeastOnce,
                false,
                format!("job {i}"),
            )
            .await;
    }
    let mut seen = HashSet::new();
    let mut per_member = Vec::new();
    for member in &mut members {
        let got = drain(member, Duration::from_secs(2)).await;
        per_member.push(got.len());
        for job in got {
            assert!(seen.insert(job.clone()), "{job} reached two members");
        }
    }
    assert_eq!(seen.len(), N, "every job reached a member: {per_member:?}");
    assert!(
        per_member.iter().all(|n| *n > 0),
        "round robin spreads the jobs over the nodes' members: {per_member:?}"
    );
    assert_eq!(drain(&mut everyone, Duration::from_secs(1)).await.len(), N);
}

#[tokio::test]
async fn what_a_member_left_unacknowledged_goes_to_another_member() {
    let cluster = Cluster::start(3).await;
    let mut steady = Client::connect(client::options(cluster.mqtt(3), "steady")).await;
    steady.subscribe_ok("$share/g/work", QoS::AtLeastOnce).await;
    // A member on another node that takes messages and never acknowledges.
    let (mut flaky, _) = Raw::connect(cluster.mqtt(2), &Connect::v311("flaky")).await;
    flaky
        .send(&raw::subscribe(1, &[("$share/g/work", 1)]))
        .await;
    let suback = flaky.expect(raw::WAIT).await;
    assert_eq!(suback.suback().1, vec![1], "granted QoS 1");
    let mut publisher = Client::connect(client::options(cluster.mqtt(1), "pub")).await;
    const N: usize = 20;
    for i in 0..N {
        publisher
            .publish("work", QoS::AtLeastOnce, false, format!("w{i}"))
            .await;
    }
    // The flaky member got its share and answered nothing; then it is gone.
    let mut held = 0;
    while let raw::Read::Packet(p) = flaky.read(Duration::from_millis(500)).await {
        if p.kind() == kind::PUBLISH {
            held += 1;
        }
    }
    assert!(held > 0, "round robin gave the flaky member some work");
    drop(flaky);
    let got: HashSet<String> = drain(&mut steady, Duration::from_secs(3))
        .await
        .into_iter()
        .collect();
    assert_eq!(
        got.len(),
        N,
        "the steady member ends with every job, {held} of them redelivered"
    );
}
