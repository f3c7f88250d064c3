//! Interoperability with an independent client implementation: Mosquitto's
//! command-line clients (Debian package `mosquitto-clients`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use starling_testkit::Broker;
use tokio::sync::mpsc;

const INSTALL_HINT: &str = "mosquitto_pub / mosquitto_sub not found on PATH: \
     install them (Debian: `apt-get install mosquitto-clients`) to run this test";

/// Starts a mosquitto CLI with stdout piped; fails the test if it is missing.
fn spawn(program: &str, args: &[&str]) -> Child {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
        Err(e) => panic!("cannot start {program}: {e}"),
    }
}

/// Kills the child if the test ends early.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Forwards the child's stdout lines; the thread ends at EOF.
fn lines(child: &mut Child) -> mpsc::UnboundedReceiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The child's exit status, or `None` if it still runs after `timeout`.
async fn try_wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn mosquitto_sub_receives_what_mosquitto_pub_sent() {
    let broker = Broker::start().await;
    let port = broker.port.to_string();
    let mut sub = Reaped(spawn(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "demo/#",
            "-C",
            "1",
            "-W",
            "10",
        ],
    ));
    let mut out = lines(&mut sub.0);

    // mosquitto_sub does not say when its subscription is in place (its stdout
    // is block-buffered in a pipe), so publish until it has received one
    // message and exited, as `-C 1` makes it do.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let mut publ = Reaped(spawn(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "demo/hello",
                "-m",
                "hi",
                "-q",
                "1",
            ],
        ));
        let published = try_wait_exit(&mut publ.0, Duration::from_secs(10))
            .await
            .expect("mosquitto_pub still running after 10 s");
        assert!(published.success(), "mosquitto_pub exited with {published}");
        if let Some(status) = try_wait_exit(&mut sub.0, Duration::from_millis(300)).await {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto_sub received nothing within 10 s"
        );
    };
    assert!(status.success(), "mosquitto_sub exited with {status}");
    let first = tokio::time::timeout(Duration::from_secs(5), out.recv()).await;
    assert_eq!(first, Ok(Some("hi".to_string())), "mosquitto_sub output");
}
