//! A subscriber that stops reading cannot hold back its publishers or hurt
//! other clients: once its mailbox has stayed over its bound (or a write to
//! it has stayed unfinished) for `slow_subscriber_timeout`, it is
//! disconnected and counted, and its publishers go on at full speed.

use std::time::Duration;

use rumqttc::QoS;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use starling_testkit::client::{self, Client};
use starling_testkit::raw::{self, kind, Connect, Raw, Read};
use starling_testkit::{http_get, rss_kib, Broker};

const SLOW_AFTER: Duration = Duration::from_secs(2);
/// Enough that a publisher held to the stuck subscriber's pace (a few
/// thousand a second) would take far longer than the bound below.
const FLOOD: usize = 60_000;
/// How long the flood may take past `SLOW_AFTER`: generous for a debug build on
/// a loaded machine, far below what a publisher held back would need.
const SLACK: Duration = Duration::from_secs(15);
const PAYLOAD: usize = 1024;
/// Unacknowledged messages the flooding publisher allows itself.
const WINDOW: usize = 64;

/// Publishes `FLOOD` QoS 1 messages on `topic` with a window of `WINDOW`;
/// returns when every PUBACK arrived.
async fn flood(port: u16, topic: &str) {
    let (conn, _) = Raw::connect(port, &Connect::v311("flooder")).await;
    let Raw {
        mut reader,
        mut writer,
    } = conn;
    let payload = vec![b'x'; PAYLOAD];
    let (mut sent, mut acked) = (0usize, 0usize);
    while acked < FLOOD {
        while sent < FLOOD && sent - acked < WINDOW {
            let pkid = u16::try_from(sent % 60_000 + 1).expect("in range");
            let publish = raw::publish(topic.as_bytes(), 1, false, false, pkid, &payload);
            writer.write_all(&publish).await.expect("write PUBLISH");
            sent += 1;
        }
        match reader.read(Duration::from_secs(120)).await {
            Read::Packet(packet) if packet.kind() == kind::PUBACK => acked += 1,
            Read::Packet(packet) => panic!("flooder got {packet:?}"),
            Read::Closed => panic!("flooder disconnected after {acked} acks"),
            Read::Timeout => panic!("no PUBACK for 120 s after {acked} acks"),
        }
    }
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_dropped_and_cannot_hold_publishers() {
    let broker = Broker::start_with(&format!(
        "[mqtt]\nslow_subscriber_timeout = {}\n",
        SLOW_AFTER.as_secs()
    ))
    .await;
    // Keepalive 0: nothing but the slow-subscriber bound can end it.
    let (mut stuck, _) = Raw::connect(broker.port, &Connect::v311("stuck").keep_alive(0)).await;
    stuck.subscribe(1, &[("flood/t", 1)]).await;
    // From here on `stuck` reads nothing; its socket stays open.

    let mut probe_sub = Client::connect(client::options(broker.port, "probe-sub")).await;
    probe_sub.subscribe_ok("probe/t", QoS::AtLeastOnce).await;
    let mut probe_pub = Client::connect(client::options(broker.port, "probe-pub")).await;
    let rss_before = rss_kib(broker.pid());

    let started = Instant::now();
    let mut flooding = tokio::spawn({
        let port = broker.port;
        async move { flood(port, "flood/t").await }
    });
    let mut latencies = Vec::new();
    let mut peak_rss = rss_before;
    let flooded = loop {
        tokio::select! {
            done = &mut flooding => break done,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                let sent = Instant::now();
                probe_pub.publish("probe/t", QoS::AtLeastOnce, false, "probe").await;
                let got = probe_sub.recv_publish(Duration::from_secs(10)).await;
                assert_eq!(got.topic, "probe/t");
                latencies.push(sent.elapsed());
                peak_rss = peak_rss.max(rss_kib(broker.pid()));
            }
        }
        assert!(
            started.elapsed() < SLOW_AFTER + SLACK,
            "the flood was held back for {:?} by a subscriber that reads nothing",
            started.elapsed()
        );
    };
    flooded.expect("flooding publisher");
    let took = started.elapsed();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "{FLOOD} QoS 1 messages acknowledged in {took:?}; probe p99 {p99:?} over {} probes; \
         RSS {rss_before} KiB before, {peak_rss} KiB at most",
        latencies.len()
    );
    // Other clients keep working while it happens (a debug build, on a loaded
    // machine: the bound only says "not held back by the stuck client").
    assert!(p99 < Duration::from_millis(500), "probe p99 {p99:?}");
    assert!(
        peak_rss < rss_before + 256 * 1024,
        "RSS grew from {rss_before} KiB to {peak_rss} KiB"
    );
    // The stuck client was disconnected, and counted as such.
    let (_, metrics) = http_get(broker.http_port, "/metrics")
        .await
        .expect("/metrics");
    assert!(
        metrics.contains("starling_client_disconnects_total{reason=\"slow_subscriber\"} 1"),
        "slow subscriber not counted:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("disconnects") || l.contains("dropped"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(stuck);
}
