//! The `$SYS/broker/...` topics: published every `mqtt.sys_interval`
//! seconds with the figures they name, read by independent clients (rumqttc,
//! and Mosquitto's `mosquitto_sub`), never sent to a `#` subscriber
//! [MQTT-4.7.2-1], and not writable by clients.

use std::time::Duration;

use rumqttc::QoS;
use tokio::time::Instant;

use starling_testkit::client::{self, Client};
use starling_testkit::Broker;

/// Long enough for several publications at `sys_interval = 1`.
const WAIT: Duration = Duration::from_secs(10);

/// Reads `client`'s messages until one on `topic` whose payload `wanted`
/// accepts, and returns that payload; panics after `WAIT`.
async fn wait_for(client: &mut Client, topic: &str, wanted: impl Fn(&str) -> bool) -> String {
    client.wait_for_text(topic, WAIT, wanted).await
}

/// A payload that is a count, as a number.
fn count(payload: &str) -> u64 {
    payload
        .parse()
        .unwrap_or_else(|e| panic!("{payload:?} is not a count: {e}"))
}

#[tokio::test]
async fn sys_topics_report_the_broker_and_stay_out_of_wildcard_subscriptions() {
    let mut broker = Broker::start_with("[mqtt]\nsys_interval = 1\n").await;
    let port = broker.port;
    let mut everything = Client::connect(client::options(port, "sys-everything")).await;
    everything.subscribe_ok("#", QoS::AtMostOnce).await;
    let mut sys = Client::connect(client::options(port, "sys-reader")).await;
    sys.subscribe_ok("$SYS/#", QoS::AtMostOnce).await;

    let version = wait_for(&mut sys, "$SYS/broker/version", |_| true).await;
    assert!(version.starts_with("starling version "), "{version}");
    wait_for(&mut sys, "$SYS/broker/clients/connected", |n| n == "2").await;
    let uptime = wait_for(&mut sys, "$SYS/broker/uptime", |_| true).await;
    assert!(uptime.ends_with(" seconds"), "{uptime}");
    wait_for(&mut sys, "$SYS/broker/cluster/members", |m| m == "1").await;
    wait_for(&mut sys, "$SYS/broker/cluster/leader", |l| l == "1").await;
    let received = count(&wait_for(&mut sys, "$SYS/broker/messages/received", |_| true).await);

    // Three messages published by a third client move messages/received
    // and the bytes; it is counted as connected.
    let mut publisher = Client::connect(client::options(port, "sys-publisher")).await;
    for n in 0..3 {
        publisher
            .publish("plain/t", QoS::AtLeastOnce, false, format!("m{n}"))
            .await;
    }
    wait_for(&mut sys, "$SYS/broker/messages/received", |n| {
        count(n) >= received + 3
    })
    .await;
    wait_for(&mut sys, "$SYS/broker/clients/connected", |n| n == "3").await;
    let bytes = wait_for(&mut sys, "$SYS/broker/bytes/received", |_| true).await;
    assert!(count(&bytes) > 0, "bytes/received: {bytes}");
    wait_for(&mut sys, "$SYS/broker/subscriptions/count", |n| n == "2").await;

    // A client cannot publish into the tree: acknowledged (3.1.1) and
    // dropped, while the broker's own figures go on.
    publisher
        .publish("$SYS/broker/version", QoS::AtLeastOnce, false, "forged")
        .await;
    let deadline = Instant::now() + Duration::from_millis(2_500);
    while let Some(publish) = sys
        .try_recv_publish(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        assert_ne!(&publish.payload[..], b"forged", "{publish:?}");
    }

    // The `#` subscriber got the three messages and nothing from `$SYS`,
    // over several publications of the tree.
    let mut seen = Vec::new();
    while let Some(publish) = everything
        .try_recv_publish(Duration::from_millis(500))
        .await
    {
        seen.push(publish.topic);
    }
    assert_eq!(seen, ["plain/t", "plain/t", "plain/t"], "[MQTT-4.7.2-1]");
    broker.assert_alive().await;
}

#[tokio::test]
async fn mosquitto_sub_reads_the_tree_as_from_mosquitto() {
    let broker = Broker::start_with("[mqtt]\nsys_interval = 1\n").await;
    let port = broker.port.to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "$SYS/broker/version",
        "-t",
        "$SYS/broker/uptime",
        "-t",
        "$SYS/broker/clients/connected",
        "-C",
        "3",
        "-W",
        "10",
        "-v",
    ]
    .map(str::to_owned);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("mosquitto_sub")
            .args(&args)
            .output()
    })
    .await
    .expect("the blocking task ends")
    .expect("mosquitto_sub runs (Debian: apt-get install mosquitto-clients)");
    assert!(output.status.success(), "mosquitto_sub: {output:?}");
    let text = String::from_utf8(output.stdout).expect("text");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines.len(), 3, "{text}");
    // mosquitto_sub itself is the one client connected.
    assert_eq!(lines[0], "$SYS/broker/clients/connected 1", "{text}");
    let uptime = lines[1]
        .strip_prefix("$SYS/broker/uptime ")
        .and_then(|rest| rest.strip_suffix(" seconds"))
        .unwrap_or_else(|| panic!("{text}"));
    count(uptime);
    assert!(
        lines[2].starts_with("$SYS/broker/version starling version "),
        "{text}"
    );
}
