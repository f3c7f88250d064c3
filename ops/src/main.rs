//! `starling`, the broker binary and the composition root: it reads the configuration,
//! sets up logging and metrics, starts the broker and the HTTP server, reads the
//! password file again on SIGHUP, and stops both on SIGINT or SIGTERM.

mod api;
mod cli;
mod ctl;
mod http;
mod log_limit;
mod probe;
mod process_metrics;
mod status;
mod telemetry;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
// The configuration lives in the library (src/lib.rs), for the fuzz targets;
// `crate::config` still names it here.
use starling::config;
use starling_broker::{Broker, BrokerConfig, ClusterConfig};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info, warn};

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::http::{BrokerHandle, HttpServer};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_args();
    if let Some(Command::Config { example: true, .. }) = cli.command {
        return print_or_fail(config::example());
    }
    if let Some(Command::Ctl(args)) = &cli.command {
        return match ctl::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(describe(&e)),
        };
    }
    if let Some(Command::Probe(args)) = &cli.command {
        return match probe::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(describe(&e)),
        };
    }
    if let Some(Command::Passwd(args)) = &cli.command {
        return match cli::passwd(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(describe(&e)),
        };
    }
    let env = std::env::vars_os().map(|(name, value)| {
        let name = name.to_string_lossy().into_owned();
        (name, value.to_string_lossy().into_owned())
    });
    let config = match cli.resolve_config(env) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    match cli.command {
        Some(Command::Config { check: true, .. }) => return check_config(&config),
        Some(Command::Config { .. }) => return print_or_fail(config.to_toml()),
        _ => {}
    }
    if let Err(e) = telemetry::init(&config.log, std::env::var("RUST_LOG").ok()) {
        return fail(e);
    }
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %describe(&e), "failed to start");
            ExitCode::FAILURE
        }
    }
}

/// Runs the node until SIGINT or SIGTERM. In this order: signals are handled,
/// the HTTP port is bound and every other listener's port checked, and only then
/// is `data_dir` created; HTTP serves (`/readyz` 503) while the broker starts, and
/// a signal meanwhile stops the process at once.
async fn run(config: Config) -> anyhow::Result<()> {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        node_id = config.node_id,
        data_dir = %config.data_dir.display(),
        "starting"
    );
    // Listening from the start, so that a signal during start-up stops us cleanly.
    let mut signals = Signals::new().context("cannot listen for signals")?;
    let registry = prometheus::Registry::new();
    telemetry::register_process_metrics(&registry).context("cannot register metrics")?;
    let http_listener = HttpServer::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen for http on {}", config.http.listen))?;
    check_ports(&config)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    check_node_id(&config.data_dir, config.node_id)?;
    let token = config
        .http
        .admin_token()
        .with_context(|| format!("cannot read http.token_file {}", config.http.token_file))?;
    if token.is_none() {
        tracing::info!("no admin token configured: the admin API answers loopback addresses only");
    }
    let token = http::AdminToken::new(token);
    let handle = Arc::new(BrokerHandle::starting());
    let http = HttpServer::serve(http_listener, handle.clone(), registry.clone(), token)
        .context("cannot serve http")?;
    info!("http listening on {}", http.local_addr());

    log_cluster(&config.cluster);
    let broker_config = BrokerConfig {
        node_id: config.node_id,
        data_dir: config.data_dir.clone(),
        mqtt: config.mqtt.clone(),
        websocket: config.websocket.clone(),
        cluster: config.cluster.clone(),
        auth: config.auth.clone(),
        tls: config.tls.clone(),
    };
    // Start-up may wait a minute for a leader: a signal meanwhile gives it up.
    let stop = async {
        let name = signals
            .recv(|| info!("SIGHUP ignored: still starting"))
            .await;
        info!(signal = name, "stopping before the start completed");
    };
    let started = Broker::start_until(broker_config, &registry, stop)
        .await
        .context("cannot start the broker")?;
    let Some(broker) = started else {
        http.stop().await;
        info!("stopped");
        return Ok(());
    };
    info!("mqtt listening on {}", broker.mqtt_addr());
    if let Some(addr) = broker.websocket_addr() {
        info!("mqtt over websocket listening on {addr}");
    }
    if let Some(addr) = broker.tls_addr() {
        info!("mqtt over tls listening on {addr}");
    }
    if let Some(addr) = broker.websocket_tls_addr() {
        info!("mqtt over secure websocket listening on {addr}");
    }
    let recovered = broker.recovered();
    info!(
        sessions = recovered.sessions,
        subscriptions = recovered.subscriptions,
        retained = recovered.retained,
        queued_messages = recovered.queued_messages,
        "recovered state"
    );

    let broker = Arc::new(broker);
    handle.started(Arc::downgrade(&broker));

    let name = tokio::select! {
        name = signals.recv(|| reload(&broker)) => name,
        () = broker.drain_requested() => "the admin API",
        why = broker.failed() => {
            // Nothing can be committed any more: no drain, no clean stop of
            // Raft. Exiting lets a supervisor restart the node, which then
            // says at once if the cause (a full disk) is still there.
            error!(
                cause = %why,
                "raft stopped on a storage error: this node cannot serve; exiting so that it \
                 is restarted once the cause is fixed"
            );
            http.stop().await;
            std::process::exit(3);
        }
    };
    info!(
        asked_by = name,
        "draining: no new connections, clients told to go (MQTT 5: 0x8B), then stop"
    );
    // A second signal means the operator does not want to wait for a clean stop.
    tokio::spawn(async move {
        let name = signals.recv(|| info!("SIGHUP ignored: stopping")).await;
        warn!(signal = name, "stopping at once, without a clean shutdown");
        std::process::exit(1);
    });
    http.stop().await;
    sole_owner(broker).await.shutdown().await;
    info!("stopped");
    Ok(())
}

/// Checks that every listener other than HTTP (bound already) can be bound, by
/// binding it and letting it go, so that a taken port fails the start before
/// `data_dir` is created. The broker binds the cluster listener only as its
/// storage opens, and the MQTT, WebSocket and TLS listeners once Raft is ready;
/// binding them here for good would take a larger change of `Broker::start`. A
/// port taken between this check and then still fails the start, later. Port 0,
/// any free port, is not checked.
fn check_ports(config: &Config) -> anyhow::Result<()> {
    let listeners = config.listeners().map_err(anyhow::Error::msg)?;
    for (key, addr) in listeners {
        if key == "http.listen" || addr.port() == 0 {
            continue;
        }
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} ({key})"))?;
    }
    Ok(())
}

/// The file in the data directory that names the node it belongs to.
const NODE_ID_FILE: &str = "node_id";

/// Refuses a data directory written by another node id: its Raft log, vote
/// and incarnation are that node's, and taking them as another's would make
/// one member speak for two. A directory without the file (new, or from an
/// earlier version) is claimed for `node_id`.
fn check_node_id(data_dir: &std::path::Path, node_id: u64) -> anyhow::Result<()> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let owner: u64 = text
                .trim()
                .parse()
                .with_context(|| format!("{} does not hold a node id", path.display()))?;
            anyhow::ensure!(
                owner == node_id,
                "the data directory {} belongs to node {owner}, and this node was started as \
                 node {node_id} (node_id / --node-id): start it as node {owner}, or give node \
                 {node_id} a data directory of its own",
                data_dir.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{node_id}\n"))
                .with_context(|| format!("cannot write {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// `starling config --check`: what a start would read besides the validated
/// configuration, the log filter (`RUST_LOG` included) and the admin token file,
/// read without starting anything.
fn check_config(config: &Config) -> ExitCode {
    if let Err(e) = telemetry::check_filter(&config.log, std::env::var("RUST_LOG").ok()) {
        return fail(e);
    }
    if let Err(e) = config.http.admin_token() {
        return fail(format!(
            "cannot read http.token_file {}: {e}",
            config.http.token_file
        ));
    }
    println!("configuration OK");
    ExitCode::SUCCESS
}

/// The cluster settings the node starts with, and what it will do with them.
fn log_cluster(cluster: &ClusterConfig) {
    let advertise = match cluster.advertise.as_str() {
        "" => cluster.listen.to_string(),
        addr => addr.to_owned(),
    };
    let listen = cluster.listen;
    if !cluster.peers.is_empty() {
        let peers = cluster.peers.join(",");
        info!(%listen, %advertise, %peers, "cluster: forming with the listed peers");
        if cluster.peers.len() % 2 == 0 {
            warn!(
                voters = cluster.peers.len(),
                "an even number of voters tolerates no more failures than one fewer; \
                 list an odd number of peers"
            );
        }
    } else if !cluster.join.is_empty() {
        let join = &cluster.join;
        info!(%listen, %advertise, %join, "cluster: joining through a member");
    } else {
        info!(%listen, %advertise, "cluster: this node alone, until others join it");
    }
}

/// SIGHUP: the password file is read again, for the clients that connect from now on.
fn reload(broker: &Broker) {
    info!("SIGHUP: reading the password file again");
    if let Err(e) = broker.reload_auth() {
        error!(error = %e, "cannot reload the password file: the users loaded before stay");
    }
    // And the TLS certificates, if a TLS listener is on; the broker logs how it went.
    let _ = broker.reload_tls();
}

/// SIGINT and SIGTERM, the two ways to ask the process to stop, and SIGHUP, which asks
/// it to read its password file again.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal to stop and names it; each SIGHUP meanwhile calls
    /// `on_hangup`.
    async fn recv(&mut self, on_hangup: impl Fn()) -> &'static str {
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => return "SIGINT",
                _ = self.terminate.recv() => return "SIGTERM",
                _ = self.hangup.recv() => on_hangup(),
            }
        }
    }
}

/// The broker, once nothing else holds it. The HTTP handlers hold only a `Weak`; they
/// upgrade it for an `is_ready` call, or for as long as a `leave` is in flight, which
/// can outlast the HTTP server's stop. Polled, since nothing tells when the last
/// other `Arc` is dropped; a pause between tries, so that waiting on a leave does
/// not keep a core busy.
async fn sole_owner(mut broker: Arc<Broker>) -> Broker {
    loop {
        match Arc::try_unwrap(broker) {
            Ok(broker) => return broker,
            Err(shared) => {
                broker = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The error and its causes on one line. A cause that its error's message already
/// quotes is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

fn print_or_fail<E: std::fmt::Display>(text: Result<String, E>) -> ExitCode {
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Reports an error that comes before logging is set up.
fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("starling: {e}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_skips_causes_the_message_already_quotes() {
        let inner = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let e = anyhow::Error::new(inner).context("cannot listen on 1.2.3.4:5: address in use");
        let e = e.context("cannot start the broker");
        assert_eq!(
            describe(&e),
            "cannot start the broker: cannot listen on 1.2.3.4:5: address in use"
        );
        let e = anyhow::anyhow!("disk full").context("cannot flush");
        assert_eq!(describe(&e), "cannot flush: disk full");
    }
}
