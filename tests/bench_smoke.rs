//! Smoke test of `starling-bench` against a real broker: short QoS 1 `pairs` runs
//! (MQTT 3.1.1 and 5, over TCP and over WebSocket) must deliver every message once.

use std::process::Command;

use starling_testkit::{free_port, Broker};

#[tokio::test]
async fn bench_pairs_at_qos_1_delivers_everything_once_in_order() {
    let broker = Broker::start().await;
    pairs_at_qos_1(broker.port, &["--clean", "true"]);
}

/// Persistent sessions: every message goes through Raft and the replicated queues.
#[tokio::test]
async fn bench_pairs_at_qos_1_to_persistent_sessions_delivers_everything_once_in_order() {
    let broker = Broker::start().await;
    pairs_at_qos_1(broker.port, &["--clean", "false"]);
}

/// MQTT 5: CONNECT level 5, reason codes in CONNACK, SUBACK and the acks.
#[tokio::test]
async fn bench_pairs_at_qos_1_over_mqtt_5_delivers_everything_once_in_order() {
    let broker = Broker::start().await;
    let summary = pairs_at_qos_1(broker.port, &["--protocol", "5"]);
    assert_eq!(summary["params"]["protocol"], "5.0");
}

/// MQTT over WebSocket: one binary frame per packet out, packets reassembled
/// from whatever frames come in.
#[tokio::test]
async fn bench_pairs_at_qos_1_over_websocket_delivers_everything_once_in_order() {
    let ws_port = free_port();
    let config = format!("[websocket]\nenabled = true\nlisten = \"127.0.0.1:{ws_port}\"\n");
    let _broker = Broker::start_with(&config).await;
    let summary = pairs_at_qos_1(ws_port, &["--transport", "ws"]);
    assert_eq!(summary["params"]["transport"], "ws");
}

/// A two-second QoS 1 `pairs` run against `port`, with `args` added; asserts that
/// every message sent was acknowledged and received once, in order, and returns the
/// JSON summary.
fn pairs_at_qos_1(port: u16, args: &[&str]) -> serde_json::Value {
    // As fast as the publishers' windows allow: subscribers that fall behind must
    // slow the publishers down, never lose an acknowledged QoS 1 message, and a
    // publisher's many outstanding messages must stay in order.
    let output = Command::new(env!("CARGO_BIN_EXE_starling-bench"))
        .args(["pairs", "-n", "4", "--qos", "1", "--duration", "2"])
        .args(args)
        .args(["--json", "--expect-no-loss", "--host"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .expect("run starling-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || {
        format!(
            "args {args:?}\nstatus {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
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
    assert_eq!(field("errors"), 0, "{}", context());
    assert_eq!(summary["scenario"], "pairs");
    summary
}
