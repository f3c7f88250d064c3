//! A node cut off by a real network partition while it stays alive (firewall
//! rules on its loopback address, see `nodes::Cut`), unlike SIGSTOP, which
//! freezes it: the node still runs, its clients still reach it, and it must
//! refuse what it cannot commit. The majority goes on and publishes the wills
//! of its clients once; after healing, the node catches up and nothing is
//! published twice or lost.

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::QoS;
use tokio::time::Instant;

use crate::partitions::{collect, publish_acked};
use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;
use starling_testkit::raw::{self, kind, Connect, Raw, Read};
use starling_testkit::traffic::{connect_retry, watcher};

/// Reads until the broker closes `conn`; any packet but those `allowed` fails.
async fn expect_closed_without(conn: &mut Raw, what: &str, by: Instant, allowed: &[u8]) {
    loop {
        match conn
            .read(by.saturating_duration_since(Instant::now()))
            .await
        {
            Read::Closed => return,
            Read::Packet(packet) if allowed.contains(&packet.kind()) => {}
            Read::Packet(packet) => panic!("{what}: unexpected {packet:?}"),
            Read::Timeout => panic!("{what}: still connected"),
        }
    }
}

#[tokio::test]
async fn a_live_minority_refuses_what_it_cannot_commit_and_heals_without_duplicates() {
    let mut cluster = Cluster::start(3).await;
    let down_after = cluster.down_after();
    // The leader, if the metrics name it: cut off while alive it goes on
    // finding every peer silent, and what it proposes then must harm nobody.
    let cut = cluster.leader().await.unwrap_or(3);
    let majority: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != cut).collect();
    let (a, b) = (majority[0], majority[1]);
    eprintln!("cutting off node {cut}; majority {majority:?}");

    // On the node to be cut off: a client with a will, and two that will try
    // to subscribe and to publish while it is cut off.
    let will = Connect::v311("l-doomed").will("wills/l-doomed", b"cut off", 1, false);
    let (mut doomed, _) = Raw::connect(cluster.mqtt(cut), &will).await;
    let (mut subscriber, _) = Raw::connect(cluster.mqtt(cut), &Connect::v311("l-sub")).await;
    let (mut publisher, _) = Raw::connect(cluster.mqtt(cut), &Connect::v311("l-pub")).await;
    // On the majority: will watchers, and a QoS 1 pair that must lose nothing.
    let mut watch_a = watcher(cluster.mqtt(a), "l-watch-a", "wills/#").await;
    let mut watch_b = watcher(cluster.mqtt(b), "l-watch-b", "wills/#").await;
    let mut pair_sub = Client::connect(client::persistent(cluster.mqtt(b), "l-pair-sub")).await;
    pair_sub.subscribe_ok("e/data", QoS::AtLeastOnce).await;
    let mut pair_pub = Client::connect(client::options(cluster.mqtt(a), "l-pair-pub")).await;
    let (mut acked, mut received) = (BTreeSet::new(), BTreeSet::new());
    publish_acked(&mut pair_pub, 0..10, &mut acked).await;

    let partition = cluster.cut_off(cut);
    let cut_at = Instant::now();

    // The cut-off node notices it has no quorum and fails /readyz.
    let bound = down_after + Duration::from_secs(3);
    let (status, after) = cluster.wait_not_ready(cut, bound).await;
    assert_eq!(status, Some(503), "/readyz of the cut-off node");
    eprintln!("node {cut} not ready {after:?} after the cut");

    // It answers SUBSCRIBE with a failure, and keeps the connection for now.
    subscriber.send(&raw::subscribe(1, &[("l/x", 1)])).await;
    let answer = subscriber.expect(raw::WAIT).await;
    let (pkid, codes) = answer.suback();
    assert_eq!((pkid, codes), (1, vec![0x80]), "SUBACK without a quorum");

    // It acknowledges no QoS 1 publish: the publisher is closed instead.
    publisher
        .send(&raw::publish(b"l/x", 1, false, false, 9, b"lost?"))
        .await;
    expect_closed_without(
        &mut publisher,
        "QoS 1 publisher on the cut-off node",
        Instant::now() + raw::WAIT,
        &[],
    )
    .await;

    // It turns new clients away.
    let mut newcomer = Raw::tcp(cluster.mqtt(cut)).await;
    newcomer.send(&Connect::v311("l-newcomer").encode()).await;
    match newcomer.read(raw::WAIT).await {
        Read::Packet(packet) => assert_eq!(packet.connack(), (false, 3), "CONNACK without quorum"),
        Read::Closed => {}
        Read::Timeout => panic!("CONNECT neither answered nor refused"),
    }

    // The majority declares it down and publishes the will, once per watcher.
    for (name, watcher) in [("node a", &mut watch_a), ("node b", &mut watch_b)] {
        let left = (cut_at + down_after + Duration::from_secs(8))
            .saturating_duration_since(Instant::now());
        let got = watcher.recv_publish(left).await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("wills/l-doomed", &b"cut off"[..]),
            "{name}"
        );
    }
    // The majority goes on, and sets a retained message the cut node misses.
    publish_acked(&mut pair_pub, 10..20, &mut acked).await;
    pair_pub
        .publish("l/retained", QoS::AtLeastOnce, true, "while cut off")
        .await;

    // The cut-off node drops its clients, so that they move to the majority.
    let drop_by = cut_at + down_after * 2 + Duration::from_secs(5);
    expect_closed_without(&mut doomed, "client with a will", drop_by, &[]).await;
    expect_closed_without(&mut subscriber, "subscriber", drop_by, &[kind::PUBLISH]).await;

    partition.heal();
    let healed_at = Instant::now();
    cluster.wait_ready(cut).await;
    eprintln!(
        "node {cut} ready again {:?} after healing",
        healed_at.elapsed()
    );

    // It caught up: the retained message set meanwhile is served there.
    let mut late = connect_retry(|| client::options(cluster.mqtt(cut), "l-late")).await;
    late.subscribe_ok("l/retained", QoS::AtLeastOnce).await;
    let got = late.recv_publish(raw::WAIT).await;
    assert_eq!(&got.payload[..], b"while cut off");
    // Every will was published once; nothing acknowledged was lost.
    tokio::join!(
        watch_a.assert_no_publish(Duration::from_secs(2)),
        watch_b.assert_no_publish(Duration::from_secs(2)),
    );
    publish_acked(&mut pair_pub, 20..30, &mut acked).await;
    collect(&mut pair_sub, &mut received, &acked).await;
}
