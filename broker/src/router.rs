//! Direct delivery: hands a message to the local connections it reaches that do
//! not read it from a replicated queue (clean sessions, and QoS 0 copies).

use crate::metrics::Metrics;
use crate::registry::{Delivery, Registry};
use crate::state::{Message, MqttMachine};

/// Delivers `message` to every matching subscriber connected to this node whose
/// copy is not queued through Raft. `message.retain` must already be cleared
/// (forwarded copies carry retain = 0).
pub fn route(machine: &MqttMachine, registry: &Registry, metrics: &Metrics, message: &Message) {
    let targets = machine.targets(&message.topic, message.qos);
    registry.deliver(
        targets.into_iter().filter(|t| !t.queued).map(|t| {
            let delivery = Delivery {
                message: message.clone(),
                qos: t.qos,
            };
            (t.client_id, delivery)
        }),
        metrics,
    );
}
