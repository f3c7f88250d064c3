//! Smoke test of `starling-bench` against a real broker: a short QoS 1 `pairs` run
//! must deliver every message once.
//!
//! Self-contained on purpose: it starts its own `starling` process (own temp dir,
//! OS-chosen ports, killed on drop) and speaks just enough HTTP to wait for
//! `/readyz`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A `starling` process that is killed when dropped.
struct Broker {
    child: Child,
    mqtt: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mqtt = free_addr();
        let http = free_addr();
        let log = dir.path().join("starling.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--mqtt-listen")
            .arg(mqtt.to_string())
            .arg("--http-listen")
            .arg(http.to_string())
            .arg("--cluster-listen")
            .arg(free_addr().to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start starling");
        let broker = Broker {
            child,
            mqtt,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_status(http, "/readyz") != Some(200) {
            assert!(
                Instant::now() < deadline,
                "broker not ready within 60 s; log:\n{}",
                broker.log_text()
            );
            sleep(Duration::from_millis(50));
        }
        broker
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address with a port the OS just handed out (and we released).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// The status code of `GET path`, or `None` if the server does not answer yet.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    // "HTTP/1.1 200 OK"
    response.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn bench_pairs_at_qos_1_delivers_everything_once_in_order() {
    pairs_at_qos_1(true);
}

/// Persistent sessions: every message goes through Raft and the replicated queues.
#[test]
fn bench_pairs_at_qos_1_to_persistent_sessions_delivers_everything_once_in_order() {
    pairs_at_qos_1(false);
}

fn pairs_at_qos_1(clean: bool) {
    let broker = Broker::start();
    // As fast as the publishers' windows allow: subscribers that fall behind must
    // slow the publishers down, never lose an acknowledged QoS 1 message, and a
    // publisher's many outstanding messages must stay in order.
    let output = Command::new(env!("CARGO_BIN_EXE_starling-bench"))
        .args(["pairs", "-n", "4", "--qos", "1", "--duration", "2"])
        .args(["--clean", if clean { "true" } else { "false" }])
        .args(["--json", "--expect-no-loss", "--host"])
        .arg(broker.mqtt.to_string())
        .output()
        .expect("run starling-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || {
        format!(
            "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
            output.status,
            broker.log_text()
        )
    };
    assert!(output.status.success(), "bench failed: {}", context());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "--json prints one line: {}", context());
    let summary: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON summary");
    let field = |name: &str| {
        summary[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} missing: {}", context()))
    };
    let (sent, received) = (field("sent"), field("received"));
    assert!(sent > 0, "nothing sent: {}", context());
    assert_eq!(received, sent, "received != sent: {}", context());
    assert_eq!(field("acked"), sent, "{}", context());
    assert_eq!(field("lost"), 0, "{}", context());
    assert_eq!(field("dup"), 0, "{}", context());
    assert_eq!(field("reordered"), 0, "{}", context());
    assert_eq!(summary["scenario"], "pairs");
}
