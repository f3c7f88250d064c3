//! Direct delivery: hands a message to the connections it reaches that do not
//! read it from a replicated queue (clean sessions, and QoS 0 copies), here or,
//! through the forwarding streams, on the nodes they are connected to.

use crate::metrics::Metrics;
use crate::registry::{Delivery, Registry};
use crate::state::{Message, MqttMachine};

/// Delivers `message` to every matching subscriber connected to this node whose
/// copy is not queued through Raft, and returns the other nodes that have such
/// subscribers. `message.retain` must already be cleared (forwarded copies carry
/// retain = 0).
pub fn route(
    machine: &MqttMachine,
    registry: &Registry,
    metrics: &Metrics,
    message: &Message,
) -> Vec<u64> {
    let targets = machine.targets(&message.topic, message.qos);
    let elsewhere = registry.deliver(
        targets.into_iter().filter(|t| !t.queued).map(|t| {
            let delivery = Delivery {
                message: message.clone(),
                qos: t.qos,
            };
            (t.client_id, delivery)
        }),
        metrics,
    );
    let me = registry.node();
    let mut nodes = Vec::new();
    for client_id in elsewhere {
        // Not connected anywhere (an offline persistent session at QoS 0): nothing
        // to deliver. Connected here but not yet attached: it is connecting.
        if let Some(node) = machine.location(&client_id) {
            if node != me && !nodes.contains(&node) {
                nodes.push(node);
            }
        }
    }
    nodes
}
