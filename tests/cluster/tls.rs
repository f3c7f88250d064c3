//! Mutual TLS on the cluster port: members with a certificate of the
//! cluster's CA form a cluster and forward to each other; a node with a
//! certificate of another CA, or with none, cannot join, and a client that
//! does not speak TLS gets nothing from the port.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;

/// A CA and one certificate it signed for "starling-cluster", written as PEM
/// files into `dir` under `name`; returns the `[cluster.tls]` section.
fn cluster_tls(dir: &Path, name: &str) -> String {
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let node_key = KeyPair::generate().expect("a node key");
    let node = CertificateParams::new(vec!["starling-cluster".to_owned()])
        .expect("node params")
        .signed_by(&node_key, &issuer)
        .expect("the node certificate");
    let write = |file: &str, pem: String| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, pem).expect("a PEM file");
        path.display().to_string()
    };
    let cert = write("cert.pem", node.pem());
    let key = write("key.pem", node_key.serialize_pem());
    let ca = write("ca.pem", ca_cert.pem());
    format!("[cluster.tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nca_file = \"{ca}\"\n")
}

#[tokio::test]
async fn only_nodes_of_the_cluster_ca_get_in() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ours = cluster_tls(dir.path(), "ours");
    let mut cluster = Cluster::start_with_config(3, &ours).await;

    // Raft formed over TLS; forwarding works over it too.
    let mut sub = Client::connect(client::options(cluster.mqtt(2), "tls-sub")).await;
    sub.subscribe_ok("tls/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(client::options(cluster.mqtt(1), "tls-pub")).await;
    publisher
        .publish("tls/t", QoS::AtLeastOnce, false, "over mTLS")
        .await;
    let got = sub.recv_publish(Duration::from_secs(5)).await;
    assert_eq!(&got.payload[..], b"over mTLS");

    // A node with another CA's certificate, and one without TLS, try to join.
    let theirs = cluster_tls(dir.path(), "theirs");
    let other_ca = cluster.spawn_joining_node(1, Some(&theirs));
    let plaintext = cluster.spawn_joining_node(1, Some(""));
    tokio::time::sleep(Duration::from_secs(8)).await;
    for (id, what) in [(other_ca, "another CA"), (plaintext, "no TLS")] {
        assert_ne!(
            cluster.readyz(id).await,
            Some(200),
            "a node with {what} must not join"
        );
    }

    // Bytes that are not a TLS handshake get no gRPC answer.
    let addr = cluster.node(1).cluster_addr();
    let mut raw = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server closes a connection that is not TLS"
    );
    assert!(
        !answer.windows(4).any(|w| w == b"HTTP"),
        "no HTTP/2 spoken in the clear: {answer:?}"
    );

    // While one with our CA's certificate joins in that time.
    let joined = cluster.add_joining_node(1).await;
    assert_eq!(cluster.readyz(joined).await, Some(200));

    // The members still serve.
    publisher
        .publish("tls/t", QoS::AtLeastOnce, false, "still here")
        .await;
    let got = sub.recv_publish(Duration::from_secs(5)).await;
    assert_eq!(&got.payload[..], b"still here");
}
