//! Black-box test harness: starts real `starling` processes and talks to them.
//!
//! Every test gets its own broker with its own temp dir, config, OS-chosen ports
//! and log file; the log is printed when the test fails. `client` wraps rumqttc
//! for well-behaved traffic, `raw` speaks hand-encoded bytes over a socket for
//! everything a library would refuse to send.
//!
//! Each test binary uses a different part of this module, hence the
//! `#[allow(dead_code)]` on its `mod harness;` line.

pub mod client;
pub mod raw;

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener as StdTcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;
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
    loop {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        drop(listener);
        let mut guard = PORTS.lock().expect("ports lock");
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// One `starling` process with its data dir, ports and log file.
pub struct Broker {
    child: Option<Child>,
    dir: TempDir,
    config: Option<PathBuf>,
    log: PathBuf,
    /// MQTT over TCP.
    pub port: u16,
    /// HTTP: `/healthz`, `/readyz`.
    pub http_port: u16,
    /// The cluster gRPC port: a single node still listens for peers.
    pub cluster_port: u16,
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
        let dir = tempfile::Builder::new()
            .prefix("starling-test-")
            .tempdir()
            .expect("temp dir");
        let config = config_toml.map(|toml| {
            let path = dir.path().join("starling.toml");
            fs::write(&path, toml).expect("write config");
            path
        });
        let log = dir.path().join("starling.log");
        let mut broker = Broker {
            child: None,
            config,
            log,
            port: free_port(),
            http_port: free_port(),
            cluster_port: free_port(),
            dir,
        };
        broker.spawn_and_wait_ready().await;
        broker
    }

    /// The data directory, kept across restarts.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        writeln!(log, "===== harness: starting starling =====").expect("write log");
        let stderr = log.try_clone().expect("clone log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_starling"));
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .arg("--mqtt-listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--cluster-listen")
            .arg(format!("127.0.0.1:{}", self.cluster_port));
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        self.child = Some(cmd.spawn().expect("spawn the starling binary"));
    }

    async fn spawn_and_wait_ready(&mut self) {
        self.spawn();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
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

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("broker is not running")
    }

    /// The process id of the running broker.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker is not running").id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("broker is not running");
        child.kill().expect("SIGKILL starling");
        child.wait().expect("wait for starling");
    }

    /// SIGTERM, then waits for the process to exit and returns its status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed: {status}");
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "starling still running {SHUTDOWN_TIMEOUT:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the broker again with the same data dir, ports and config.
    pub async fn restart(&mut self) {
        self.spawn_and_wait_ready().await;
    }

    /// Panics unless the process is still running and answers `/healthz`.
    pub async fn assert_alive(&mut self) {
        if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
            panic!("starling exited: {status}");
        }
        assert_eq!(
            http_status(self.http_port, "/healthz").await,
            Some(200),
            "/healthz"
        );
    }

    fn print_log(&self) {
        match fs::read(&self.log) {
            Ok(bytes) => {
                // The tail is what explains a failure; a long run must not drown it.
                const TAIL: usize = 256 * 1024;
                let start = bytes.len().saturating_sub(TAIL);
                eprintln!(
                    "----- starling log ({} bytes, last {}) -----\n{}\n----- end of starling log -----",
                    bytes.len(),
                    bytes.len() - start,
                    String::from_utf8_lossy(&bytes[start..])
                );
            }
            Err(e) => eprintln!("cannot read starling log {}: {e}", self.log.display()),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            self.print_log();
        }
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
