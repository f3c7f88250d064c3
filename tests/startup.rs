//! What an operator meets before the broker serves: `starling config --check`, a
//! taken port refused before anything is written, and a node waiting for its
//! cluster that answers `/healthz` and stops at once on SIGTERM.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use starling_testkit::process::{starling_bin, Process};
use starling_testkit::{free_port, http_status, SHUTDOWN_TIMEOUT};

/// How long a process that refuses to start may take to exit.
const REFUSAL: Duration = Duration::from_secs(10);

/// `starling --config FILE config --check` over `toml`, with no `STARLING_*`
/// variable or `RUST_LOG` of the test's environment in the way.
fn check(dir: &Path, toml: &str) -> Output {
    let file = dir.join("starling.toml");
    std::fs::write(&file, toml).unwrap();
    let mut command = Command::new(starling_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STARLING_") {
            command.env_remove(name);
        }
    }
    command
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(&file)
        .args(["config", "--check"])
        .output()
        .expect("run starling config --check")
}

#[test]
fn config_check_says_ok_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let toml = format!("data_dir = {:?}\n[mqtt]\nmax_inflight = 64\n", data);
    let output = check(dir.path(), &toml);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout.trim(), "configuration OK");
    assert!(!data.exists(), "config --check created the data dir");
}

#[test]
fn config_check_names_the_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let toml = format!("data_dir = {:?}\n[mqtt]\nmax_connections = 0\n", data);
    let output = check(dir.path(), &toml);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(stderr.contains("mqtt.max_connections"), "{stderr}");
    assert!(output.stdout.is_empty(), "{output:?}");
    assert!(!data.exists(), "config --check created the data dir");
}

/// Waits for `process` to exit, at most `timeout`, and returns how it exited.
async fn exit_within(process: &mut Process, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exited() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_taken_mqtt_port_fails_the_start_before_the_data_dir_exists() {
    let mut process = Process::new("starling", "starling-taken-", "127.0.0.1", None);
    let taken = TcpListener::bind(("127.0.0.1", process.mqtt)).unwrap();
    let addr = taken.local_addr().unwrap();
    process.spawn("127.0.0.1", &[]);
    let status = exit_within(&mut process, REFUSAL).await;
    assert!(!status.success(), "{status}");
    let log = process.log_text();
    assert!(
        log.contains(&format!("cannot listen on {addr}")) && log.contains("mqtt.listen"),
        "{log}"
    );
    assert!(
        !process.data_dir().exists(),
        "the data dir was created before every port was bound"
    );
}

#[tokio::test]
async fn a_node_waiting_for_its_cluster_is_alive_and_stops_on_sigterm() {
    let mut process = Process::new("node 2", "starling-waiting-", "127.0.0.1", None);
    // Node 1 never starts: node 2 waits for it to bootstrap the cluster.
    let peers = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{}",
        free_port(),
        process.cluster
    );
    let args = ["--node-id", "2", "--peers", &peers].map(String::from);
    process.spawn("127.0.0.1", &args);
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_status(process.http, "/healthz").await != Some(200) {
        process.assert_running();
        assert!(Instant::now() < deadline, "no /healthz 200 within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_status(process.http, "/readyz").await, Some(503));
    // HTTP serves before storage is open; the wait is logged once it is.
    while !process.log_text().contains("waiting for a leader") {
        assert!(
            Instant::now() < deadline,
            "the wait for a leader is not logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_status(process.http, "/readyz").await, Some(503));
    let asked = Instant::now();
    let status = process.terminate(SHUTDOWN_TIMEOUT).await;
    assert!(status.success(), "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_data_directory_of_another_node_id_is_refused() {
    let mut process = Process::new("starling", "starling-id-", "127.0.0.1", None);
    process.spawn("127.0.0.1", &[]);
    let ready = Instant::now() + Duration::from_secs(30);
    while starling_testkit::http_status(process.http, "/readyz").await != Some(200) {
        assert!(Instant::now() < ready, "node 1 not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.signal("TERM");
    let status = exit_within(&mut process, Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");

    process.spawn("127.0.0.1", &["--node-id".to_owned(), "2".to_owned()]);
    let status = exit_within(&mut process, REFUSAL).await;
    assert!(!status.success(), "{status}");
    let log = process.log_text();
    assert!(
        log.contains("belongs to node 1, and this node was started as node 2"),
        "{log}"
    );
}
