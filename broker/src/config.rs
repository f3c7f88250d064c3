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
    /// QoS 1/2 messages sent to one client and not yet acknowledged, at most. A
    /// window this wide keeps a subscriber from waiting on round trips; the
    /// messages in it are sent again (DUP) when a persistent session resumes.
    pub max_inflight: u16,
    /// QoS 1/2 messages kept for one persistent session; further ones are dropped
    /// and counted.
    pub max_queued_messages: usize,
    /// Payload bytes kept for one persistent session, at most; further messages
    /// are dropped and counted.
    pub max_queued_bytes: u64,
    /// Connections this node accepts at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Messages waiting in one connection's mailbox; past that, QoS 0 messages to
    /// it are dropped and counted.
    pub mailbox_capacity: usize,
    /// Payload bytes waiting in one connection's mailbox; past that, as past
    /// `mailbox_capacity`.
    pub mailbox_capacity_bytes: usize,
    /// Seconds a subscriber may keep its mailbox over capacity, or leave one
    /// write to its socket unfinished, before it is disconnected (counted as
    /// `slow_subscriber`). Publishers are held back for at most this long by it.
    pub slow_subscriber_timeout: u64,
    /// The longest keepalive a client gets, in seconds: an MQTT 5 client asking
    /// more (or 0, none) is told this one as Server Keep Alive in CONNACK; a
    /// 3.1.1 client asking more is held to it too. 65535: no limit.
    pub max_keepalive: u16,
    /// MQTT 5 Receive Maximum: QoS 1/2 messages one client may send us
    /// without an answer; one more is a DISCONNECT 0x93.
    pub receive_maximum: u16,
    /// MQTT 5 Topic Alias Maximum: the aliases one client may set for topics
    /// it publishes to (0: none).
    pub topic_alias_maximum: u16,
    /// The highest QoS clients may publish and are granted (0, 1 or 2); a
    /// PUBLISH above it closes the connection (MQTT 5: DISCONNECT 0x9B).
    pub max_qos: u8,
    /// Whether retained messages are kept. Off, a retained PUBLISH closes the
    /// connection (MQTT 5: DISCONNECT 0x9A).
    pub retain_available: bool,
    /// Whether `$share/{group}/{filter}` subscriptions are accepted. Off, they
    /// get SUBACK 0x9E.
    pub shared_subscriptions: bool,
    /// Seconds an MQTT 3.1 / 3.1.1 persistent session (Clean Session 0)
    /// outlives its connection; 0: it never expires (the session then lasts
    /// until the client cleans it). MQTT 5 clients say their own Session
    /// Expiry Interval.
    pub persistent_session_expiry: u64,
    /// How this node chooses the member of a shared subscription's group that
    /// gets a message it routes: "round_robin", "random" or "sticky". (A
    /// message committed through Raft, such as one for persistent sessions,
    /// goes to the member every node computes alike, in turn.)
    pub shared_subscription_strategy: crate::state::SharedStrategy,
    /// Users for MQTT 5 enhanced authentication with SCRAM-SHA-256, as
    /// "user:password" entries. A stand-in until users come from a password
    /// file; empty: the method is not offered.
    pub scram_users: Vec<String>,
}

/// Settings of MQTT over WebSocket, as they appear under `[websocket]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Whether the node also serves MQTT over WebSocket (subprotocol "mqtt",
    /// binary frames), for browsers and clients behind HTTP proxies.
    pub enabled: bool,
    /// Address of the MQTT-over-WebSocket listener.
    pub listen: SocketAddr,
    /// The HTTP path MQTT is served on; other paths are refused (404).
    pub path: String,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8083)),
            path: "/mqtt".into(),
        }
    }
}

impl MqttConfig {
    /// `slow_subscriber_timeout` as a duration (at least a second).
    pub fn slow_subscriber_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.slow_subscriber_timeout.max(1))
    }

    /// `max_qos` as a QoS (2 for anything above).
    pub fn max_qos(&self) -> starling_proto::mqtt::QoS {
        starling_proto::mqtt::QoS::from_u8(self.max_qos.min(2))
            .unwrap_or(starling_proto::mqtt::QoS::ExactlyOnce)
    }

    /// The Session Expiry Interval of a 3.1.1 persistent session.
    pub fn persistent_expiry(&self) -> u32 {
        match self.persistent_session_expiry {
            0 => crate::state::NEVER_EXPIRES,
            secs => u32::try_from(secs)
                .unwrap_or(crate::state::NEVER_EXPIRES)
                .min(crate::state::NEVER_EXPIRES - 1),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_packet_size: 1024 * 1024,
            max_inflight: 1024,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            max_connections: 100_000,
            mailbox_capacity: 1024,
            mailbox_capacity_bytes: 16 * 1024 * 1024,
            slow_subscriber_timeout: 30,
            max_keepalive: 65_535,
            receive_maximum: 65_535,
            topic_alias_maximum: 10,
            max_qos: 2,
            retain_available: true,
            shared_subscriptions: true,
            persistent_session_expiry: 0,
            shared_subscription_strategy: crate::state::SharedStrategy::RoundRobin,
            scram_users: Vec::new(),
        }
    }
}

/// Settings of the cluster side of a node, as they appear under `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Address of the cluster gRPC listener: Raft and publish forwarding.
    pub listen: SocketAddr,
    /// The address other nodes dial to reach this one (host:port). Empty: the
    /// listen address.
    pub advertise: String,
    /// The members of a new cluster as "ID=HOST:PORT" entries, the same list on
    /// every node, this one included. Empty: a cluster of this node alone.
    pub peers: Vec<String>,
    /// The cluster address of a member of a running cluster to join. Empty: none.
    pub join: String,
    /// How long a node may stay silent before it is declared down, in
    /// milliseconds: its clients' wills are then published by the others.
    pub node_down_after_ms: u64,
    /// Bytes the Raft log may hold on disk, about: a snapshot is built once half
    /// of this came after the last one, and the log behind a snapshot is purged
    /// down to a quarter of this (kept for followers a little behind). Bounds
    /// disk use and restart time whatever the payloads.
    pub max_log_bytes: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7946)),
            advertise: String::new(),
            peers: Vec::new(),
            join: String::new(),
            node_down_after_ms: 3000,
            max_log_bytes: 256 * 1024 * 1024,
        }
    }
}

impl ClusterConfig {
    /// The peers as (id, address), or which entry is not "ID=HOST:PORT".
    pub fn parse_peers(&self) -> Result<std::collections::BTreeMap<u64, String>, String> {
        self.peers
            .iter()
            .map(|entry| {
                let (id, addr) = entry
                    .split_once('=')
                    .ok_or_else(|| format!("peer {entry:?} is not ID=HOST:PORT"))?;
                let id = id
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| format!("peer {entry:?} has no numeric id"))?;
                Ok((id, addr.trim().to_owned()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_entries_are_named() {
        let config = ClusterConfig {
            peers: vec!["1=127.0.0.1:7946".into(), " 2 = h:1 ".into()],
            ..ClusterConfig::default()
        };
        let peers = config.parse_peers().expect("valid");
        assert_eq!(peers.get(&1).map(String::as_str), Some("127.0.0.1:7946"));
        assert_eq!(peers.get(&2).map(String::as_str), Some("h:1"));
        let bad = ClusterConfig {
            peers: vec!["x=h:1".into()],
            ..ClusterConfig::default()
        };
        assert!(bad.parse_peers().unwrap_err().contains("x=h:1"));
    }
}
