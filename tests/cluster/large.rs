//! Large payloads to persistent subscribers on three nodes: many publishes of
//! half a megabyte in flight at once become Raft entries bounded in bytes, so
//! replication never wedges on one entry too large to send or to send in time.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use starling_testkit::cluster::Cluster;
use starling_testkit::raw::{self, kind, Connect, Raw, Read};

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 16;
const PAYLOAD: usize = 512 * 1024;

/// Publishes `PER_PUBLISHER` numbered QoS 1 messages, all in flight at once;
/// returns once every PUBACK arrived.
async fn publish_all(port: u16, publisher: usize) {
    let (conn, _) = Raw::connect(port, &Connect::v311(&format!("big-pub-{publisher}"))).await;
    let Raw {
        mut reader,
        mut writer,
    } = conn;
    for i in 0..PER_PUBLISHER {
        let mut payload = format!("{publisher}:{i}:").into_bytes();
        payload.resize(PAYLOAD, b'.');
        let pkid = u16::try_from(i + 1).expect("small");
        let publish = raw::publish(b"big/t", 1, false, false, pkid, &payload);
        writer.write_all(&publish).await.expect("write PUBLISH");
    }
    for acked in 0..PER_PUBLISHER {
        match reader.read(Duration::from_secs(60)).await {
            Read::Packet(packet) if packet.kind() == kind::PUBACK => {}
            other => panic!("publisher {publisher} after {acked} acks: {other:?}"),
        }
    }
}

/// Receives on a persistent QoS 1 subscription until every message arrived.
async fn receive_all(mut conn: Raw, name: &str) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while got.len() < PUBLISHERS * PER_PUBLISHER {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.read(left).await {
            Read::Packet(packet) if packet.kind() == kind::PUBLISH => {
                let publish = packet.publish();
                assert_eq!(publish.payload.len(), PAYLOAD, "{name}");
                let tag = String::from_utf8_lossy(&publish.payload[..16]);
                let tag = tag.split(':').take(2).collect::<Vec<_>>().join(":");
                got.insert(tag);
                conn.send(&raw::puback(publish.pkid)).await;
            }
            other => panic!("{name} after {} messages: {other:?}", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn large_payloads_to_persistent_subscribers_on_three_nodes_all_arrive() {
    let cluster = Cluster::start_fast(3).await;
    let mut subscribers = Vec::new();
    for node in [2, 3] {
        let connect = Connect::v311(&format!("big-sub-{node}")).clean_session(false);
        let (mut conn, _) = Raw::connect(cluster.mqtt(node), &connect).await;
        conn.subscribe(1, &[("big/t", 1)]).await;
        subscribers.push((node, conn));
    }
    let receivers: Vec<_> = subscribers
        .into_iter()
        .map(|(node, conn)| {
            tokio::spawn(
                async move { receive_all(conn, &format!("subscriber on node {node}")).await },
            )
        })
        .collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let port = cluster.mqtt(1);
            tokio::spawn(async move { publish_all(port, p).await })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let expected: BTreeSet<String> = (0..PUBLISHERS)
        .flat_map(|p| (0..PER_PUBLISHER).map(move |i| format!("{p}:{i}")))
        .collect();
    for receiver in receivers {
        assert_eq!(receiver.await.expect("subscriber"), expected);
    }
}
