//! The MQTT listener's settings, as they appear under `[mqtt]` in the config file.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Seconds a new connection has to send CONNECT (after its TLS or
    /// WebSocket handshake, within the same time); then it is closed.
    pub connect_timeout: u64,
    /// New connections per second accepted from one address; more are
    /// closed at once and counted (`rate_per_ip`). 0: no limit.
    pub max_connection_rate_per_ip: u32,
    /// The longest client identifier accepted, in bytes (CONNACK 0x85,
    /// 3.1.1: 2).
    pub max_client_id_len: usize,
    /// The longest topic name or filter accepted, in bytes (MQTT 5: PUBACK
    /// 0x90 or SUBACK 0x8F; 3.1.1: the PUBLISH is dropped, SUBACK 0x80).
    pub max_topic_len: usize,
    /// The most levels a topic or filter may have. 0: no limit.
    pub max_topic_levels: usize,
    /// The most subscriptions one client holds (SUBACK 0x97, 3.1.1: 0x80).
    /// 0: no limit.
    pub max_subscriptions: usize,
    /// PUBLISH packets one client may send per second, on average over a
    /// second's burst; more closes the connection (MQTT 5: DISCONNECT
    /// 0x96). 0: no limit.
    pub max_publish_rate: u32,
    /// Retained messages the cluster keeps, at most: a retained PUBLISH
    /// that would store one more is refused (MQTT 5: PUBACK or PUBREC 0x97;
    /// 3.1.1: dropped and acknowledged) and counted (`retained_full`).
    /// Replacing or clearing one is always accepted. 0: no limit.
    pub max_retained_messages: u64,
    /// Bytes of retained messages (topics and payloads) the cluster keeps,
    /// at most; past that, as past `max_retained_messages`. 0: no limit.
    pub max_retained_bytes: u64,
    /// Seconds a client of a draining node (SIGTERM, or the admin API's
    /// drain) has to connect again, to any node, before its will is
    /// published; for an MQTT 5 client, the longer of this and its Will
    /// Delay. Its session is kept that long too.
    pub drain_will_grace: u64,
    /// Seconds a draining node waits for its clients to go before it stops
    /// anyway.
    pub drain_timeout: u64,
    /// Seconds between two publications of this node's `$SYS/broker/...`
    /// topics to the clients connected to it. 0: none are published.
    pub sys_interval: u64,
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
    /// Address of the secure WebSocket (wss) listener, with the certificates
    /// of `[tls]` and the path and subprotocol rules above; on whatever
    /// `enabled` says. Empty: none.
    pub tls_listen: String,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8083)),
            path: "/mqtt".into(),
            tls_listen: String::new(),
        }
    }
}

impl MqttConfig {
    /// `slow_subscriber_timeout` as a duration (at least a second).
    pub fn slow_subscriber_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.slow_subscriber_timeout.max(1))
    }

    /// `connect_timeout` as a duration (at least a second).
    pub fn connect_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.connect_timeout.max(1))
    }

    /// Whether a topic name or filter is within the length and level limits.
    pub fn topic_within_limits(&self, topic: &str) -> bool {
        topic.len() <= self.max_topic_len
            && (self.max_topic_levels == 0 || topic.split('/').count() <= self.max_topic_levels)
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
            connect_timeout: 10,
            max_connection_rate_per_ip: 0,
            max_client_id_len: 65_535,
            max_topic_len: 65_535,
            max_topic_levels: 0,
            max_subscriptions: 0,
            max_publish_rate: 0,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 1024 * 1024 * 1024,
            drain_will_grace: 30,
            drain_timeout: 30,
            sys_interval: 10,
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
    /// Mutual TLS between the nodes.
    pub tls: ClusterTlsConfig,
}

/// Mutual TLS on the cluster port, as it appears under `[cluster.tls]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// This node's certificate chain (PEM). Empty: the cluster port speaks
    /// plaintext, for one machine only.
    pub cert_file: String,
    /// This node's private key (PEM).
    pub key_file: String,
    /// The cluster's own CA (PEM): only nodes with a certificate it signed
    /// may join, replicate, propose or forward.
    pub ca_file: String,
    /// The DNS name every node's certificate carries, checked whatever
    /// address a node is dialed at. Empty: "starling-cluster".
    pub server_name: String,
}

impl ClusterTlsConfig {
    /// The files read, or `None` when TLS is off; a missing file or key is an
    /// error naming it.
    pub fn load(&self) -> Result<Option<starling_cluster::ClusterTls>, crate::BrokerError> {
        if self.cert_file.is_empty() && self.key_file.is_empty() && self.ca_file.is_empty() {
            return Ok(None);
        }
        let read = |key: &str, path: &str| {
            if path.is_empty() {
                return Err(crate::BrokerError::Config(format!(
                    "cluster.tls.{key} is required with the other cluster.tls files"
                )));
            }
            std::fs::read(path)
                .map_err(|e| crate::BrokerError::Config(format!("cluster.tls.{key} {path}: {e}")))
        };
        Ok(Some(starling_cluster::ClusterTls {
            cert_pem: read("cert_file", &self.cert_file)?,
            key_pem: read("key_file", &self.key_file)?,
            ca_pem: read("ca_file", &self.ca_file)?,
            server_name: if self.server_name.is_empty() {
                "starling-cluster".to_owned()
            } else {
                self.server_name.clone()
            },
        }))
    }
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
            tls: ClusterTlsConfig::default(),
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

impl WebSocketConfig {
    /// `tls_listen` as an address, or `None` when it is empty.
    pub fn tls_listen(&self) -> Result<Option<SocketAddr>, String> {
        match self.tls_listen.trim() {
            "" => Ok(None),
            addr => addr
                .parse()
                .map(Some)
                .map_err(|_| format!("{addr:?} is not IP:PORT")),
        }
    }
}

/// MQTT over TLS, as it appears under `[tls]`: its listener, and the
/// certificates that it and the secure WebSocket listener present and ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Whether the node also serves MQTT over TLS (1.2 or 1.3).
    pub enabled: bool,
    /// Address of the MQTT-over-TLS listener.
    pub listen: SocketAddr,
    /// The server's certificate chain (PEM), its own certificate first. The
    /// files are read again on SIGHUP and when they change: new connections
    /// get the new certificate, open ones keep theirs.
    pub cert_file: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, RSA or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to. Empty:
    /// clients are not asked for a certificate; else one they present is
    /// checked.
    pub ca_file: PathBuf,
    /// Whether a client must present a certificate that chains to `ca_file`;
    /// without one its TLS handshake fails.
    pub require_client_certificate: bool,
    /// Whether the common name (CN) of the client certificate's subject
    /// becomes the session's username, in place of the one in CONNECT (as
    /// Mosquitto's option of that name). Needs `require_client_certificate`.
    pub use_identity_as_username: bool,
    /// As `use_identity_as_username`, with the first DNS name or email
    /// address among the certificate's subject alternative names.
    pub use_subject_alt_name_as_username: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8883)),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            require_client_certificate: false,
            use_identity_as_username: false,
            use_subject_alt_name_as_username: false,
        }
    }
}

impl TlsConfig {
    /// Checks what serde cannot, when a TLS listener is on (`enabled`, or a
    /// secure WebSocket listener): the key at fault and why.
    pub fn check(&self, secure_websocket: bool) -> Result<(), (&'static str, String)> {
        if !self.enabled && !secure_websocket {
            return Ok(());
        }
        let unset = |path: &PathBuf| path.as_os_str().is_empty();
        let on = "required when tls.enabled or websocket.tls_listen is set";
        if unset(&self.cert_file) {
            return Err(("tls.cert_file", on.to_owned()));
        }
        if unset(&self.key_file) {
            return Err(("tls.key_file", on.to_owned()));
        }
        if self.require_client_certificate && unset(&self.ca_file) {
            let why = "required by tls.require_client_certificate";
            return Err(("tls.ca_file", why.to_owned()));
        }
        if self.use_identity_as_username && self.use_subject_alt_name_as_username {
            let why = "set with tls.use_identity_as_username: only one can name the user";
            return Err(("tls.use_subject_alt_name_as_username", why.to_owned()));
        }
        if (self.use_identity_as_username || self.use_subject_alt_name_as_username)
            && !self.require_client_certificate
        {
            let why = "required by tls.use_identity_as_username and \
                       tls.use_subject_alt_name_as_username: else a client without a \
                       certificate would name itself";
            return Err(("tls.require_client_certificate", why.to_owned()));
        }
        Ok(())
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

    #[test]
    fn tls_settings_are_checked_when_a_tls_listener_is_on() {
        let off = TlsConfig::default();
        assert_eq!(off.check(false), Ok(()));
        assert_eq!(off.check(true).unwrap_err().0, "tls.cert_file");
        let on = TlsConfig {
            enabled: true,
            cert_file: "cert.pem".into(),
            ..TlsConfig::default()
        };
        assert_eq!(on.check(false).unwrap_err().0, "tls.key_file");
        let on = TlsConfig {
            key_file: "key.pem".into(),
            ..on
        };
        assert_eq!(on.check(false), Ok(()));
        let require = TlsConfig {
            require_client_certificate: true,
            ..on.clone()
        };
        assert_eq!(require.check(false).unwrap_err().0, "tls.ca_file");
        let identity = TlsConfig {
            use_identity_as_username: true,
            ca_file: "ca.pem".into(),
            ..on
        };
        let key = identity.check(false).unwrap_err().0;
        assert_eq!(key, "tls.require_client_certificate");
        let both = TlsConfig {
            require_client_certificate: true,
            use_subject_alt_name_as_username: true,
            ..identity
        };
        let key = both.check(false).unwrap_err().0;
        assert_eq!(key, "tls.use_subject_alt_name_as_username");
        let websocket = WebSocketConfig {
            tls_listen: "localhost".into(),
            ..WebSocketConfig::default()
        };
        assert!(websocket.tls_listen().is_err());
        assert_eq!(WebSocketConfig::default().tls_listen(), Ok(None));
    }
}
