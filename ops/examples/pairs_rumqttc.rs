//! An independent load tool: publisher/subscriber pairs driven by rumqttc, an
//! MQTT client that shares no code with Starling, so that throughput and loss
//! are not measured by Starling's own codec alone.
//!
//! Each pair is a subscriber on `--sub` and a publisher on `--pub` (the same
//! node, or two nodes of a cluster) with a topic of its own. Every payload
//! starts with the pair's sequence number, so the subscriber counts what was
//! lost, duplicated or reordered. After `--warmup` seconds, messages received
//! during `--duration` seconds give the rate; then publishing stops and the
//! subscribers drain for up to `--drain` seconds.
//!
//! ```text
//! cargo run --release -p starling --example pairs_rumqttc -- \
//!     --pub 127.0.0.1:1883 --sub 127.0.0.1:1884 --pairs 50 --qos 0 --size 64
//! ```
//!
//! Prints one JSON object. Every run is bounded by its durations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Parser, Debug)]
struct Args {
    /// host:port the publishers connect to.
    #[arg(long = "pub")]
    publish_to: String,
    /// host:port the subscribers connect to.
    #[arg(long = "sub")]
    subscribe_to: String,
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// 0 or 1.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes (at least 8: the sequence number).
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 5)]
    drain: u64,
    /// Messages per second per publisher; 0: as fast as it goes.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Prefix of client ids and topics.
    #[arg(long, default_value = "ind")]
    prefix: String,
}

/// What one pair's subscriber saw.
#[derive(Default)]
struct Seen {
    received: AtomicU64,
    in_window: AtomicU64,
    /// The highest sequence number received, plus one.
    next: AtomicU64,
    gaps: AtomicU64,
    duplicates_or_reordered: AtomicU64,
}

fn options(id: String, host_port: &str) -> MqttOptions {
    let (host, port) = host_port.rsplit_once(':').expect("host:port expected");
    let port: u16 = port.parse().expect("a port number");
    let mut options = MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_request_channel_capacity(1024);
    options.set_inflight(100);
    options
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    assert!(args.size >= 8, "--size must be at least 8");
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => panic!("--qos takes 0 or 1"),
    };
    let start = Instant::now();
    let window_start = Duration::from_secs(args.warmup);
    let window_end = window_start + Duration::from_secs(args.duration);

    // Subscribers first, each subscribed before any publisher starts.
    let mut seen = Vec::new();
    let mut tasks = Vec::new();
    for pair in 0..args.pairs {
        let topic = format!("{}/{pair}", args.prefix);
        let id = format!("{}-sub-{pair}", args.prefix);
        let (client, mut events) = AsyncClient::new(options(id, &args.subscribe_to), 64);
        client.subscribe(&topic, qos).await.expect("subscribe");
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("subscriber {pair}: {e}"),
            }
        }
        let pair_seen = Arc::new(Seen::default());
        seen.push(pair_seen.clone());
        // Polled until aborted at the end, never under a timeout: a poll
        // cancelled in the middle of a write leaves half a packet on the wire.
        tasks.push(tokio::spawn(async move {
            let _client = client;
            loop {
                let event = match events.poll().await {
                    Ok(event) => event,
                    Err(e) => {
                        eprintln!("subscriber {pair}: {e}");
                        return;
                    }
                };
                let Event::Incoming(Packet::Publish(publish)) = event else {
                    continue;
                };
                let Some(seq) = publish.payload.get(..8) else {
                    continue;
                };
                let seq = u64::from_be_bytes(seq.try_into().unwrap_or_default());
                let s = &pair_seen;
                s.received.fetch_add(1, Ordering::Relaxed);
                let elapsed = start.elapsed();
                if elapsed >= window_start && elapsed < window_end {
                    s.in_window.fetch_add(1, Ordering::Relaxed);
                }
                let next = s.next.load(Ordering::Relaxed);
                if seq >= next {
                    s.gaps.fetch_add(seq - next, Ordering::Relaxed);
                    s.next.store(seq + 1, Ordering::Relaxed);
                } else {
                    s.duplicates_or_reordered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for pair in 0..args.pairs {
        let topic = format!("{}/{pair}", args.prefix);
        let id = format!("{}-pub-{pair}", args.prefix);
        let (client, mut events) = AsyncClient::new(options(id, &args.publish_to), 1024);
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("publisher {pair}: {e}");
                        return;
                    }
                }
            }
        }));
        let sent = sent.clone();
        let (size, rate) = (args.size, args.rate);
        publishers.push(tokio::spawn(async move {
            let mut payload = vec![0u8; size];
            let mut seq = 0u64;
            let pace = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
            while start.elapsed() < window_end {
                payload[..8].copy_from_slice(&seq.to_be_bytes());
                if client
                    .publish(topic.as_str(), qos, false, payload.clone())
                    .await
                    .is_err()
                {
                    break;
                }
                seq += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                if let Some(pace) = pace {
                    let due = start + pace.mul_f64(seq as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for publisher in publishers {
        clients.push(publisher.await.expect("publisher task"));
    }

    // Drain: wait until every subscriber has what was sent, or the drain ends.
    let total_sent = sent.load(Ordering::Relaxed);
    let drain_end = Instant::now() + Duration::from_secs(args.drain);
    let received = || -> u64 {
        seen.iter()
            .map(|s| s.received.load(Ordering::Relaxed))
            .sum()
    };
    while received() < total_sent && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(clients);
    for task in tasks {
        task.abort();
        let _ = task.await;
    }

    let sum = |f: fn(&Seen) -> &AtomicU64| -> u64 {
        seen.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
    };
    let total_received = sum(|s| &s.received);
    let in_window = sum(|s| &s.in_window);
    // What the subscribers never saw: gaps in the sequence, and the tail after
    // the last message each one got.
    let tail: u64 = total_sent.saturating_sub(sum(|s| &s.next));
    println!(
        "{{\"pairs\":{},\"qos\":{},\"size\":{},\"duration_s\":{},\"sent\":{},\"acked\":{},\
         \"received\":{},\"received_per_s\":{:.0},\"lost\":{},\"duplicates_or_reordered\":{}}}",
        args.pairs,
        args.qos,
        args.size,
        args.duration,
        total_sent,
        acked.load(Ordering::Relaxed),
        total_received,
        in_window as f64 / args.duration as f64,
        sum(|s| &s.gaps) + tail,
        sum(|s| &s.duplicates_or_reordered),
    );
}
