//! Smoke test of `starling-bench` against a real broker: a short QoS 1 `pairs` run
//! must deliver every message once.

use std::process::Command;

use starling_testkit::Broker;

#[tokio::test]
async fn bench_pairs_at_qos_1_delivers_everything_once_in_order() {
    pairs_at_qos_1(true).await;
}

/// Persistent sessions: every message goes through Raft and the replicated queues.
#[tokio::test]
async fn bench_pairs_at_qos_1_to_persistent_sessions_delivers_everything_once_in_order() {
    pairs_at_qos_1(false).await;
}

async fn pairs_at_qos_1(clean: bool) {
    let broker = Broker::start().await;
    // As fast as the publishers' windows allow: subscribers that fall behind must
    // slow the publishers down, never lose an acknowledged QoS 1 message, and a
    // publisher's many outstanding messages must stay in order.
    let output = Command::new(env!("CARGO_BIN_EXE_starling-bench"))
        .args(["pairs", "-n", "4", "--qos", "1", "--duration", "2"])
        .args(["--clean", if clean { "true" } else { "false" }])
        .args(["--json", "--expect-no-loss", "--host"])
        .arg(format!("127.0.0.1:{}", broker.port))
        .output()
        .expect("run starling-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || {
        format!(
            "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
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
    assert_eq!(summary["scenario"], "pairs");
}
