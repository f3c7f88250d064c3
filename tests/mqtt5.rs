//! MQTT 5 against a real broker, through a client that shares no code with it:
//! tests/mqtt5.py, which speaks paho-mqtt 2 (Python, MQTT 5) where a client
//! library does and hand-written MQTT 5 bytes over raw sockets where the exact
//! packets matter. Each test starts a broker configured for its scenario and
//! runs the script's scenario of the same name against it; the script prints
//! what it saw and exits non-zero naming the check that failed.

use starling_testkit::{http_get, script, Broker};

/// Runs `scenario` against `broker`.
async fn run(scenario: &'static str, broker: &Broker) {
    script::run(scenario, &[broker.port]).await;
}

/// Shared subscriptions are switched off where a scenario checks how the
/// broker says it has none.
const NO_SHARED_SUBSCRIPTIONS: &str = "[mqtt]\nshared_subscriptions = false\n";

#[tokio::test]
async fn connack_properties() {
    let broker = Broker::start_with(NO_SHARED_SUBSCRIPTIONS).await;
    run("connack_properties", &broker).await;
}

#[tokio::test]
async fn connack_limits() {
    let config = "[mqtt]\nreceive_maximum = 5\nmax_qos = 1\nretain_available = false\n";
    let broker = Broker::start_with(config).await;
    run("connack_limits", &broker).await;
}

#[tokio::test]
async fn assigned_client_id() {
    let broker = Broker::start().await;
    run("assigned_client_id", &broker).await;
}

#[tokio::test]
async fn server_keep_alive() {
    let broker = Broker::start_with("[mqtt]\nmax_keepalive = 20\n").await;
    run("server_keep_alive", &broker).await;
}

#[tokio::test]
async fn user_properties_and_request_response() {
    let broker = Broker::start().await;
    run("user_properties_and_request_response", &broker).await;
}

#[tokio::test]
async fn message_expiry() {
    let broker = Broker::start().await;
    run("message_expiry", &broker).await;
}

#[tokio::test]
async fn no_local_and_retain_as_published() {
    let broker = Broker::start().await;
    run("no_local_and_retain_as_published", &broker).await;
}

#[tokio::test]
async fn retain_handling() {
    let broker = Broker::start().await;
    run("retain_handling", &broker).await;
}

#[tokio::test]
async fn subscription_identifiers() {
    let broker = Broker::start().await;
    run("subscription_identifiers", &broker).await;
}

#[tokio::test]
async fn topic_alias_inbound() {
    let broker = Broker::start().await;
    run("topic_alias_inbound", &broker).await;
}

#[tokio::test]
async fn topic_alias_outbound() {
    let broker = Broker::start().await;
    run("topic_alias_outbound", &broker).await;
}

#[tokio::test]
async fn reason_codes() {
    let broker = Broker::start_with(NO_SHARED_SUBSCRIPTIONS).await;
    run("reason_codes", &broker).await;
}

#[tokio::test]
async fn session_expiry() {
    let broker = Broker::start().await;
    run("session_expiry", &broker).await;
}

#[tokio::test]
async fn will_delay() {
    let broker = Broker::start().await;
    run("will_delay", &broker).await;
}

#[tokio::test]
async fn receive_maximum_exceeded() {
    let broker = Broker::start_with("[mqtt]\nreceive_maximum = 2\n").await;
    run("receive_maximum_exceeded", &broker).await;
}

#[tokio::test]
async fn takeover_reason() {
    let broker = Broker::start().await;
    run("takeover_reason", &broker).await;
}

#[tokio::test]
async fn interop_v311_v5() {
    let broker = Broker::start().await;
    run("interop_v311_v5", &broker).await;
}

#[tokio::test]
async fn scram_auth() {
    let broker = Broker::start_with("[mqtt]\nscram_users = [\"alice:wonderland\"]\n").await;
    run("scram_auth", &broker).await;
}

#[tokio::test]
async fn persistent_session_expiry_v311() {
    let broker = Broker::start_with("[mqtt]\npersistent_session_expiry = 2\n").await;
    run("persistent_session_expiry_v311", &broker).await;
}

#[tokio::test]
async fn retained_limits() {
    let config = "[mqtt]\nmax_retained_messages = 2\nmax_retained_bytes = 40\n";
    let broker = Broker::start_with(config).await;
    run("retained_limits", &broker).await;
    let (_, metrics) = http_get(broker.http_port, "/metrics")
        .await
        .expect("/metrics answers");
    let series = "starling_messages_dropped_total{reason=\"retained_full\"} 4";
    assert!(
        metrics.lines().any(|line| line == series),
        "each refused retained message counted: {metrics}"
    );
}

#[tokio::test]
async fn admin_kick() {
    let broker = Broker::start().await;
    script::run("admin_kick", &[broker.port, broker.http_port]).await;
}

#[tokio::test]
async fn metrics_move() {
    let broker = Broker::start().await;
    script::run("metrics_move", &[broker.port, broker.http_port]).await;
}

#[tokio::test]
async fn drain_v5() {
    let mut broker = Broker::start().await;
    script::run("drain_v5", &[broker.port, broker.http_port]).await;
    let status = broker.terminate().await;
    assert!(
        status.success(),
        "the drained node exited cleanly: {status}"
    );
}
