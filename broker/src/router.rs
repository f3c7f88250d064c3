//! Direct delivery: hands a message to the connections it reaches that do not
//! read it from a replicated queue (clean sessions, and QoS 0 copies), here or,
//! through the forwarding streams, on the nodes they are connected to.

use std::sync::Arc;

use crate::metrics::Metrics;
use std::time::Duration;

use crate::registry::{Delivery, Mailbox, Registry};
use crate::state::{Message, MqttMachine, Target};

/// What remains to be done for a routed message.
#[derive(Default)]
pub struct Routed {
    /// Other nodes with direct subscribers.
    pub nodes: Vec<u64>,
    /// Local mailboxes that a QoS 1/2 message filled past their capacity.
    pub blocked: Vec<Arc<Mailbox>>,
}

/// Delivers `message` to every one of `targets` (from [`MqttMachine::targets`])
/// connected to this node whose copy is not queued through Raft, and says what
/// is left: the other nodes that have such subscribers, and mailboxes to wait on.
pub fn route(
    machine: &MqttMachine,
    registry: &Registry,
    metrics: &Metrics,
    message: &Message,
    targets: Vec<Target>,
) -> Routed {
    let undelivered = deliver_direct(registry, metrics, message, targets);
    let me = registry.node();
    let mut nodes = Vec::new();
    for client_id in undelivered.elsewhere {
        // Not connected anywhere (an offline persistent session at QoS 0): nothing
        // to deliver. Connected here but not yet attached: it is connecting.
        if let Some(node) = machine.location(&client_id) {
            if node != me && !nodes.contains(&node) {
                nodes.push(node);
            }
        }
    }
    Routed {
        nodes,
        blocked: undelivered.blocked,
    }
}

/// Delivers `message` to those of `targets` connected to this node that read no
/// queue, and nothing more: for a message every node delivers on its own.
pub fn deliver_here(
    registry: &Registry,
    metrics: &Metrics,
    message: &Message,
    targets: Vec<Target>,
) {
    deliver_direct(registry, metrics, message, targets);
}

/// Hands `message` to the mailboxes here of those of `targets` that read no queue.
fn deliver_direct(
    registry: &Registry,
    metrics: &Metrics,
    message: &Message,
    targets: Vec<Target>,
) -> crate::registry::Undelivered {
    registry.deliver(
        targets.into_iter().filter(|t| !t.queued).map(|t| {
            let delivery = Delivery {
                message: message.clone(),
                qos: t.qos,
                // Live deliveries carry retain = 0 unless the subscription
                // asked otherwise [MQTT-3.3.1-9].
                retain: message.retain && t.retain_as_published,
                ids: t.ids,
                shared: t.shared,
            };
            (t.client_id, delivery)
        }),
        metrics,
    )
}

/// Waits until every mailbox in `blocked` is back within its capacity, for at
/// most `slow_after` in all: the publisher's acknowledgement waits for this,
/// which slows publishers down to the pace of their slowest subscriber instead
/// of losing messages. The message is in the mailbox either way; a subscriber
/// still over its bound after `slow_after` is disconnected by the registry's
/// sweep, which closes its mailbox.
pub async fn wait_for_room(blocked: Vec<Arc<Mailbox>>, slow_after: Duration) {
    let deadline = tokio::time::Instant::now() + slow_after;
    for mailbox in blocked {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !mailbox.wait_for_room(left).await {
            tracing::debug!("a subscriber is too slow: its publisher goes on");
            return;
        }
    }
}
