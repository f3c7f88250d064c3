//! A down peer does not flood the others' logs: openraft retries its
//! replication and votes several times a second, and each failure used to be
//! a warning or an error line; repeats are now held back per call site.

use std::time::Duration;

use starling_testkit::cluster::Cluster;

/// The WARN and ERROR lines of `log` after its first `skip` bytes.
fn complaints(log: &str, skip: usize) -> Vec<&str> {
    log.get(skip..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

#[tokio::test]
async fn a_dead_peer_is_reported_without_flooding_the_log() {
    let mut cluster = Cluster::start(3).await;
    let before: Vec<usize> = [1, 2]
        .iter()
        .map(|id| cluster.node(*id).log_text().len())
        .collect();
    cluster.kill9(3);
    tokio::time::sleep(Duration::from_secs(20)).await;
    for (i, id) in [1u64, 2].into_iter().enumerate() {
        let log = cluster.node(id).log_text();
        let lines = complaints(&log, before[i]);
        assert!(
            lines.len() <= 15,
            "node {id} logged {} warnings and errors in 20 s with one peer down:\n{}",
            lines.len(),
            lines.join("\n")
        );
    }
}
