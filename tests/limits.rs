//! Limits that keep the broker standing: sockets that never send CONNECT are
//! closed on time while real clients go on, and connections over
//! `max_connections` are refused at once and counted.

use std::time::Duration;

use rumqttc::QoS;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use starling_testkit::client::{self, Client};
use starling_testkit::{http_get, Broker};

/// `starling_connections_refused_total{reason}` as the broker reports it.
async fn refused(broker: &Broker, reason: &str) -> u64 {
    let (_, body) = http_get(broker.http_port, "/metrics")
        .await
        .expect("/metrics answers");
    let series = format!("starling_connections_refused_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[tokio::test]
async fn five_thousand_silent_sockets_are_closed_on_time_and_clients_go_on() {
    const SILENT: usize = 5_000;
    let mut broker = Broker::start_with("[mqtt]\nconnect_timeout = 2\n").await;
    let port = broker.port;
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(
            TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    let opened = tokio::time::Instant::now();

    // A real client is served meanwhile.
    let mut sub = Client::connect(client::options(port, "real-sub")).await;
    sub.subscribe_ok("live/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(client::options(port, "real-pub")).await;
    publisher
        .publish("live/t", QoS::AtLeastOnce, false, "still served")
        .await;
    assert_eq!(
        &sub.recv_publish(Duration::from_secs(5)).await.payload[..],
        b"still served"
    );

    // Every silent socket is closed by the broker, a little after 2 s.
    let deadline = opened + Duration::from_secs(10);
    let mut closed = 0;
    for mut socket in silent {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut byte = [0u8; 1];
        match tokio::time::timeout(left, socket.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => panic!("a socket that sent nothing was sent something"),
            Err(_) => break,
        }
    }
    assert_eq!(closed, SILENT, "every silent socket closed within 10 s");
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "not before connect_timeout"
    );
    // And the real clients are still connected.
    publisher
        .publish("live/t", QoS::AtLeastOnce, false, "after")
        .await;
    assert_eq!(
        &sub.recv_publish(Duration::from_secs(5)).await.payload[..],
        b"after"
    );
    broker.assert_alive().await;
}

#[tokio::test]
async fn connections_over_max_connections_are_refused_at_once_and_counted() {
    let broker = Broker::start_with("[mqtt]\nmax_connections = 2\n").await;
    let port = broker.port;
    let _a = Client::connect(client::options(port, "first")).await;
    let _b = Client::connect(client::options(port, "second")).await;
    let mut third = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed at once, not left waiting: {read:?}"
    );
    assert_eq!(refused(&broker, "max_connections").await, 1);
}

#[tokio::test]
async fn a_burst_from_one_address_is_held_to_its_rate() {
    let broker = Broker::start_with("[mqtt]\nmax_connection_rate_per_ip = 5\n").await;
    let port = broker.port;
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(
            TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    // Fifteen of twenty within the second are closed at once.
    let mut closed = 0;
    for socket in &mut sockets {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(500), socket.read(&mut byte)).await;
        if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            closed += 1;
        }
    }
    assert!(
        (14..=15).contains(&closed),
        "five a second from one address: {closed} of 20 closed"
    );
    assert!(refused(&broker, "rate_per_ip").await >= 14);
}
