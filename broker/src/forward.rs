//! Publishes that cross nodes: this node's side of the forwarding streams of
//! `starling-cluster`. A frame carries one message, which the receiving node
//! delivers to its own direct subscribers (found from its copy of the replicated
//! routes) and never forwards further; or a sync point, which the receiving node
//! acknowledges only once it has applied as many commands as the sender asks.
//! That is how a SUBACK can promise that the subscription is in force on every
//! node, not only on the one that committed it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use starling_cluster::{ForwardError, ForwardHandler, Forwarder, Hold, Node};

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router;
use crate::state::{Arrival, Message, MqttMachine, Pick, Target, Via};

use crate::timeouts;

/// What travels in one forward frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Frame {
    /// A message for this node's subscribers, and the members of shared
    /// subscriptions the sender chose for it (delivered if they are here).
    Publish(Message, Vec<Target>),
    /// Acknowledge once this many commands are applied.
    Sync(u64),
}

/// [`Frame`] for encoding without a copy: the same variants in the same order.
#[derive(Serialize)]
enum FrameRef<'a> {
    Publish(&'a Message, &'a [Target]),
    Sync(u64),
}

/// Receives the messages other nodes forward to this one.
pub struct Inbound {
    pub machine: Arc<MqttMachine>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

impl ForwardHandler for Inbound {
    fn handle(&self, from: u64, frame: Bytes) -> Option<Hold> {
        match postcard::from_bytes::<Frame>(&frame) {
            Ok(Frame::Publish(mut message, shared)) => {
                message.arrival = Arrival::now(Via::Forwarded);
                // The sender already chose the nodes, and the members of shared
                // subscriptions: deliver here only. The publisher is connected
                // to the sending node, so No Local has nobody to leave out here.
                let mut targets =
                    self.machine
                        .targets(&message.topic, message.qos, None, Pick::None);
                targets.extend(shared);
                // A subscriber whose mailbox just filled (a burst, or a
                // connection task not yet scheduled) gets a moment before a
                // QoS 0 message to it is dropped: the stream waits, and its
                // sender with it. One that stays full is not waited for again;
                // it is disconnected by this node's sweep.
                let full = self
                    .registry
                    .freshly_full(&targets, timeouts::FORWARD_BURST);
                if full.is_empty() {
                    router::deliver_here(&self.registry, &self.metrics, &message, targets);
                    return None;
                }
                let (registry, metrics) = (self.registry.clone(), self.metrics.clone());
                Some(Box::pin(async move {
                    for (mailbox, left) in full {
                        mailbox.wait_for_room(left).await;
                    }
                    router::deliver_here(&registry, &metrics, &message, targets);
                }))
            }
            Ok(Frame::Sync(target)) => {
                // Acknowledged once applied here: the frames behind it wait,
                // and no thread does.
                let machine = self.machine.clone();
                Some(Box::pin(async move {
                    if !machine.applied_reached(target, timeouts::SYNC).await {
                        tracing::warn!(from, target, "sync point not reached in time");
                    }
                }))
            }
            Err(e) => {
                // Peers run our own code; an unreadable frame means a version skew.
                tracing::warn!(from, error = %e, "unreadable forwarded frame dropped");
                self.metrics.dropped("forward_unreadable");
                None
            }
        }
    }
}

/// Sends `message` to `nodes`; the future resolves once every node accepted it
/// (true) or one failed to in time (false, counted): a QoS 1/2 message is not
/// acknowledged to its publisher then, so the publisher sends it again.
pub fn send(
    node: &Node,
    forwarder: &Forwarder,
    metrics: &Arc<Metrics>,
    message: &Message,
    shared: &[Target],
    nodes: Vec<u64>,
) -> BoxFuture<'static, bool> {
    let frame = match postcard::to_allocvec(&FrameRef::Publish(message, shared)) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a message to forward");
            return Box::pin(async { false });
        }
    };
    let sends: Vec<_> = nodes
        .iter()
        .map(|to| forwarder.send(*to, frame.clone(), timeouts::FORWARD))
        .collect();
    let (node, forwarder, metrics) = (node.clone(), forwarder.clone(), metrics.clone());
    Box::pin(async move {
        let results = futures::future::join_all(sends).await;
        let mut accepted = true;
        for (to, result) in nodes.into_iter().zip(results) {
            let result = match result {
                // A member this node has not heard of yet (it just joined): learn
                // the membership and try once more.
                Err(ForwardError::UnknownPeer(_)) => {
                    sync_peers(&node, &forwarder);
                    forwarder.send(to, frame.clone(), timeouts::FORWARD).await
                }
                other => other,
            };
            if let Err(e) = result {
                tracing::debug!(to, error = %e, "forwarded message not accepted");
                metrics.dropped("forward_failed");
                accepted = false;
            }
        }
        accepted
    })
}

/// Queues `message` towards `nodes` without waiting for their acks. A node the
/// forwarder does not know yet (it just joined) is looked up once; what cannot be
/// queued is counted as dropped.
pub fn send_detached(
    node: &Node,
    forwarder: &Forwarder,
    metrics: &Metrics,
    message: &Message,
    shared: &[Target],
    nodes: &[u64],
) {
    let frame = match postcard::to_allocvec(&FrameRef::Publish(message, shared)) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a message to forward");
            return;
        }
    };
    for &to in nodes {
        let result = match forwarder.send_detached(to, frame.clone()) {
            Err(ForwardError::UnknownPeer(_)) => {
                sync_peers(node, forwarder);
                forwarder.send_detached(to, frame.clone())
            }
            other => other,
        };
        if let Err(e) = result {
            tracing::debug!(to, error = %e, "message not queued for forwarding");
            metrics.dropped("forward_failed");
        }
    }
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

/// Peers whose last sync point was not acknowledged in time: a peer that is
/// silent but not yet declared down. Sync points still go to them, but nobody
/// waits for their answer until one comes, so that such a peer costs one
/// SUBSCRIBE a [`timeouts::SYNC`], not every one. Locked only to look up, add or
/// remove an id.
#[derive(Default)]
pub struct Laggards(Mutex<HashSet<u64>>);

impl Laggards {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Resolves once every peer that is neither declared down nor a laggard has
/// applied `applied` commands (or [`timeouts::SYNC`] passed for it). Nodes
/// declared down serve nobody until they have caught up and come back.
pub fn sync(
    forwarder: &Forwarder,
    machine: &MqttMachine,
    applied: u64,
    laggards: &Arc<Laggards>,
) -> BoxFuture<'static, ()> {
    let Ok(frame) = postcard::to_allocvec(&FrameRef::Sync(applied)) else {
        return Box::pin(async {});
    };
    let frame = Bytes::from(frame);
    let mut waited = Vec::new();
    for peer in forwarder.stats().peers {
        if machine.is_node_down(peer.id) {
            continue;
        }
        let send = forwarder.send(peer.id, frame.clone(), timeouts::SYNC);
        if laggards.lock().contains(&peer.id) {
            let laggards = laggards.clone();
            tokio::spawn(async move {
                if send.await.is_ok() {
                    laggards.lock().remove(&peer.id);
                }
            });
        } else {
            waited.push((peer.id, send));
        }
    }
    let laggards = laggards.clone();
    Box::pin(async move {
        let (ids, sends): (Vec<u64>, Vec<_>) = waited.into_iter().unzip();
        for (id, result) in ids.into_iter().zip(futures::future::join_all(sends).await) {
            if let Err(e) = result {
                tracing::debug!(peer = id, error = %e, "sync point not acknowledged");
                laggards.lock().insert(id);
            }
        }
    })
}
