//! The MQTT listener's settings, as they appear under `[mqtt]` in the config file.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Settings of the MQTT side of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Address of the MQTT-over-TCP listener.
    pub listen: SocketAddr,
    /// Largest packet accepted from a client, in bytes (fixed header included).
    /// Bigger packets close the connection before their body is read.
    pub max_packet_size: usize,
    /// QoS 1/2 messages sent to one client and not yet acknowledged, at most.
    pub max_inflight: u16,
    /// QoS 1/2 messages kept for one persistent session; further ones are dropped
    /// and counted.
    pub max_queued_messages: usize,
    /// Connections this node accepts at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Messages waiting in one connection's mailbox; past that, QoS 0 messages to
    /// it are dropped and counted.
    pub mailbox_capacity: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_packet_size: 1024 * 1024,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_connections: 100_000,
            mailbox_capacity: 1024,
        }
    }
}
