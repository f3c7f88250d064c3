//! A full disk: Raft stops on the failed write, and the node says why and
//! exits instead of lingering with `/healthz` green; restarted once there is
//! room again, it has every acknowledged message. The data directory is a
//! small tmpfs, so the test needs root (as the partition tests do).

use std::time::Duration;

use rumqttc::QoS;
use starling_testkit::client::{self, Client};
use starling_testkit::http_status;
use starling_testkit::process::Process;
use starling_testkit::raw::{self, Connect, Raw, Read};
use starling_testkit::tmpfs::Tmpfs;

async fn wait_ready(process: &mut Process) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while http_status(process.http, "/readyz").await != Some(200) {
        assert!(
            process.exited().is_none(),
            "starling exited before it was ready"
        );
        assert!(tokio::time::Instant::now() < deadline, "not ready in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_full_disk_stops_the_node_with_its_cause_and_loses_nothing_acknowledged() {
    let mut process = Process::new("starling", "starling-disk-", "127.0.0.1", None);
    let disk = Tmpfs::mount(&process.data_dir(), "4m");
    process.spawn("127.0.0.1", &[]);
    wait_ready(&mut process).await;

    // Retained messages until one is not acknowledged: the disk is full.
    let (mut publisher, _) = Raw::connect(process.mqtt, &Connect::v311("filler")).await;
    let payload = vec![b'x'; 60_000];
    let mut acked = Vec::new();
    for i in 0..200u16 {
        let topic = format!("fill/{i}");
        let packet = raw::publish(topic.as_bytes(), 1, true, false, i + 1, &payload);
        if publisher.try_send(&packet).await.is_err() {
            break;
        }
        match publisher.read(Duration::from_secs(5)).await {
            Read::Packet(p) if p.kind() == raw::kind::PUBACK && p.pkid() == i + 1 => {
                acked.push(topic)
            }
            _ => break,
        }
    }
    assert!(
        !acked.is_empty() && acked.len() < 200,
        "{} acknowledged",
        acked.len()
    );

    // The node exits, saying why, rather than staying up and unable to serve.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = process.exited() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node still runs with Raft stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "it exits with a failure: {status}");
    let log = process.log_text();
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("raft stopped on a storage error"), "{log}");

    // Room again: it starts, and every acknowledged message is there.
    disk.grow("64m");
    process.spawn("127.0.0.1", &[]);
    wait_ready(&mut process).await;
    let mut options = client::options(process.mqtt, "reader");
    options.set_max_packet_size(100_000, 100_000);
    let mut reader = Client::connect(options).await;
    reader.subscribe_ok("fill/#", QoS::AtLeastOnce).await;
    let mut seen = std::collections::BTreeSet::new();
    while let Some(message) = reader.try_recv_publish(Duration::from_secs(3)).await {
        seen.insert(message.topic.clone());
    }
    for topic in &acked {
        assert!(
            seen.contains(topic),
            "acknowledged {topic} lost across the full disk"
        );
    }
    process.kill9();
    drop(disk);
}

#[tokio::test]
async fn snapshots_are_counted_and_their_size_shown() {
    let broker = starling_testkit::Broker::start_with("[cluster]\nmax_log_bytes = 200000\n").await;
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let (_, before) = starling_testkit::http_get(broker.http_port, "/metrics")
        .await
        .expect("/metrics");
    assert_eq!(metric(&before, "starling_raft_snapshots_total"), 0.0);
    let mut publisher = Client::connect(client::options(broker.port, "snap-pub")).await;
    for i in 0..40 {
        publisher
            .publish(
                &format!("snap/{i}"),
                QoS::AtLeastOnce,
                true,
                vec![b's'; 8_000],
            )
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = starling_testkit::http_get(broker.http_port, "/metrics")
            .await
            .expect("/metrics");
        let (count, bytes) = (
            metric(&text, "starling_raft_snapshots_total"),
            metric(&text, "starling_raft_snapshot_bytes"),
        );
        if count >= 1.0 && bytes > 100_000.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot counted: {count} snapshots, {bytes} bytes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
