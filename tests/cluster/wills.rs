//! Wills in a cluster: the survivors publish the will of a client whose node
//! was killed, once and within `node_down_after` plus a little; a takeover
//! through another node closes the old connection and publishes its will.

use std::time::Duration;

use rumqttc::QoS;
use tokio::time::Instant;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;
use starling_testkit::raw::{self, kind, Connect, Raw};
use starling_testkit::traffic::watcher;

/// Waits for the will on `watcher` and returns when it came, counted from
/// `since`. Waits a little past `bound` so that a late will fails as late,
/// not as missing.
async fn receive_will(
    watcher: &mut Client,
    name: &str,
    topic: &str,
    payload: &[u8],
    since: Instant,
    bound: Duration,
) -> Duration {
    let left = (since + bound + Duration::from_secs(3)).saturating_duration_since(Instant::now());
    let got = watcher.recv_publish(left).await;
    let elapsed = since.elapsed();
    assert_eq!(got.topic, topic, "{name}");
    assert_eq!(&got.payload[..], payload, "{name}");
    assert_eq!(got.qos, QoS::AtLeastOnce, "{name}: the will's QoS");
    assert!(
        elapsed <= bound,
        "{name}: the will came {elapsed:?} after the kill, more than {bound:?}"
    );
    elapsed
}

#[tokio::test]
async fn will_of_a_client_on_a_killed_node_arrives_once_within_bound() {
    // The default node_down_after, as a deployment without a config has it.
    let mut cluster = Cluster::start(3).await;
    let mut watcher1 = watcher(cluster.mqtt(1), "b-watch-1", "wills/#").await;
    let mut watcher3 = watcher(cluster.mqtt(3), "b-watch-3", "wills/#").await;
    let connect = Connect::v311("b-doomed").will("wills/b-doomed", b"node 2 died", 1, false);
    // Kept open: the will must come from the node's death, not from a close.
    let (_doomed, _) = Raw::connect(cluster.mqtt(2), &connect).await;

    cluster.kill9(2);
    let killed = Instant::now();
    let bound = cluster.down_after() + Duration::from_secs(2);
    let (at1, at3) = tokio::join!(
        receive_will(
            &mut watcher1,
            "watcher on node 1",
            "wills/b-doomed",
            b"node 2 died",
            killed,
            bound
        ),
        receive_will(
            &mut watcher3,
            "watcher on node 3",
            "wills/b-doomed",
            b"node 2 died",
            killed,
            bound
        ),
    );
    eprintln!("will received {at1:?} (node 1) and {at3:?} (node 3) after the kill");
    tokio::join!(
        watcher1.assert_no_publish(Duration::from_secs(2)),
        watcher3.assert_no_publish(Duration::from_secs(2)),
    );
}

#[tokio::test]
async fn takeover_across_nodes_closes_old_connection_and_publishes_will() {
    let cluster = Cluster::start_fast(3).await;
    let mut watcher = watcher(cluster.mqtt(3), "g-watch", "wills/#").await;
    let first = Connect::v311("g-twin").will("wills/g-twin", b"taken over", 1, false);
    let (mut old, _) = Raw::connect(cluster.mqtt(1), &first).await;

    let (mut new, session_present) = Raw::connect(cluster.mqtt(2), &Connect::v311("g-twin")).await;
    assert!(!session_present, "clean session: no session present");
    old.expect_closed(raw::WAIT).await;
    let got = watcher.recv_publish(raw::WAIT).await;
    assert_eq!(got.topic, "wills/g-twin");
    assert_eq!(&got.payload[..], b"taken over");
    watcher.assert_no_publish(Duration::from_secs(1)).await;

    // The new connection is the one in force, and it gets its messages.
    new.send(&raw::PINGREQ).await;
    assert_eq!(new.expect(raw::WAIT).await.kind(), kind::PINGRESP);
    new.subscribe(1, &[("g/twin", 1)]).await;
    let mut publisher = Client::connect(client::options(cluster.mqtt(3), "g-pub")).await;
    publisher
        .publish("g/twin", QoS::AtLeastOnce, false, "for the new one")
        .await;
    let publish = new.expect_publish(raw::WAIT).await;
    assert_eq!(&publish.payload[..], b"for the new one");
    new.send(&raw::puback(publish.pkid)).await;
    new.expect_silence(Duration::from_millis(500)).await;
}

/// A client with a will on node 3, a clean subscriber to the will's topic on
/// node 1 and a persistent one on node 2; node 3 is killed and started again
/// after `down_for`. A pod restart is often quicker than `node_down_after`:
/// then the restarted node itself commits that its earlier connections are
/// gone, and every node, not only the one that proposed it, hands the will
/// to its own subscribers. Slower, the survivors declare it down first.
async fn will_reaches_every_subscriber_when_its_node_restarts_after(down_for: Duration) {
    let mut cluster = Cluster::start(3).await;
    let mut clean = watcher(cluster.mqtt(1), "q-clean", "wills/#").await;
    let mut persistent = Client::connect(client::persistent(cluster.mqtt(2), "q-persistent")).await;
    persistent.subscribe_ok("wills/#", QoS::AtLeastOnce).await;
    let connect = Connect::v311("q-doomed").will("wills/q-doomed", b"restarted", 1, false);
    let (_doomed, _) = Raw::connect(cluster.mqtt(3), &connect).await;

    cluster.kill9(3);
    let killed = Instant::now();
    tokio::time::sleep(down_for).await;
    cluster.restart(3).await;
    eprintln!("node 3 back {:?} after the kill", killed.elapsed());
    let bound = down_for + cluster.down_after() + Duration::from_secs(10);
    let (at_clean, at_persistent) = tokio::join!(
        receive_will(
            &mut clean,
            "clean subscriber on node 1",
            "wills/q-doomed",
            b"restarted",
            killed,
            bound
        ),
        receive_will(
            &mut persistent,
            "persistent subscriber on node 2",
            "wills/q-doomed",
            b"restarted",
            killed,
            bound
        ),
    );
    eprintln!("will received {at_clean:?} (clean) and {at_persistent:?} (persistent)");
    tokio::join!(
        clean.assert_no_publish(Duration::from_secs(2)),
        persistent.assert_no_publish(Duration::from_secs(2)),
    );
}

#[tokio::test]
async fn will_reaches_clean_and_persistent_subscribers_after_a_quick_restart() {
    will_reaches_every_subscriber_when_its_node_restarts_after(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn will_reaches_clean_and_persistent_subscribers_after_a_slow_restart() {
    will_reaches_every_subscriber_when_its_node_restarts_after(Duration::from_secs(5)).await;
}
