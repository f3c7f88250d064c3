//! MQTT semantics: topics, sessions, the replicated MQTT state machine, routing and
//! listeners. [`Broker::start`] wires them to a Raft node of `starling-cluster`.

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
mod connection;
mod effects;
mod events;
mod forward;
mod fsync_metrics;
#[doc(hidden)]
pub mod fuzzing;
mod listener;
pub mod metrics;
pub mod registry;
mod router;
mod session;
mod shared;
pub mod state;
mod sys;
mod timeouts;
mod tls;
pub mod topic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use starling_cluster::{Node, NodeConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use auth::AuthConfig;
pub use config::{ClusterConfig, MqttConfig, TlsConfig, WebSocketConfig};
use metrics::Metrics;
use registry::Registry;
use shared::Shared;
use state::{Command, MqttMachine, Reply};

/// Everything a broker node needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub mqtt: MqttConfig,
    pub websocket: WebSocketConfig,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
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
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Cluster(#[from] starling_cluster::ClusterError),
    #[error("unreadable reply from the state machine: {0}")]
    BadReply(#[from] postcard::Error),
    #[error("this node did not apply its own command within {0:?}")]
    NotApplied(Duration),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    AuthFiles(#[from] auth::files::LoadError),
    #[error("unexpected reply from the state machine: {0}")]
    UnexpectedReply(String),
}

/// The most commands one Raft entry carries.
const MAX_BATCH: usize = 4096;
/// Forwarded messages queued per peer before sends fail fast (and are counted).
const FORWARD_BUFFER: usize = 16 * 1024;
/// The same bound in bytes: frames queued or awaiting their ack, per peer.
const FORWARD_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// A running broker node.
pub struct Broker {
    shared: Arc<Shared>,
    mqtt_addr: SocketAddr,
    websocket_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    websocket_tls_addr: Option<SocketAddr>,
    /// The certificates of the listeners over TLS, if any is on.
    tls: Option<Arc<tls::Tls>>,
    recovered: Recovered,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
    /// Set once an operator asked, through the cluster, that this node drain.
    drain: Arc<watch::Sender<bool>>,
    /// When it began to start, for its uptime.
    started: std::time::Instant,
}

impl Broker {
    /// Opens storage, recovers state, binds the MQTT listener and starts serving.
    /// Metrics are registered in `registry`.
    pub async fn start(
        config: BrokerConfig,
        registry: &prometheus::Registry,
    ) -> Result<Broker, BrokerError> {
        let started = Broker::start_until(config, registry, std::future::pending()).await?;
        Ok(started.expect("a pending stop never resolves"))
    }

    /// [`Broker::start`], given up when `stop` resolves first: `None` then. While
    /// the node waits to be ready (for a leader, up to a minute) it is shut down
    /// cleanly; while it opens its storage or joins, it is dropped where it
    /// stands, its writes as durable as ever.
    pub async fn start_until(
        config: BrokerConfig,
        registry: &prometheus::Registry,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Option<Broker>, BrokerError> {
        tokio::pin!(stop);
        // Uptime, as `$SYS/broker/uptime` reports it, counts from here.
        let began = tokio::time::Instant::now();
        let started = std::time::Instant::now();
        // Checked before anything starts.
        let authenticators = authenticators(&config.mqtt)?;
        let auth_files = Arc::new(auth::AuthFiles::load(&config.auth)?);
        let tls = load_tls(&config)?;
        let tls_names_users = tls.is_some()
            && (config.tls.use_identity_as_username || config.tls.use_subject_alt_name_as_username);
        let metrics = Arc::new(Metrics::new(registry)?);
        // The incarnation is known once storage is open; nothing is local to
        // this node before then, so the replay at start concerns none of its
        // connections.
        let local = Arc::new(Registry::new(config.node_id, 0));
        let drain = Arc::new(watch::Sender::new(false));
        let step_down = Arc::new(tokio::sync::Notify::new());
        let machine = Arc::new(MqttMachine::new(Arc::new(effects::NodeEffects {
            registry: local.clone(),
            metrics: metrics.clone(),
            auth: auth_files.clone(),
            drain: drain.clone(),
            step_down: step_down.clone(),
        })));
        let peers = config
            .cluster
            .parse_peers()
            .map_err(starling_cluster::ClusterError::Config)?;
        let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        let cluster_tls = config.cluster.tls.load()?;
        let node_config = NodeConfig {
            node_id: config.node_id,
            data_dir: config.data_dir.join("raft"),
            max_batch: MAX_BATCH,
            listen: config.cluster.listen,
            advertise: non_empty(&config.cluster.advertise),
            peers,
            join: non_empty(&config.cluster.join),
            node_down_after: Duration::from_millis(config.cluster.node_down_after_ms),
            tls: cluster_tls.clone(),
        };
        let inbound = Arc::new(forward::Inbound {
            machine: machine.clone(),
            registry: local.clone(),
            metrics: metrics.clone(),
        });
        let tuning = starling_cluster::Tuning {
            max_log_bytes: config.cluster.max_log_bytes,
            ..starling_cluster::Tuning::default()
        };
        let node = Node::builder(node_config, machine.clone())
            .tuning(tuning)
            .forward_handler(inbound)
            .start();
        let node = tokio::select! {
            node = node => node?,
            () = &mut stop => return Ok(None),
        };
        registry.register(Box::new(fsync_metrics::FsyncHistogram::new(node.clone())?))?;
        registry.register(Box::new(fsync_metrics::BatchHistogram::new(node.clone())?))?;
        let incarnation = node.incarnation();
        local.set_incarnation(incarnation);
        tokio::select! {
            ready = wait_ready(&node, &config.cluster) => ready?,
            () = &mut stop => {
                node.shutdown().await;
                return Ok(None);
            }
        }
        let forwarder = starling_cluster::Forwarder::with_dialer(
            config.node_id,
            FORWARD_BUFFER,
            FORWARD_BUFFER_BYTES,
            starling_cluster::Dialer::new(
                starling_cluster::source_for(config.cluster.listen),
                cluster_tls.as_ref(),
            ),
        );
        forward::sync_peers(&node, &forwarder);
        let shared = Arc::new(Shared {
            node,
            machine,
            registry: local,
            metrics,
            config: config.mqtt.clone(),
            forwarder,
            laggards: Arc::default(),
            down_after: Duration::from_millis(config.cluster.node_down_after_ms),
            next_conn: AtomicU64::new(0),
            authenticators,
            // Whether clients may authenticate with a certificate instead.
            allow_anonymous: config.auth.anonymous_allowed(tls_names_users),
            auth: auth_files,
        });
        shared
            .machine
            .set_shared_strategy(config.mqtt.shared_subscription_strategy);
        // Connections this node held before it stopped are gone: their wills are
        // due and their clean sessions end.
        let node_started = Command::NodeStarted {
            node: config.node_id,
            incarnation,
        };
        if let Reply::Disconnected { wills } = shared.propose(node_started).await? {
            if wills > 0 {
                tracing::info!(
                    wills,
                    "published wills of connections lost at the last stop"
                );
            }
        }
        let recovered = shared.machine.summary();
        let (listener, mqtt_addr) = listener::bind(config.mqtt.listen).await?;
        let websocket = match config.websocket.enabled {
            true => Some(listener::bind(config.websocket.listen).await?),
            false => None,
        };
        let websocket_addr = websocket.as_ref().map(|(_, addr)| *addr);
        let mut secure = None;
        let (mut tls_addr, mut websocket_tls_addr) = (None, None);
        if let Some(tls) = &tls {
            let mqtt = match config.tls.enabled {
                true => Some(listener::bind(config.tls.listen).await?),
                false => None,
            };
            let websocket = match config.websocket.tls_listen() {
                Ok(Some(addr)) => Some(listener::bind(addr).await?),
                _ => None,
            };
            tls_addr = mqtt.as_ref().map(|(_, addr)| *addr);
            websocket_tls_addr = websocket.as_ref().map(|(_, addr)| *addr);
            secure = Some(listener::Secure {
                tls: tls.clone(),
                mqtt: mqtt.map(|(listener, _)| listener),
                websocket: websocket
                    .map(|(listener, _)| (listener, Arc::from(&*config.websocket.path))),
            });
        }
        let listeners = listener::Listeners {
            mqtt: listener,
            websocket: websocket
                .map(|(listener, _)| (listener, Arc::from(&*config.websocket.path))),
            secure,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(events::run(shared.clone(), shutdown_rx.clone()));
        tokio::spawn(listener::expiry_loop(shared.clone(), shutdown_rx.clone()));
        tokio::spawn(clock::tick_loop(shared.clone(), shutdown_rx.clone()));
        tokio::spawn(sys::run(shared.clone(), began, shutdown_rx.clone()));
        tokio::spawn(step_down_loop(
            shared.clone(),
            step_down,
            shutdown_rx.clone(),
        ));
        if let Some(tls) = &tls {
            tokio::spawn(tls::watch_loop(tls.clone(), shutdown_rx.clone()));
        }
        let accept = tokio::spawn(listener::accept_loop(
            listeners,
            shared.clone(),
            shutdown_rx,
        ));
        Ok(Some(Broker {
            shared,
            mqtt_addr,
            websocket_addr,
            tls_addr,
            websocket_tls_addr,
            tls,
            recovered,
            shutdown,
            accept,
            drain,
            started,
        }))
    }

    /// The address the MQTT listener is bound to (useful with port 0).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The address of the MQTT-over-WebSocket listener, if it is enabled.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket_addr
    }

    /// The address of the MQTT-over-TLS listener, if it is enabled.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address of the secure WebSocket listener, if it is enabled.
    pub fn websocket_tls_addr(&self) -> Option<SocketAddr> {
        self.websocket_tls_addr
    }

    /// Reads the TLS certificate, key and CA files again: connections
    /// accepted from now on get them, open ones keep what they have. If they
    /// cannot be read or do not fit together, the ones in use stay; logged
    /// either way. Nothing to do without TLS.
    pub fn reload_tls(&self) -> Result<(), BrokerError> {
        match &self.tls {
            Some(tls) => tls.reload("asked").map_err(BrokerError::Config),
            None => Ok(()),
        }
    }

    /// What was recovered from storage at start.
    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    /// True when the node can serve clients (Raft has a leader, state is applied).
    pub fn is_ready(&self) -> bool {
        !self.accept.is_finished()
            && self.shared.node.is_ready()
            && !self.shared.registry.is_fenced()
    }

    /// Removes this node from the cluster's voters (membership change through
    /// Raft). The node keeps serving until it is stopped.
    pub async fn leave(&self) -> Result<(), BrokerError> {
        Ok(self.shared.node.leave().await?)
    }

    /// Reads the password and ACL files again (`auth.password_file`,
    /// `auth.acl_file`) on this node, for the connections that authenticate,
    /// publish, subscribe or receive from now on; connected clients stay. If
    /// a file cannot be read, or is malformed, the ones loaded before stay
    /// too, and the error says why.
    pub fn reload_auth(&self) -> Result<(), BrokerError> {
        Ok(self.shared.auth.reload()?)
    }

    /// Has every node read its password and ACL files again: this node checks
    /// its own first (an error proposes nothing), then commits
    /// `Command::ReloadAuth`, which each node carries out on its own files
    /// when it applies it. Returns once the nodes this one reaches have.
    pub async fn reload_auth_everywhere(&self) -> Result<(), BrokerError> {
        self.shared.auth.check()?;
        self.shared.propose_synced(Command::ReloadAuth).await?;
        Ok(())
    }

    /// This node's view of the cluster: term, leader, log indexes.
    pub fn raft_status(&self) -> starling_cluster::RaftStatus {
        self.shared.node.status()
    }

    /// Stops accepting and closes every connection as lost (their wills are
    /// published, as for any connection the server drops), then stops Raft.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.accept.await {
            tracing::warn!(error = %e, "listener task failed");
        }
        // Every connection is gone and its session handed over: leadership
        // goes to a node that stays before this one stops, so that no
        // election follows its exit.
        if let Err(e) = self.shared.node.step_down(timeouts::STEP_DOWN, false).await {
            tracing::warn!(error = %e, "leadership not handed over before stopping");
        }
        let stats = self.shared.node.stats();
        tracing::info!(
            commands = stats.commands,
            raft_entries = stats.batches,
            log_flushes = stats.log_flushes,
            "raft proposal totals"
        );
        self.shared.node.shutdown().await;
    }
}

/// Hands leadership over each time an operator asks (`Command::StepDown`),
/// until shutdown.
async fn step_down_loop(
    shared: Arc<Shared>,
    asked: Arc<tokio::sync::Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = asked.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if let Err(e) = shared.node.step_down(timeouts::STEP_DOWN, true).await {
            tracing::warn!(error = %e, "leadership not handed over as asked");
        }
    }
}

/// Waits until `node` is ready, at most `timeouts::READY`, saying at once and
/// then every `timeouts::READY_REPORT` what it waits for, so that a node that
/// cannot find its cluster does not stay silent for a minute.
async fn wait_ready(node: &Node, cluster: &ClusterConfig) -> Result<(), BrokerError> {
    let start = tokio::time::Instant::now();
    let deadline = start + timeouts::READY;
    let mut first = true;
    loop {
        if node.is_ready() {
            return Ok(());
        }
        report_waiting(node, cluster, start.elapsed(), first);
        first = false;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let round = left.min(timeouts::READY_REPORT);
        match node.wait_ready(round).await {
            Ok(()) => return Ok(()),
            Err(starling_cluster::ClusterError::Unavailable) if left > round => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Logs what a starting node waits for: a leader, a quorum, or the replay of its
/// log; with the members it knows and the peers or join address it was given.
/// The `first` time at info, later ones as a warning.
fn report_waiting(node: &Node, cluster: &ClusterConfig, waited: Duration, first: bool) {
    let status = node.status();
    let waiting_for = match status.leader {
        None => "a leader: none is known yet",
        Some(_) if !node.quorum_hint() => "a quorum: the leader has not been heard from",
        Some(_) => "the replay of the log on disk",
    };
    let leader = status
        .leader
        .map_or_else(|| "none".to_owned(), |id| id.to_string());
    let members = node
        .members()
        .iter()
        .map(|(id, addr, _)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let peers = cluster.peers.join(",");
    let join = cluster.join.trim();
    let applied = status.last_applied_index.unwrap_or(0);
    let last_log = status.last_log_index.unwrap_or(0);
    let waited = waited.as_secs();
    if first {
        tracing::info!(
            %leader, term = status.term, %members, %peers, join, applied, last_log,
            "waiting for {waiting_for}"
        );
    } else {
        tracing::warn!(
            waited_s = waited, %leader, term = status.term, %members, %peers, join,
            applied, last_log, "still waiting for {waiting_for}"
        );
    }
}

/// The certificates of the listeners over TLS, read from `[tls]`'s files, or
/// `None` when no such listener is on.
fn load_tls(config: &BrokerConfig) -> Result<Option<Arc<tls::Tls>>, BrokerError> {
    let secure_websocket = config
        .websocket
        .tls_listen()
        .map_err(|e| BrokerError::Config(format!("websocket.tls_listen: {e}")))?;
    config
        .tls
        .check(secure_websocket.is_some())
        .map_err(|(key, why)| BrokerError::Config(format!("{key}: {why}")))?;
    if !config.tls.enabled && secure_websocket.is_none() {
        return Ok(None);
    }
    let tls = tls::Tls::load(config.tls.clone()).map_err(BrokerError::Config)?;
    Ok(Some(Arc::new(tls)))
}

/// The enhanced authentication methods `config` offers: SCRAM-SHA-256 for
/// the users of `scram_users`.
fn authenticators(config: &MqttConfig) -> Result<auth::Authenticators, BrokerError> {
    let mut authenticators = auth::Authenticators::new();
    if config.scram_users.is_empty() {
        return Ok(authenticators);
    }
    let mut users = auth::MemoryCredentials::new();
    for entry in &config.scram_users {
        let Some((user, password)) = entry.split_once(':') else {
            return Err(BrokerError::Config(format!(
                "scram_users entry {entry:?} is not user:password"
            )));
        };
        users.insert_password(user, password);
    }
    authenticators.insert(Box::new(auth::ScramSha256::new(users)));
    Ok(authenticators)
}
