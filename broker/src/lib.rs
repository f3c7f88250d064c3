//! MQTT semantics: topics, sessions, the replicated MQTT state machine, routing and
//! listeners. (Interface fixed; implementation in progress.)

pub mod config;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use config::MqttConfig;

/// Everything a broker node needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub mqtt: MqttConfig,
}

/// What a node found in its storage at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    pub sessions: usize,
    pub subscriptions: usize,
    pub retained: usize,
    pub queued_messages: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] starling_cluster::ClusterError),
}

/// A running broker node.
pub struct Broker {
    mqtt_addr: SocketAddr,
}

impl Broker {
    /// Opens storage, recovers state, binds the MQTT listener and starts serving.
    /// Metrics are registered in `registry`.
    pub async fn start(
        config: BrokerConfig,
        _registry: &prometheus::Registry,
    ) -> Result<Broker, BrokerError> {
        Ok(Broker {
            mqtt_addr: config.mqtt.listen,
        })
    }

    /// The address the MQTT listener is bound to (useful with port 0).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// What was recovered from storage at start.
    pub fn recovered(&self) -> Recovered {
        Recovered::default()
    }

    /// True when the node can serve clients (Raft has a leader, state is applied).
    pub fn is_ready(&self) -> bool {
        false
    }

    /// Stops accepting, closes connections (wills of closed clients stay due as for
    /// a lost connection only if the process dies; a clean shutdown disconnects
    /// clients without publishing wills), and flushes storage.
    pub async fn shutdown(self) {}
}
