//! A node cut off from the others (SIGSTOP freezes it with its sockets open,
//! as a partition would): the majority carries on and publishes the wills of
//! the node's clients once; a node without a quorum turns clients away and
//! fails `/readyz`; once healed, nothing is published twice or lost.

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::QoS;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;
use starling_testkit::http_status;
use starling_testkit::raw::{self, Connect, Raw, Read};
use starling_testkit::traffic::{connect_retry, parse_seq, payload, summary, watcher};

/// The first byte of a SUBACK.
const SUBACK: u8 = 0x90;

/// Polls `/readyz` of some nodes in the background and remembers every
/// answer that was not 200.
struct ReadinessProbe {
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<(u64, Option<u16>)>>,
}

impl ReadinessProbe {
    fn start(nodes: Vec<(u64, u16)>) -> ReadinessProbe {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            while !*stopped.borrow() {
                for (id, http) in &nodes {
                    let status = http_status(*http, "/readyz").await;
                    if status != Some(200) {
                        failures.push((*id, status));
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), stopped.changed()).await;
            }
            failures
        });
        ReadinessProbe { stop, task }
    }

    /// The answers that were not 200, as (node, status).
    async fn finish(self) -> Vec<(u64, Option<u16>)> {
        let _ = self.stop.send(true);
        self.task.await.expect("readiness probe")
    }
}

/// Receives QoS 1 messages on `sub` until every one of `acked` has arrived.
pub(crate) async fn collect(sub: &mut Client, received: &mut BTreeSet<u32>, acked: &BTreeSet<u32>) {
    while !acked.is_subset(received) {
        match sub.try_recv_publish(raw::WAIT).await {
            Some(got) => {
                assert_eq!(got.topic, "e/data");
                received.insert(parse_seq(&got.payload).expect("numbered payload"));
            }
            None => {
                let missing: BTreeSet<u32> = acked.difference(received).copied().collect();
                panic!(
                    "acknowledged but not delivered: {} (ended: {:?})",
                    summary(&missing),
                    sub.ended()
                );
            }
        }
    }
}

/// Publishes `seqs` on `e/data`, each acknowledged, and records them.
pub(crate) async fn publish_acked(
    publisher: &mut Client,
    seqs: std::ops::Range<u32>,
    acked: &mut BTreeSet<u32>,
) {
    for seq in seqs {
        publisher
            .publish("e/data", QoS::AtLeastOnce, false, payload(seq))
            .await;
        acked.insert(seq);
    }
}

#[tokio::test]
async fn partitioned_node_refuses_work_and_heals_without_duplicates() {
    let mut cluster = Cluster::start_fast(3).await;
    // Cut the leader off if the metrics name it: the majority must elect another.
    let cut = cluster.leader().await.unwrap_or(3);
    let majority: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != cut).collect();
    let (a, b) = (majority[0], majority[1]);
    eprintln!("cutting off node {cut}; majority {majority:?}");

    let mut watch_a = watcher(cluster.mqtt(a), "e-watch-a", "wills/#").await;
    let mut watch_b = watcher(cluster.mqtt(b), "e-watch-b", "wills/#").await;
    let will = Connect::v311("e-doomed").will("wills/e-doomed", b"partitioned", 1, false);
    let (mut doomed, _) = Raw::connect(cluster.mqtt(cut), &will).await;
    let mut sub = Client::connect(client::persistent(cluster.mqtt(cut), "e-sub")).await;
    sub.subscribe_ok("e/data", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(client::options(cluster.mqtt(a), "e-pub")).await;
    let mut acked = BTreeSet::new();
    let mut received = BTreeSet::new();
    publish_acked(&mut publisher, 0..10, &mut acked).await;
    collect(&mut sub, &mut received, &acked).await;

    cluster.sigstop(cut);
    let cut_at = Instant::now();

    // The majority declares the node down and publishes its client's will.
    let will_deadline = cluster.down_after() + Duration::from_secs(5);
    for (name, watcher) in [("node a", &mut watch_a), ("node b", &mut watch_b)] {
        let left = (cut_at + will_deadline).saturating_duration_since(Instant::now());
        let got = watcher.recv_publish(left).await;
        assert_eq!(got.topic, "wills/e-doomed", "watcher on {name}");
        assert_eq!(&got.payload[..], b"partitioned");
    }
    eprintln!("will published {:?} after the cut", cut_at.elapsed());
    let probe = ReadinessProbe::start(
        majority
            .iter()
            .map(|id| (*id, cluster.node(*id).http))
            .collect(),
    );

    // The majority carries on: the subscriber's session moves over with its
    // queue, publishing and new subscriptions work.
    drop(sub);
    publish_acked(&mut publisher, 10..20, &mut acked).await;
    let mut sub = connect_retry(|| client::persistent(cluster.mqtt(b), "e-sub")).await;
    assert!(
        sub.session_present,
        "e-sub's session lives on in the majority"
    );
    collect(&mut sub, &mut received, &acked).await;
    let mut fresh = Client::connect(client::options(cluster.mqtt(b), "e-fresh")).await;
    fresh.subscribe_ok("e/fresh", QoS::ExactlyOnce).await;
    publisher
        .publish("e/fresh", QoS::ExactlyOnce, false, "fresh")
        .await;
    assert_eq!(&fresh.recv_publish(raw::WAIT).await.payload[..], b"fresh");
    let not_ready = probe.finish().await;
    assert!(
        not_ready.is_empty(),
        "the majority's /readyz failed while the cut node was away: {not_ready:?}"
    );

    cluster.sigcont(cut);
    let healed_at = Instant::now();
    cluster.wait_ready(cut).await;
    eprintln!("node {cut} ready {:?} after SIGCONT", healed_at.elapsed());
    // Its client's session was declared down: the node drops the stale
    // connection, and its will, already published, is not published again.
    doomed
        .expect_closed(cluster.down_after() + Duration::from_secs(5))
        .await;

    // It serves again, both ways.
    let mut healed_sub = connect_retry(|| client::options(cluster.mqtt(cut), "e-healed")).await;
    healed_sub.subscribe_ok("e/healed", QoS::AtLeastOnce).await;
    publisher
        .publish("e/healed", QoS::AtLeastOnce, false, "to the healed node")
        .await;
    assert_eq!(
        &healed_sub.recv_publish(raw::WAIT).await.payload[..],
        b"to the healed node"
    );
    let mut healed_pub = connect_retry(|| client::options(cluster.mqtt(cut), "e-healed-pub")).await;
    publish_acked(&mut healed_pub, 20..30, &mut acked).await;
    collect(&mut sub, &mut received, &acked).await;

    tokio::join!(
        watch_a.assert_no_publish(Duration::from_secs(2)),
        watch_b.assert_no_publish(Duration::from_secs(2)),
    );
}

#[tokio::test]
async fn minority_node_refuses_connect_and_fails_readyz() {
    let mut cluster = Cluster::start_fast(3).await;
    // Leave the leader alone if the metrics name it: it must notice that it
    // no longer leads anyone.
    let alone = cluster.leader().await.unwrap_or(1);
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != alone)
        .collect();
    eprintln!("leaving node {alone} alone");
    let down_after = cluster.down_after();
    let (mut existing, _) = Raw::connect(cluster.mqtt(alone), &Connect::v311("m-existing")).await;

    for id in &others {
        cluster.sigstop(*id);
    }
    let cut_at = Instant::now();
    let bound = down_after + Duration::from_secs(2);
    let (status, _) = cluster
        .wait_not_ready(alone, bound + Duration::from_secs(3))
        .await;
    let elapsed = cut_at.elapsed();
    assert_eq!(status, Some(503), "/readyz of a node without a quorum");
    assert!(
        elapsed <= bound,
        "/readyz failed {elapsed:?} after the quorum was lost, more than {bound:?}"
    );

    // A new client is turned away: CONNACK 3 (server unavailable) or a close.
    let mut newcomer = Raw::tcp(cluster.mqtt(alone)).await;
    newcomer.send(&Connect::v311("m-newcomer").encode()).await;
    match newcomer.read(raw::WAIT).await {
        Read::Packet(packet) => {
            let (session_present, code) = packet.connack();
            assert_eq!(code, 3, "CONNACK without a quorum");
            assert!(!session_present);
        }
        Read::Closed => {}
        Read::Timeout => panic!(
            "CONNECT neither answered nor refused within {:?}",
            raw::WAIT
        ),
    }

    // The existing client may not subscribe, and is disconnected.
    let _ = existing.try_send(&raw::subscribe(1, &[("m/#", 1)])).await;
    let disconnect_by = cut_at + down_after + Duration::from_secs(3);
    loop {
        let left = disconnect_by.saturating_duration_since(Instant::now());
        match existing.read(left).await {
            Read::Closed => break,
            Read::Packet(packet) if packet.first_byte == SUBACK => {
                let (_, codes) = packet.suback();
                assert_eq!(codes, vec![0x80], "SUBSCRIBE without a quorum must fail");
            }
            Read::Packet(packet) => panic!("existing client got unexpected {packet:?}"),
            Read::Timeout => panic!(
                "existing client still connected {:?} after the quorum was lost",
                cut_at.elapsed()
            ),
        }
    }

    for id in &others {
        cluster.sigcont(*id);
    }
    for id in cluster.ids() {
        cluster.wait_ready(id).await;
    }
    let mut sub = connect_retry(|| client::options(cluster.mqtt(alone), "m-after")).await;
    sub.subscribe_ok("m/after", QoS::AtLeastOnce).await;
    let mut publisher =
        connect_retry(|| client::options(cluster.mqtt(others[0]), "m-after-pub")).await;
    publisher
        .publish("m/after", QoS::AtLeastOnce, false, "recovered")
        .await;
    assert_eq!(&sub.recv_publish(raw::WAIT).await.payload[..], b"recovered");
}

/// A clean QoS 1 subscriber on a node that froze (alive, silent, not yet
/// declared down): a QoS 1 message for it is not acknowledged, since no node
/// that must deliver it accepted it. The publisher's connection is closed
/// instead, so that it sends the message again; once the frozen node is
/// declared down, the resent message is acknowledged.
#[tokio::test]
async fn no_puback_for_a_message_a_live_subscriber_node_did_not_accept() {
    let mut cluster = Cluster::start(3).await;
    let mut subscriber = Client::connect(client::options(cluster.mqtt(2), "n-sub")).await;
    subscriber.subscribe_ok("n/t", QoS::AtLeastOnce).await;
    let connect = Connect::v311("n-pub").clean_session(false);
    let (mut publisher, _) = Raw::connect(cluster.mqtt(1), &connect).await;

    cluster.sigstop(2);
    publisher
        .send(&raw::publish(b"n/t", 1, false, false, 7, b"frozen"))
        .await;
    // The forward to node 2 times out; no PUBACK may come before or after.
    match publisher.read(Duration::from_secs(15)).await {
        Read::Closed => {}
        Read::Packet(packet) => panic!("the publisher got {packet:?} for an unaccepted message"),
        Read::Timeout => panic!("neither acknowledged nor closed within 15 s"),
    }
    // The client resends on its next connection [MQTT-4.4.0-1], as often as
    // it must: once node 2 is declared down, its clean session is gone and
    // the message is acknowledged.
    let deadline = Instant::now() + cluster.down_after() + Duration::from_secs(15);
    loop {
        assert!(
            Instant::now() < deadline,
            "the resent message was never acknowledged"
        );
        let (mut again, present) =
            starling_testkit::traffic::raw_connect_retry(cluster.mqtt(1), &connect).await;
        assert!(present, "the publisher's session survived");
        again
            .send(&raw::publish(b"n/t", 1, false, true, 7, b"frozen"))
            .await;
        match again.read(Duration::from_secs(15)).await {
            Read::Packet(ack) => {
                assert_eq!((ack.kind(), ack.pkid()), (raw::kind::PUBACK, 7));
                break;
            }
            Read::Closed => eprintln!("resent message not accepted yet; again"),
            Read::Timeout => panic!("the resent message neither acknowledged nor refused"),
        }
    }
    cluster.sigcont(2);
}

/// A node that froze but is not declared down yet (a long `node_down_after`)
/// costs the first SUBSCRIBE the sync timeout, not every one: once it missed a
/// sync point, nobody waits for it until it answers again.
#[tokio::test]
async fn a_silent_node_not_yet_declared_down_slows_one_subscribe_not_all() {
    const SUBSCRIBES: u16 = 8;
    let mut cluster = Cluster::start_with_down_after(3, Duration::from_secs(15)).await;
    // A follower is frozen, not the leader: an election would be a cost of its own.
    let leader = cluster.leader().await.unwrap_or(1);
    let frozen = if leader == 3 { 1 } else { 3 };
    let (mut client, _) = Raw::connect(cluster.mqtt(2), &Connect::v311("s-many")).await;
    // Opens node 2's forwarding streams, so the frozen node looks connected.
    client.subscribe(100, &[("s/warm-up", 1)]).await;
    cluster.sigstop(frozen);
    let started = Instant::now();
    for i in 1..=SUBSCRIBES {
        client.subscribe(i, &[(format!("s/{i}").as_str(), 1)]).await;
    }
    let took = started.elapsed();
    eprintln!("{SUBSCRIBES} SUBACKs in {took:?} with node {frozen} frozen");
    cluster.sigcont(frozen);
    // One sync timeout (1 s) for the first, then no more waiting: far below
    // the second per SUBSCRIBE it cost before.
    assert!(
        took < Duration::from_secs(4),
        "{SUBSCRIBES} SUBSCRIBEs took {took:?} while node {frozen} was silent"
    );
}
