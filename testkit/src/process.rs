//! One `starling` process as a test runs it: a temp dir holding its data, its
//! config file and its log, three loopback ports, and the child. Single-node
//! brokers ([`crate::Broker`]) and cluster nodes ([`crate::cluster::Node`]) are
//! both built on it, so they start, signal, reap and report alike.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, free_port_on};

/// The `starling` binary: `STARLING_BIN` if set, else the one cargo built
/// beside the running test (`target/<profile>/starling`).
pub fn starling_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("STARLING_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let mut dir = exe.parent().expect("the test's directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("starling{}", std::env::consts::EXE_SUFFIX))
}

pub struct Process {
    /// How logs and panics name it: "starling", "node 3".
    name: String,
    dir: TempDir,
    config: Option<PathBuf>,
    log: PathBuf,
    child: Option<Child>,
    /// MQTT over TCP.
    pub mqtt: u16,
    /// HTTP: `/healthz`, `/readyz`, `/metrics`, `/api/v1`.
    pub http: u16,
    /// Cluster gRPC: a single node still listens for peers.
    pub cluster: u16,
}

impl Process {
    /// A process not yet started, with its own temp dir (named after
    /// `prefix`), free ports (the cluster port free on `cluster_ip`), and
    /// `config_toml` written as its config file.
    pub fn new(name: &str, prefix: &str, cluster_ip: &str, config_toml: Option<&str>) -> Process {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir");
        let config = config_toml.map(|toml| {
            let path = dir.path().join("starling.toml");
            fs::write(&path, toml).expect("write config");
            path
        });
        Process {
            name: name.to_owned(),
            log: dir.path().join("starling.log"),
            config,
            child: None,
            mqtt: free_port(),
            http: free_port(),
            cluster: free_port_on(cluster_ip),
            dir,
        }
    }

    /// The data directory, kept across restarts.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts `starling` with its data dir, its MQTT and HTTP ports on
    /// 127.0.0.1, the cluster listener on `cluster_ip`, its config file, and
    /// `args`; output goes to its log.
    pub fn spawn(&mut self, cluster_ip: &str, args: &[String]) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        writeln!(log, "===== harness: starting {} =====", self.name).expect("write log");
        let stderr = log.try_clone().expect("clone log file");
        let mut cmd = Command::new(starling_bin());
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .arg("--mqtt-listen")
            .arg(format!("127.0.0.1:{}", self.mqtt))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http))
            .arg("--cluster-listen")
            .arg(format!("{cluster_ip}:{}", self.cluster))
            .args(args);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        self.child = Some(cmd.spawn().expect("spawn the starling binary"));
    }

    /// The process id; panics if it is not running.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
            .id()
    }

    /// Its exit status if it has exited (it stays reaped), else `None`.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let name = &self.name;
        let child = self
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("{name} is not running"));
        let status = child.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("{} exited: {status}", self.name);
        }
    }

    /// SIGKILL, and reaps it: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        // It may already have exited on its own (after leaving a cluster).
        let _ = child.kill();
        child.wait().expect("wait for starling");
    }

    /// Sends `signal` (as `kill` names it: TERM, STOP, CONT).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} {pid} ({}) failed: {status}",
            self.name
        );
    }

    /// SIGTERM, then waits without blocking the runtime until the process has
    /// exited; SIGKILL and a panic after `timeout`.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("{} still running {timeout:?} after SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the process has logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Prints the last `tail` bytes of the log: what explains a failure,
    /// without drowning it in a long run's output.
    pub fn print_log(&self, tail: usize) {
        match fs::read(&self.log) {
            Ok(bytes) => {
                let start = bytes.len().saturating_sub(tail);
                eprintln!(
                    "----- {} log ({} bytes, last {}) -----\n{}\n----- end of {} log -----",
                    self.name,
                    bytes.len(),
                    bytes.len() - start,
                    String::from_utf8_lossy(&bytes[start..]),
                    self.name
                );
            }
            Err(e) => eprintln!(
                "cannot read the log of {} at {}: {e}",
                self.name,
                self.log.display()
            ),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL ends a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            self.print_log(128 * 1024);
        }
    }
}
