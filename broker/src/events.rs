//! What a node does when the cluster reports a change: the leader declares a
//! silent peer down (a committed `NodeDown`, which publishes its clients' wills
//! once); a node without quorum closes its connections so that clients reconnect
//! to the majority; a node that learns it was declared down starts a new
//! incarnation before it serves again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_cluster::ClusterEvent;
use tokio::sync::{broadcast, watch};

use crate::state::{Command, Reply};
use crate::Shared;

use crate::timeouts;

pub(crate) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut events = shared.node.events();
    let mut metrics_tick = tokio::time::interval(timeouts::METRICS_REFRESH);
    let mut declare_tick = tokio::time::interval(timeouts::DECLARE_SILENT);
    let declaring = Arc::new(Mutex::new(BTreeSet::new()));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = metrics_tick.tick() => refresh_metrics(&shared),
            _ = declare_tick.tick() => declare_silent_peers(&shared, &declaring),
            _ = shared.registry.fenced() => reincarnate(&shared, &mut shutdown).await,
            event = events.recv() => match event {
                Ok(ClusterEvent::PeerDown { node }) => {
                    tracing::warn!(node, "peer silent too long");
                    declare_silent_peers(&shared, &declaring);
                }
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
    let status = shared.node.status();
    let gauge = |what: &str, value: u64| {
        m.raft
            .with_label_values(&[what])
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    };
    gauge("term", status.term);
    gauge("leader_id", status.leader.unwrap_or(0));
    gauge("is_leader", u64::from(status.is_leader));
    gauge("last_log_index", status.last_log_index.unwrap_or(0));
    gauge("applied_index", status.last_applied_index.unwrap_or(0));
    gauge("snapshot_index", status.snapshot_index.unwrap_or(0));
    gauge("purged_index", status.purged_index.unwrap_or(0));
    gauge("log_bytes", shared.node.log_bytes());
    let (snapshots, snapshot_bytes) = shared.node.snapshot_stats();
    crate::metrics::catch_up(&m.snapshots, snapshots);
    m.snapshot_bytes
        .set(i64::try_from(snapshot_bytes).unwrap_or(i64::MAX));
    let census = shared.machine.census();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    m.sessions
        .with_label_values(&["online"])
        .set(count(census.online));
    m.sessions
        .with_label_values(&["offline"])
        .set(count(census.offline));
    m.subscriptions
        .with_label_values(&["direct"])
        .set(count(census.subscriptions - census.shared_subscriptions));
    m.subscriptions
        .with_label_values(&["shared"])
        .set(count(census.shared_subscriptions));
    m.queued_messages.set(count(census.queued_messages));
    m.retained_messages.set(count(census.retained_messages));
    m.retained_bytes
        .set(i64::try_from(census.retained_bytes).unwrap_or(i64::MAX));
    let last = status.last_log_index.unwrap_or(0);
    m.replication_lag.reset();
    for (peer, matched) in shared.node.replication() {
        m.replication_lag
            .with_label_values(&[peer.to_string().as_str()])
            .set(i64::try_from(last.saturating_sub(matched.unwrap_or(0))).unwrap_or(i64::MAX));
    }
    let forward = shared.forwarder.stats();
    // A peer that left loses its series.
    let current: BTreeSet<String> = forward.peers.iter().map(|p| p.id.to_string()).collect();
    let gone: Vec<String> = {
        let mut known = m.forward_peers.lock().unwrap_or_else(|e| e.into_inner());
        let gone = known.difference(&current).cloned().collect();
        known.clone_from(&current);
        gone
    };
    for id in gone {
        for state in ["queued", "unacked"] {
            let _ = m
                .forward_buffered
                .remove_label_values(&[id.as_str(), state]);
        }
        for event in ["sent", "acked", "errors"] {
            let _ = m
                .forward_peer_frames
                .remove_label_values(&[id.as_str(), event]);
        }
        let _ = m.forward_peer_bytes.remove_label_values(&[id.as_str()]);
    }
    for peer in &forward.peers {
        let id = peer.id.to_string();
        let buffered = |state: &str| m.forward_buffered.with_label_values(&[id.as_str(), state]);
        buffered("queued").set(i64::try_from(peer.queued).unwrap_or(i64::MAX));
        buffered("unacked").set(i64::try_from(peer.unacked).unwrap_or(i64::MAX));
        for (event, total) in [
            ("sent", peer.sent),
            ("acked", peer.acked),
            ("errors", peer.errors),
        ] {
            let counter = m
                .forward_peer_frames
                .with_label_values(&[id.as_str(), event]);
            crate::metrics::catch_up(&counter, total);
        }
        let bytes = m.forward_peer_bytes.with_label_values(&[id.as_str()]);
        crate::metrics::catch_up(&bytes, peer.sent_bytes);
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

/// Closes this node's connections once it has been without quorum for
/// `node_down_after` and cannot reach a majority of the voters, so that clients
/// reconnect to the majority, where their sessions are. An election alone (a
/// leader stepping down when a returning node asks for votes, or split votes
/// after a leader died) must not throw every client out: a node that hears from
/// a majority is taking part in it, and is looked at again a period later.
fn drop_clients_if_still_cut_off(shared: &Arc<Shared>) {
    tracing::info!("no quorum");
    let shared = shared.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(shared.down_after).await;
            if shared.node.has_quorum() {
                return;
            }
            if !shared.node.reaches_majority() {
                tracing::warn!(
                    "still no quorum: closing client connections so they move to the majority"
                );
                shared.registry.kick_all();
                return;
            }
            tracing::info!("still no quorum, but a majority is reachable: an election is going on");
        }
    });
}

/// Commits `NodeDown` for every peer the leader finds silent whose current
/// incarnation is not declared down yet. Level-triggered: called on every tick
/// and on every `PeerDown`, so a proposal that fails (a leader change, a lost
/// quorum) is simply made again while the peer stays silent. The command names
/// the incarnation it declares down, so if the peer restarted meanwhile, apply
/// ignores it; and the term this node leads in, so that it is void if a later
/// leader appends it (this node was deposed while it found everybody silent).
/// `declaring` holds the peers with a proposal in flight.
fn declare_silent_peers(shared: &Arc<Shared>, declaring: &Arc<Mutex<BTreeSet<u64>>>) {
    let silent = shared.node.silent_peers();
    if silent.is_empty() {
        return;
    }
    let status = shared.node.status();
    if !status.is_leader {
        return;
    }
    let term = status.term;
    for node in silent {
        let Some(incarnation) = shared.machine.live_incarnation(node) else {
            continue;
        };
        if !lock(declaring).insert(node) {
            continue;
        }
        tracing::warn!(node, incarnation, "declaring a silent peer down");
        let (shared, declaring) = (shared.clone(), declaring.clone());
        tokio::spawn(async move {
            let command = Command::NodeDown {
                node,
                incarnation,
                term,
            };
            match shared.propose(command).await {
                Ok(Reply::Disconnected { wills }) => {
                    tracing::info!(node, incarnation, wills, "node declared down");
                }
                Ok(_) => tracing::info!(node, incarnation, "node was back or down already"),
                Err(e) => tracing::warn!(node, error = %e, "NodeDown not committed; will retry"),
            }
            lock(&declaring).remove(&node);
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Guards a short set of ids; a panic while it was held left it usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The cluster declared this node down (it was cut off): its connections were
/// ended by that command, so close them and come back as a new incarnation.
async fn reincarnate(shared: &Arc<Shared>, shutdown: &mut watch::Receiver<bool>) {
    let incarnation = match shared.node.next_incarnation().await {
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
