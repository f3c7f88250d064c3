//! What a node does when the cluster reports a change: the leader declares a
//! silent peer down (a committed `NodeDown`, which publishes its clients' wills
//! once); a node without quorum closes its connections so that clients reconnect
//! to the majority; a node that learns it was declared down starts a new
//! incarnation before it serves again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use starling_cluster::ClusterEvent;
use tokio::sync::{broadcast, watch};

use crate::state::{Command, Reply};
use crate::Shared;

/// How often counters kept by the cluster crate are copied into the metrics.
const METRICS_EVERY: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    shared: Arc<Shared>,
    data_dir: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = shared.node.events();
    let mut metrics_tick = tokio::time::interval(METRICS_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = metrics_tick.tick() => refresh_metrics(&shared),
            _ = shared.registry.fenced() => reincarnate(&shared, &data_dir, &mut shutdown).await,
            event = events.recv() => match event {
                Ok(ClusterEvent::PeerDown { node }) => declare_down(&shared, node),
                Ok(ClusterEvent::QuorumLost) => drop_clients_if_still_cut_off(&shared),
                Ok(ClusterEvent::QuorumRegained) => tracing::info!("quorum regained"),
                Ok(ClusterEvent::PeerUp { node }) => tracing::info!(node, "peer answers again"),
                Ok(ClusterEvent::MembershipChanged) => {
                    crate::forward::sync_peers(&shared.node, &shared.forwarder);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "cluster events missed");
                    crate::forward::sync_peers(&shared.node, &shared.forwarder);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Copies the forwarder's and the proposer's counters into the metrics.
fn refresh_metrics(shared: &Shared) {
    let m = &shared.metrics;
    let raft = shared.node.stats();
    crate::metrics::catch_up(&m.raft_commands, raft.commands);
    crate::metrics::catch_up(&m.raft_entries, raft.batches);
    crate::metrics::catch_up(&m.raft_log_flushes, raft.log_flushes);
    let forward = shared.forwarder.stats();
    for peer in &forward.peers {
        let id = peer.id.to_string();
        let buffered = |state: &str| m.forward_buffered.with_label_values(&[id.as_str(), state]);
        buffered("queued").set(i64::try_from(peer.queued).unwrap_or(i64::MAX));
        buffered("unacked").set(i64::try_from(peer.unacked).unwrap_or(i64::MAX));
    }
    // The forwarder counts over all peers; "all" keeps the label set uniform.
    for (event, total) in [
        ("sent", forward.sent),
        ("acked", forward.acked),
        ("dropped", forward.dropped),
        ("resent", forward.resent),
        ("errors", forward.errors),
        ("timeouts", forward.timeouts),
    ] {
        let counter = m.forward_frames.with_label_values(&["all", event]);
        crate::metrics::catch_up(&counter, total);
    }
}

/// Closes this node's connections if it is still without quorum after
/// `node_down_after`, so that clients reconnect to the majority, where their
/// sessions are. An election alone (a leader stepping down when a returning node
/// asks for votes) must not throw every client out.
fn drop_clients_if_still_cut_off(shared: &Arc<Shared>) {
    tracing::info!("no quorum");
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(shared.down_after).await;
        if !shared.node.has_quorum() {
            tracing::warn!(
                "still no quorum: closing client connections so they move to the majority"
            );
            shared.registry.kick_all();
        }
    });
}

/// Commits `NodeDown` for a peer the leader found silent. If this node loses
/// leadership meanwhile, the new leader finds the peer silent and does it.
fn declare_down(shared: &Arc<Shared>, node: u64) {
    tracing::warn!(node, "peer silent too long: declaring it down");
    let shared = shared.clone();
    tokio::spawn(async move {
        match shared.propose(Command::NodeDown { node }).await {
            Ok(Reply::Disconnected { wills }) => {
                tracing::info!(node, wills = wills.len(), "node declared down");
                for will in &wills {
                    shared.route_detached(will);
                }
            }
            Ok(other) => tracing::warn!(node, ?other, "unexpected reply to NodeDown"),
            Err(e) => tracing::warn!(node, error = %e, "NodeDown not committed"),
        }
    });
}

/// The cluster declared this node down (it was cut off): its connections were
/// ended by that command, so close them and come back as a new incarnation.
async fn reincarnate(
    shared: &Arc<Shared>,
    data_dir: &std::path::Path,
    shutdown: &mut watch::Receiver<bool>,
) {
    let incarnation = match crate::next_incarnation(data_dir) {
        Ok(incarnation) => incarnation,
        Err(e) => {
            tracing::error!(error = %e, "cannot store a new incarnation");
            return;
        }
    };
    tracing::warn!(
        incarnation,
        "this node was declared down: closing its connections, rejoining"
    );
    shared.registry.set_incarnation(incarnation);
    shared.registry.kick_all();
    let node = shared.registry.node();
    let mut delay = Duration::from_millis(100);
    loop {
        let command = Command::NodeStarted { node, incarnation };
        match shared.propose(command).await {
            Ok(_) => {
                shared.registry.unfence();
                tracing::info!(incarnation, "serving again");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot announce the new incarnation yet"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
