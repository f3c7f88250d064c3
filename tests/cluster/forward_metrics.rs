//! The forwarding streams' per-peer metrics move as messages cross nodes.

use std::time::Duration;

use rumqttc::QoS;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;

/// The value of `series` (name and labels, as exposed) on node `id`.
async fn metric(cluster: &Cluster, id: u64, series: &str) -> Option<f64> {
    cluster.metrics(id).await.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn per_peer_forwarding_metrics_count_what_crossed() {
    let cluster = Cluster::start(3).await;
    let mut sub = Client::connect(client::options(cluster.mqtt(2), "fm-sub")).await;
    sub.subscribe_ok("fm/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(client::options(cluster.mqtt(1), "fm-pub")).await;
    let payload = vec![b'p'; 1000];
    for _ in 0..20 {
        publisher
            .publish("fm/t", QoS::AtLeastOnce, false, payload.clone())
            .await;
    }
    for _ in 0..20 {
        sub.recv_publish(Duration::from_secs(5)).await;
    }
    let sent = "starling_forward_peer_frames_total{event=\"sent\",peer=\"2\"}";
    let acked = "starling_forward_peer_frames_total{event=\"acked\",peer=\"2\"}";
    let bytes = "starling_forward_peer_bytes_total{peer=\"2\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (s, a, b) = (
            metric(&cluster, 1, sent).await.unwrap_or(0.0),
            metric(&cluster, 1, acked).await.unwrap_or(0.0),
            metric(&cluster, 1, bytes).await.unwrap_or(0.0),
        );
        if s >= 20.0 && a >= 20.0 && b >= 20_000.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 to node 2: sent {s}, acked {a}, bytes {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing went to node 3, which has no subscriber.
    let to_3 = "starling_forward_peer_frames_total{event=\"sent\",peer=\"3\"}";
    assert_eq!(metric(&cluster, 1, to_3).await, Some(0.0));
    // Node 2 timed each delivery from the frame's arrival; node 1 delivered
    // nothing, and had nothing forwarded to it.
    let count = "starling_delivery_latency_seconds_count{via=\"forwarded\"}";
    let sum = "starling_delivery_latency_seconds_sum{via=\"forwarded\"}";
    let timed = metric(&cluster, 2, count).await.unwrap_or(0.0);
    assert!(timed >= 20.0, "node 2 timed {timed} forwarded deliveries");
    assert!(metric(&cluster, 2, sum).await.unwrap_or(0.0) > 0.0);
    assert_eq!(metric(&cluster, 1, count).await, Some(0.0));
}
