//! Publishes that cross nodes: this node's side of the forwarding streams of
//! `starling-cluster`. A frame carries one message; the receiving node delivers
//! it to its own direct subscribers, found from its copy of the replicated
//! routes, and never forwards it further.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use starling_cluster::{ForwardHandler, Forwarder, Node};

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router;
use crate::state::{Message, MqttMachine};

/// How long a forwarded message may wait for the peer's acknowledgement.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// Receives the messages other nodes forward to this one.
pub struct Inbound {
    pub machine: Arc<MqttMachine>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

impl ForwardHandler for Inbound {
    fn handle(&self, from: u64, frame: Bytes) {
        match postcard::from_bytes::<Message>(&frame) {
            Ok(message) => {
                // The sender already chose the nodes: deliver here only.
                let routed = router::route(&self.machine, &self.registry, &self.metrics, &message);
                if !routed.blocked.is_empty() {
                    // The handler cannot wait; the frame counts as accepted once
                    // the message is ours to deliver.
                    tokio::spawn(router::wait_for_room(routed.blocked, self.metrics.clone()));
                }
            }
            Err(e) => {
                // Peers run our own code; an unreadable frame means a version skew.
                tracing::warn!(from, error = %e, "unreadable forwarded message dropped");
                self.metrics.dropped("forward_unreadable");
            }
        }
    }
}

/// Sends `message` to `nodes`; the future resolves once every node accepted it or
/// failed to in time (counted: the subscribers there are being disconnected).
pub fn send(
    forwarder: &Forwarder,
    metrics: &Arc<Metrics>,
    message: &Message,
    nodes: Vec<u64>,
) -> BoxFuture<'static, ()> {
    let frame = match postcard::to_allocvec(message) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a message to forward");
            return Box::pin(async {});
        }
    };
    let sends: Vec<_> = nodes
        .into_iter()
        .map(|node| forwarder.send(node, frame.clone(), FORWARD_TIMEOUT))
        .collect();
    let metrics = metrics.clone();
    Box::pin(async move {
        for result in futures::future::join_all(sends).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "forwarded message not accepted");
                metrics.dropped("forward_failed");
            }
        }
    })
}

/// Points the forwarder at the current members (other than this node).
pub fn sync_peers(node: &Node, forwarder: &Forwarder) {
    let me = node.node_id();
    let members = node.members();
    for (id, addr, _) in &members {
        if *id != me {
            forwarder.set_peer(*id, addr.clone());
        }
    }
    for peer in forwarder.stats().peers {
        if !members.iter().any(|(id, _, _)| *id == peer.id) {
            forwarder.remove_peer(peer.id);
        }
    }
}
