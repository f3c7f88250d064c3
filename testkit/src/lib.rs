//! What Starling's black-box tests stand on: real `starling` processes and the
//! means to talk to them and hurt them.
//!
//! Every test gets its own broker ([`Broker`]) or cluster ([`cluster::Cluster`])
//! with its own temp dirs, configs, OS-chosen ports and log files, all started
//! by one launcher ([`process::Process`]); the logs are printed when the test
//! fails. `client` wraps rumqttc for well-behaved traffic, `raw` speaks
//! hand-encoded bytes over a socket for everything a library would refuse to
//! send, and `subscribers` and `traffic` are the clients of the cluster tests.
//! `workload` holds clients that record a `history` of what they did and saw,
//! `nemesis` inflicts seeded faults meanwhile, and `check` judges the history.
//! `attack` floods a broker with bad input while a probe client measures it.
//!
//! A library of its own, so that each test binary links what it uses and
//! nothing here is dead code in any of them.

pub mod attack;
pub mod check;
pub mod client;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod process;
pub mod raw;
pub mod script;
pub mod subscribers;
pub mod tmpfs;
pub mod traffic;
pub mod workload;

pub use process::Process;

use std::collections::HashSet;
use std::fs;
use std::net::TcpListener as StdTcpListener;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a broker may take to report ready on `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a broker may take to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports handed out by this test binary. The OS may give back a port we just
/// released to the next `bind(0)`, so a port is never handed out twice.
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free loopback port, distinct from every port handed out before in this
/// process.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port free on loopback address `ip` right now, distinct from every port
/// handed out before in this process. A node's cluster port is chosen on the
/// node's own address: one free on 127.0.0.1 may be held on 127.0.0.12.
pub fn free_port_on(ip: &str) -> u16 {
    loop {
        let listener = StdTcpListener::bind((ip, 0)).expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        drop(listener);
        let mut guard = PORTS.lock().expect("ports lock");
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// One single-node `starling` process.
pub struct Broker {
    process: Process,
    /// MQTT over TCP.
    pub port: u16,
    /// HTTP: `/healthz`, `/readyz`.
    pub http_port: u16,
}

impl Broker {
    /// A broker with no config file: the defaults must give a working node.
    pub async fn start() -> Broker {
        Broker::launch(None).await
    }

    /// A broker started with `--config FILE` holding `config_toml`.
    pub async fn start_with(config_toml: &str) -> Broker {
        Broker::launch(Some(config_toml)).await
    }

    async fn launch(config_toml: Option<&str>) -> Broker {
        let process = Process::new("starling", "starling-test-", "127.0.0.1", config_toml);
        let mut broker = Broker {
            port: process.mqtt,
            http_port: process.http,
            process,
        };
        broker.spawn_and_wait_ready().await;
        broker
    }

    /// The data directory, kept across restarts.
    pub fn data_dir(&self) -> PathBuf {
        self.process.data_dir()
    }

    async fn spawn_and_wait_ready(&mut self) {
        self.process.spawn("127.0.0.1", &[]);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.process.exited() {
                panic!("starling exited before it was ready: {status}");
            }
            if http_status(self.http_port, "/readyz").await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "starling not ready on /readyz within {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id of the running broker.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends `signal` (as `kill` names it: HUP, TERM).
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// What the broker has logged so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM, then waits for the process to exit and returns its status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.process.terminate(SHUTDOWN_TIMEOUT).await
    }

    /// Starts the broker again with the same data dir, ports and config.
    pub async fn restart(&mut self) {
        self.spawn_and_wait_ready().await;
    }

    /// Panics unless the process is still running and answers `/healthz`.
    pub async fn assert_alive(&mut self) {
        self.process.assert_running();
        assert_eq!(
            http_status(self.http_port, "/healthz").await,
            Some(200),
            "/healthz"
        );
    }
}

/// The status code of `GET path`, or `None` when nothing answers. A hand-written
/// HTTP/1.0 request keeps HTTP client crates out of the tests.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(status, _)| status)
}

/// The status code and body of `GET path`, or `None` when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
        let status_line = head.lines().next()?;
        let mut parts = status_line.split_whitespace();
        let version = parts.next()?;
        if !version.starts_with("HTTP/") {
            return None;
        }
        Some((parts.next()?.parse().ok()?, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// The resident memory of process `pid`, in KiB (`VmRSS` of /proc).
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .expect("VmRSS in /proc status")
}
